"""Predict a labelled list or the user's own images with a model rebuilt from its checkpoint."""
import argparse
import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_model
from .cli import Coco4Error, resolve_sources
from .data.lists import read_classes, read_list
from .data.loaders import BatchPlan, DataOptions
from .data.prepare import make_batches, open_images, unusable_report
from .data.transforms import pil_eval_transform
from .distributed import DistEnv, pick_device
from .fileio import atomic_write_text, check_writable
from .loop import Amp, predict_logits
from .metrics import MetricAccumulator


@dataclass
class Predictor:
    """A checkpoint's model, in eval mode on its device, with what predicting needs."""

    model: torch.nn.Module
    classes: list
    image_size: int
    device: torch.device
    amp: Amp
    checkpoint: str
    temperature: float = 1.0  # the logits are divided by it before the softmax
    tta: str = "none"  # "flip": the probabilities of the image and its mirror, averaged
    checkpoint_temperature: float = 1.0  # the checkpoint's, applied or not

    def view_models(self) -> list[torch.nn.Module]:
        """The model once per test-time view of an image: itself, and for ``flip`` itself on
        the mirror image (training's random flips make the mirror an equally likely photo)."""
        return [self.model] + ([Mirrored(self.model)] if self.tta == "flip" else [])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for a batch of images already on the device, every view averaged."""
        with self.amp.autocast():
            views = [m(x).float() for m in self.view_models()]
        return averaged_log_probs(views, self.temperature).exp().cpu()


class Mirrored(torch.nn.Module):
    """A model applied to the left-right mirror of its input (NCHW: the last axis is width)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.flip(-1))


def averaged_log_probs(views: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """log softmax(log(mean over views of softmax(logits)) / T). The probabilities are averaged,
    not the logits: a view that is unsure should not be outvoted by the other's large logits.
    T is applied once, to the average, so that as with one view (where this is
    softmax(logits / T)) it changes no prediction: each view softened first would let T decide
    which class wins where the views disagree. As logits these give the probabilities back, so
    every metric reads them unchanged."""
    log_probs = torch.stack([v.float().log_softmax(1) for v in views])
    averaged = log_probs.logsumexp(0) - math.log(len(views))
    return (averaged / temperature).log_softmax(1)


def load_predictor(checkpoint: str | Path, device: str = "auto", amp: bool = True,
                   calibrated: bool = True) -> Predictor:
    """The model, classes, image size and temperature stored in ``checkpoint`` (any layout),
    ready to use; ``calibrated=False`` leaves the temperature out (raw probabilities)."""
    device = pick_device(device, DistEnv())
    loaded = load_model(checkpoint, device)
    loaded.model.eval()
    if device.type == "cuda":
        loaded.model.to(memory_format=torch.channels_last)  # as the model lays out its input
    return Predictor(loaded.model, loaded.classes, loaded.image_size, device,
                     Amp.for_device(device, amp), loaded.source,
                     loaded.temperature if calibrated else 1.0,
                     checkpoint_temperature=loaded.temperature)


@dataclass
class Predictions:
    list_path: Path
    image_dir: Path  # where ``files`` are
    files: list
    labels: list
    probs: torch.Tensor  # [N, classes], softmax of the logits divided by the temperature
    metrics: MetricAccumulator  # the same sums that validation during training keeps
    left_out: dict
    raw_metrics: MetricAccumulator  # the same, before the temperature

    @property
    def preds(self) -> list:
        return self.probs.argmax(1).tolist()

    def losses(self) -> torch.Tensor:
        """Each image's loss, -log p(true class): what "most wrong" is ranked by in the pictures
        (clamped, so a probability that underflowed to 0 ranks first instead of giving inf)."""
        labels = torch.tensor(self.labels, dtype=torch.long)
        return -self.probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log()


def predict_list(predictor: Predictor, list_path: str | Path, image_dir: str | Path,
                 batch_size: int = 256, options: DataOptions | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> Predictions:
    """Probabilities for every usable image of a list (unusable ones reported and left out).
    ``options.cache_dir`` defaults to a ``cache`` folder beside the list."""
    list_path = Path(list_path)
    options = options or DataOptions()
    if options.cache_dir is None:
        options = dataclasses.replace(options, cache_dir=list_path.parent / "cache")
    check_classes(predictor, list_path)
    image_list = read_list(list_path, len(predictor.classes))
    source = open_images(image_list, image_dir, predictor.image_size, options, progress)
    report = unusable_report(source, options.strict, log)
    keep = source.usable()
    batches = make_batches(source, keep, BatchPlan(batch_size, predictor.device,
                                                   predictor.image_size, train=False))
    views, labels = _view_logits(predictor, batches, progress)
    calibrated = averaged_log_probs(views, predictor.temperature)
    metrics, raw = (MetricAccumulator(len(predictor.classes)) for _ in range(2))
    metrics.update(calibrated, labels)
    raw.update(averaged_log_probs(views, 1.0), labels)
    return Predictions(list_path, Path(image_dir), [image_list.files[i] for i in keep],
                       [image_list.labels[i] for i in keep], calibrated.exp(), metrics,
                       report["left_out"], raw)


def _view_logits(predictor: Predictor, batches, progress: bool) -> tuple[list, torch.Tensor]:
    """Every view's logits over ``batches`` (one pass per view), and the labels."""
    views = []
    for i, model in enumerate(predictor.view_models()):
        desc = ("predicting" if i == 0 else "predicting mirrored") if progress else None
        try:
            logits, labels = predict_logits(model, batches, predictor.amp,
                                            len(predictor.classes), desc)
        except torch.cuda.OutOfMemoryError:
            logits = None  # the advice once the failed batch's tensors are released
        if logits is None:
            raise out_of_memory(batches.plan.batch_size, predictor.image_size)
        views.append(logits)
    return views, labels


def out_of_memory(batch_size: int, image_size: int, written: str = "") -> Coco4Error:
    """The advice for a CUDA out-of-memory error while predicting: half the batch.
    ``written`` says what was written before it (predict.py's rows so far)."""
    return Coco4Error(f"CUDA out of memory predicting batches of {batch_size} images at "
                      f"{image_size}px; rerun with --batch-size {max(1, batch_size // 2)}"
                      f"{written}")


def predict_from_args(args: argparse.Namespace) -> tuple[Predictor, Predictions]:
    """What evaluate.py and visualize.py start with: the checkpoint's predictions for the list
    their shared arguments (``cli.add_source_args``) name, arguments checked first."""
    list_path, images, cache_dir = resolve_sources(args)
    if args.cache_dir:  # asked for by name: an error, not the fallback a default folder gets
        check_writable(args.cache_dir)
    predictor = predictor_from_args(args)
    return predictor, predict_list(predictor, list_path, images, args.batch_size, DataOptions(
        args.data_path, cache_dir, args.workers, args.strict))


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    """The predictor evaluate.py, visualize.py and predict.py ask for on their command line."""
    predictor = load_predictor(args.checkpoint, args.device, args.amp, args.calibration)
    predictor.tta = args.tta
    return predictor


def check_classes(predictor: Predictor, list_path: Path) -> None:
    """The list's classes (its classes.txt, or the original four) must be the checkpoint's."""
    list_classes = list(read_classes(list_path.parent))
    if list_classes != predictor.classes:
        raise Coco4Error(f"{predictor.checkpoint} predicts {len(predictor.classes)} classes "
                         f"{predictor.classes}, but {list_path} is labelled for "
                         f"{len(list_classes)} classes {list_classes}; use the checkpoint "
                         "trained on these lists, or lists made with its --classes")


@torch.no_grad()
def predict_images(predictor: Predictor, images: Sequence[Image.Image]) -> torch.Tensor:
    """Probabilities for the user's own images (decoded by ``read_rgb``, which is where an
    unreadable file is reported), through the original PIL eval transform."""
    transform = pil_eval_transform(predictor.image_size)
    x = torch.stack([transform(im) for im in images]).to(predictor.device)
    return predictor.predict(x)


def write_results(out_dir: str | Path, predictor: Predictor, predictions: Predictions) -> dict:
    """metrics.json and predictions.csv (atomically); returns the metrics dict."""
    out_dir = Path(out_dir)
    metrics = predictions.metrics.summary(predictor.classes)
    raw = predictions.raw_metrics.summary(predictor.classes)
    metrics.update(checkpoint=predictor.checkpoint, left_out=predictions.left_out,
                   tta=predictor.tta, temperature=predictor.temperature,
                   checkpoint_temperature=predictor.checkpoint_temperature,
                   ece_uncalibrated=raw["ece"], nll_uncalibrated=raw["nll"],
                   reliability_uncalibrated=raw["reliability"])
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "true_label", "predicted_label"]
                    + [f"prob_{c}" for c in predictor.classes])
    for f, y, p, probs in zip(predictions.files, predictions.labels, predictions.preds,
                              predictions.probs.tolist()):
        writer.writerow([f, predictor.classes[y], predictor.classes[p]]
                        + [f"{q:.6f}" for q in probs])
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())
    return metrics
