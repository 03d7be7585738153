"""Every figure the tools write, as PNG files: built on matplotlib's Figure, no GUI needed."""
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .fileio import atomic_path


def save(fig, path):
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def confusion_matrix_figure(cm, classes, title="Confusion matrix"):
    cm = np.asarray(cm)
    fig = Figure(figsize=(1.3 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax = fig.add_subplot()
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def image_grid_figure(images, titles, cols=6, colors=None, suptitle=None):
    """A grid of RGB images (PIL or HxWx3 arrays) with one title each."""
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows))
    for k, (image, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(image)
        ax.set_title(title, fontsize=8, color=(colors[k] if colors else "black"))
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def prediction_figure(images, probs, classes, titles, colors=None):
    """Each image beside a bar chart of its class probabilities (the original's prediction view)."""
    fig = Figure(figsize=(8, 2.4 * len(images)))
    for k, (image, p, title) in enumerate(zip(images, probs, titles)):
        ax = fig.add_subplot(len(images), 2, 2 * k + 1)
        ax.imshow(image)
        ax.set_title(title, fontsize=9, color=colors[k] if colors else "black")
        ax.axis("off")
        bars = fig.add_subplot(len(images), 2, 2 * k + 2)
        p = np.asarray(p)
        bars.barh(range(len(classes)), p, color=["tab:green" if i == p.argmax() else "tab:gray"
                                                 for i in range(len(classes))])
        bars.set_yticks(range(len(classes)), classes)
        bars.set_xlim(0, 1)
        bars.invert_yaxis()
        for i, v in enumerate(p):
            bars.text(min(v + 0.02, 0.85), i, f"{v:.1%}", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def training_curves_figure(rows):
    """Loss, accuracy and learning rate per epoch from metrics.csv rows."""
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(13, 3.6))
    panels = (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc")),
              ("learning rate", ("lr",)))
    for k, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        for key in keys:
            ax.plot(epochs, [r[key] for r in rows], marker=".", label=key.replace("_", " "))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if keys == ("lr",):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
