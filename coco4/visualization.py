"""The pictures visualize.py writes: samples, predictions with probabilities, errors, curves."""
from pathlib import Path

import numpy as np
import torch

from .data import read_rgb
from .plots import image_grid_figure, prediction_figure, save, training_curves_figure
from .run_log import read_metrics_csv


def _thumb(path, size=160):
    image = read_rgb(path)
    image.thumbnail((size, size))
    return image


def samples_png(predictions, image_dir, classes, out, num, seed=0):
    """A grid of list images with their labels: what the model is asked to learn."""
    n = len(predictions.files)
    pick = np.random.default_rng(seed).choice(n, min(num, n), replace=False)
    images = [_thumb(Path(image_dir) / predictions.files[i]) for i in pick]
    titles = [f"{classes[predictions.labels[i]]}\n{predictions.files[i]}" for i in pick]
    return save(image_grid_figure(images, titles, suptitle=f"samples from {image_dir}"), out)


def predictions_png(paths, probs, classes, out, true_labels=None):
    """Images beside their class probabilities; with known labels, wrong ones titled in red."""
    preds = probs.argmax(1).tolist()
    titles = [f"{Path(p).name}\npredicted: {classes[k]}" for p, k in zip(paths, preds)]
    colors = None
    if true_labels is not None:
        titles = [f"{t} (true: {classes[y]})" for t, y in zip(titles, true_labels)]
        colors = ["tab:green" if k == y else "tab:red" for k, y in zip(preds, true_labels)]
    images = [_thumb(p, 224) for p in paths]
    return save(prediction_figure(images, probs.tolist(), classes, titles, colors), out)


def errors_png(predictions, image_dir, classes, out, num):
    """The misclassified images with the highest loss, titled true / predicted / probability."""
    labels = torch.tensor(predictions.labels)
    probs = predictions.probs
    wrong = (probs.argmax(1) != labels).nonzero().flatten()
    loss = -probs[wrong, labels[wrong]].clamp_min(1e-12).log()
    worst = wrong[loss.argsort(descending=True)][:num].tolist()
    if not worst:
        fig = image_grid_figure([], [], suptitle="no misclassified images")
        fig.text(0.5, 0.5, f"all {len(labels)} images classified correctly", ha="center")
        return save(fig, out)
    images = [_thumb(Path(image_dir) / predictions.files[i]) for i in worst]
    titles = [f"true {classes[labels[i]]}\npred {classes[probs[i].argmax()]} "
              f"({probs[i].max():.0%})" for i in worst]
    return save(image_grid_figure(images, titles, colors=["tab:red"] * len(worst),
                                  suptitle=f"{len(wrong)} of {len(labels)} misclassified; "
                                  f"highest loss first"), out)


def curves_png(metrics_csv, out):
    return save(training_curves_figure(read_metrics_csv(metrics_csv)), out)
