"""Every figure the tools write, as PNG files: built on matplotlib's Figure, no GUI needed.

The figures (confusion matrix, image grids, predictions beside their probabilities, training
curves), then the pictures visualize.py writes from them.
"""
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from .data.images import read_rgb
from .fileio import atomic_path
from .open_set import KNOWN_REJECTED
from .run_log import read_metrics_csv

if TYPE_CHECKING:  # the model code is heavier than pictures need at run time
    from .predictor import Predictions


def save(fig: Figure, path: str | Path) -> Path:
    for text in fig.findobj(Text):  # a file or class name with a $ is not TeX to typeset
        text.set_parse_math(False)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def confusion_matrix_figure(cm: np.ndarray | list[list[int]], classes: Sequence[str],
                            title: str = "Confusion matrix") -> Figure:
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


def reliability_figure(metrics: dict) -> Figure:
    """Confidence against accuracy per confidence bin, before and after the temperature
    (``evaluate.py``'s metrics.json): a calibrated model's points lie on the diagonal."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    for key, ece, name, marker in (("reliability_uncalibrated", "ece_uncalibrated", "raw", "s"),
                                   ("reliability", "ece", f"T = {metrics['temperature']:.3g}",
                                    "o")):
        bins = metrics[key]
        points = [(c, a, k) for c, a, k in zip(bins["confidence"], bins["accuracy"],
                                               bins["count"]) if k]
        if points:
            conf, acc, count = zip(*points)
            line, = ax.plot(conf, acc, "-", lw=1, alpha=0.6)
            # a bin of 2 images says little: the marker's area shows how many it holds
            ax.scatter(conf, acc, s=[12 + 300 * k / max(count) for k in count], marker=marker,
                       color=line.get_color(), alpha=0.8,
                       label=f"{name}: ECE {metrics[ece]:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (top probability, mean per bin)",
           ylabel="accuracy in the bin",
           title=f"Reliability, {metrics['num_images']} images (marker area: images per bin)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def image_grid_figure(images: Sequence[Image.Image | np.ndarray], titles: Sequence[str],
                      cols: int = 6, colors: Sequence[str] | None = None,
                      suptitle: str | None = None) -> Figure:
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


def prediction_figure(images: Sequence[Image.Image | np.ndarray],
                      probs: Sequence[Sequence[float]], classes: Sequence[str],
                      titles: Sequence[str], colors: Sequence[str] | None = None) -> Figure:
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


def training_curves_figure(rows: Sequence[dict]) -> Figure:
    """Loss, accuracy and the other validation scores, calibration error and learning rate per
    epoch, from metrics.csv rows (a column that a run's version did not write is left out)."""
    epochs = [r["epoch"] for r in rows]
    panels = (("loss", ("train_loss", "val_loss")),
              ("accuracy and scores", ("train_acc", "val_acc", "val_balanced_acc",
                                       "val_macro_f1", "val_min_class_acc")),
              ("expected calibration error", ("val_ece",)), ("learning rate", ("lr",)))
    fig = Figure(figsize=(4.2 * len(panels), 3.6))
    for k, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for key in keys:
            values = [np.nan if r.get(key) is None else r[key] for r in rows]
            if not np.isnan(values).all():
                ax.plot(epochs, values, marker=".", label=key.replace("_", " "))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if keys == ("lr",):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def open_set_figure(curves: dict, figures: dict) -> Figure:
    """Per list of negatives: the unknown images rejected against the known ones wrongly
    rejected, at every threshold of each score, with --min-prob's operating point."""
    fig = Figure(figsize=(5.5 * len(curves), 4.6), layout="constrained")
    for ax, (name, by_score) in zip(np.atleast_1d(fig.subplots(1, len(curves))), curves.items()):
        found = figures[name]
        for score, (known, unknown) in by_score.items():
            auc = found["scores"][score]["auroc"]
            ax.step(known, unknown, where="post",
                    label=score if auc is None else f"{score} (AUROC {auc:.3f})")
        point = found["operating_point"]
        if point["known_rejected"] is not None:
            ax.plot(point["known_rejected"], point["unknown_rejected"], "ko",
                    label=f"--min-prob {point['min_prob']:g}")
        for x in KNOWN_REJECTED:
            ax.axvline(x, color="grey", lw=0.6, ls=":")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"known test images wrongly rejected (of {found['num_known']})")
        ax.set_ylabel(f"images of none of the classes rejected (of {found['num_unknown']})")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    return fig


def _thumb(path, size=160):
    image = read_rgb(path)
    image.thumbnail((size, size))
    return image


def samples_png(predictions: "Predictions", classes: Sequence[str], out: str | Path, num: int,
                seed: int = 0) -> Path:
    """A grid of list images with their labels: what the model is asked to learn."""
    n = len(predictions.files)
    pick = np.random.default_rng(seed).choice(n, min(num, n), replace=False)
    images = [_thumb(predictions.image_dir / predictions.files[i]) for i in pick]
    titles = [f"{classes[predictions.labels[i]]}\n{predictions.files[i]}" for i in pick]
    return save(image_grid_figure(images, titles,
                                  suptitle=f"samples from {predictions.image_dir}"), out)


def predictions_png(paths: Sequence[str | Path], probs: torch.Tensor, classes: Sequence[str],
                    out: str | Path, true_labels: Sequence[int] | None = None) -> Path:
    """Images beside their class probabilities; with known labels, wrong ones titled in red."""
    preds = probs.argmax(1).tolist()
    titles = [f"{Path(p).name}\npredicted: {classes[k]}" for p, k in zip(paths, preds)]
    colors = None
    if true_labels is not None:
        titles = [f"{t} (true: {classes[y]})" for t, y in zip(titles, true_labels)]
        colors = ["tab:green" if k == y else "tab:red" for k, y in zip(preds, true_labels)]
    images = [_thumb(p, 224) for p in paths]
    return save(prediction_figure(images, probs.tolist(), classes, titles, colors), out)


def worst_errors(predictions: "Predictions", num: int) -> tuple[list[int], int]:
    """Up to ``num`` misclassified images, the highest loss (the surest mistake) first, and
    how many images were misclassified in all."""
    wrong = (predictions.probs.argmax(1) != torch.tensor(predictions.labels)).nonzero().flatten()
    loss = predictions.losses()[wrong]
    return wrong[loss.argsort(descending=True, stable=True)][:num].tolist(), len(wrong)


def errors_png(predictions: "Predictions", classes: Sequence[str], out: str | Path,
               num: int) -> Path:
    """The misclassified images with the highest loss, titled true / predicted / probability."""
    labels, probs = predictions.labels, predictions.probs
    worst, n_wrong = worst_errors(predictions, num)
    if not worst:
        fig = image_grid_figure([], [], suptitle="no misclassified images")
        fig.text(0.5, 0.5, f"all {len(labels)} images classified correctly", ha="center")
        return save(fig, out)
    images = [_thumb(predictions.image_dir / predictions.files[i]) for i in worst]
    titles = [f"true {classes[labels[i]]}\npred {classes[probs[i].argmax()]} "
              f"({probs[i].max():.0%})" for i in worst]
    return save(image_grid_figure(images, titles, colors=["tab:red"] * len(worst),
                                  suptitle=f"{n_wrong} of {len(labels)} misclassified; "
                                  f"highest loss first"), out)


def curves_png(metrics_csv: str | Path, out: str | Path) -> Path:
    return save(training_curves_figure(read_metrics_csv(metrics_csv)), out)


def data_report_figure(report: dict) -> Figure:
    """annotation_prepare.py's audit (report.json): per split, each class's images kept and
    dropped, the dropped split by why; per class, the categories in its dropped train images."""
    splits, other = report["splits"], report.get("other")
    classes = list(next(iter(splits.values()))["classes"])
    rows = 1 + -(-len(classes) // 2) + (other is not None)
    fig = Figure(figsize=(11, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    if other is not None:  # the last row: what the other class holds
        _other_panels(axes[-1], other)
        axes = axes[:-1]
    for ax, (split, entry) in zip(axes[0], splits.items()):
        per = [entry["classes"][c] for c in classes]
        y = np.arange(len(classes))
        left = np.zeros(len(classes))
        # the dropped part by cause: with another target class (dropped by either rule), the
        # rest (other objects; under --rule dominant, those whose class covered too little)
        parts = [("kept", [p["kept"] for p in per], "tab:green"),
                 ("dropped: another target class", [p["with_other_targets"] for p in per],
                  "tab:red"),
                 ("dropped: other objects", [p["dropped"] - p["with_other_targets"] for p in per],
                  "tab:orange")]
        for label, values, color in parts:
            ax.barh(y, values, left=left, color=color, label=label)
            left += values
        for i, p in enumerate(per):
            ax.text(left[i], i, f" {p['kept']} kept / {p['dropped']} dropped", va="center",
                    fontsize=8)
        ax.set_yticks(y, classes)
        ax.invert_yaxis()
        ax.set_xlim(0, max(left.max(), 1) * 1.6)
        ax.set_xlabel("images holding the class")
        ax.set_title(f"{split}: {entry['kept']} of {entry['images']} images kept")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    split_name = "train" if "train" in splits else next(iter(splits))
    train = splits[split_name]
    for ax, name in zip(axes[1:].flat, classes):
        top = train["classes"][name]["top_disqualifiers"]
        ax.barh(list(top), list(top.values()), color="tab:orange")
        ax.invert_yaxis()
        ax.set_title(f"{name}: categories in its dropped {split_name} images", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=8)
    for ax in axes[1:].flat[len(classes):]:
        ax.set_visible(False)
    min_area = report["min_area_fraction"]
    fig.suptitle(f"--rule {report['rule']}"
                 + (f" --min-area-fraction {min_area}" if min_area is not None else ""))
    return fig


def _other_panels(axes, other: dict) -> None:
    """Per split, the ``other`` sample by kind (supercategory) against what was there."""
    held = ", ".join(other["held_out"]) or "none"
    for ax, split in zip(axes, ("train", "val")):
        entry = other[split]
        kinds = sorted(entry["available"])
        y = np.arange(len(kinds))
        ax.barh(y, [entry["available"][k] for k in kinds], color="lightgrey",
                label="images of the kind (none of the classes)")
        ax.barh(y, [entry["kinds"].get(k, 0) for k in kinds], color="tab:purple",
                label="in the other class")
        ax.set_yticks(y, kinds)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"other, {split}: {entry['images']} images by kind; held out: {held}",
                     fontsize=9, wrap=True)


def data_report_png(report: dict, out: str | Path) -> Path:
    return save(data_report_figure(report), out)
