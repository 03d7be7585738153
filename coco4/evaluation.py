"""Predict a labelled list or the user's own images with a model rebuilt from its checkpoint."""
import argparse
import csv
import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_model
from .cli import Coco4Error, resolve_sources
from .data.images import UnreadableImage, read_rgb
from .data.lists import read_classes, read_list
from .data.loaders import BatchPlan, DataOptions
from .data.prepare import make_batches, open_images, unusable_report
from .data.transforms import pil_eval_transform
from .distributed import DistEnv, pick_device
from .fileio import atomic_write_text
from .loop import Amp, evaluate
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

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.float() / self.temperature).softmax(1)


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
                     loaded.temperature if calibrated else 1.0)


@dataclass
class Predictions:
    list_path: Path
    image_dir: Path  # where ``files`` are
    files: list
    labels: list
    probs: torch.Tensor  # [N, classes], softmax of the logits divided by the temperature
    metrics: MetricAccumulator  # the same sums that validation during training keeps
    left_out: dict
    raw_metrics: MetricAccumulator | None = None  # before the temperature, where there is one

    @property
    def preds(self) -> list:
        return self.probs.argmax(1).tolist()


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
    plan = BatchPlan(batch_size, predictor.device, predictor.image_size, train=False)
    try:
        raw, logits, labels = evaluate(predictor.model, make_batches(source, keep, plan),
                                       predictor.amp, len(predictor.classes),
                                       desc="predicting" if progress else None)
    except torch.cuda.OutOfMemoryError:
        raw = None  # the advice once the failed batch's tensors are released
    if raw is None:
        raise out_of_memory(batch_size, predictor.image_size)
    metrics = MetricAccumulator(len(predictor.classes))  # the same sums, on the scaled logits
    metrics.update(logits / predictor.temperature, labels)
    return Predictions(list_path, Path(image_dir), [image_list.files[i] for i in keep],
                       [image_list.labels[i] for i in keep], predictor.probabilities(logits),
                       metrics, report["left_out"], raw)


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
    predictor = load_predictor(args.checkpoint, args.device, args.amp, args.calibration)
    return predictor, predict_list(predictor, list_path, images, args.batch_size, DataOptions(
        args.data_path, cache_dir, args.workers, args.strict))


def check_classes(predictor: Predictor, list_path: Path) -> None:
    """The list's classes (its classes.txt, or the original four) must be the checkpoint's."""
    list_classes = list(read_classes(list_path.parent))
    if list_classes != predictor.classes:
        raise Coco4Error(f"{predictor.checkpoint} predicts {len(predictor.classes)} classes "
                         f"{predictor.classes}, but {list_path} is labelled for "
                         f"{len(list_classes)} classes {list_classes}; use the checkpoint "
                         "trained on these lists, or lists made with its --classes")


@torch.no_grad()
def predict_images(predictor: Predictor, paths: Sequence[str | Path]) -> torch.Tensor:
    """Probabilities for the user's own image files, through the original PIL eval transform."""
    transform = pil_eval_transform(predictor.image_size)
    try:
        x = torch.stack([transform(read_rgb(p)) for p in paths]).to(predictor.device)
    except FileNotFoundError as e:
        raise Coco4Error(f"image {e.filename} not found") from None
    except UnreadableImage as e:
        raise Coco4Error(f"cannot read image {e}") from None
    with predictor.amp.autocast():
        return predictor.probabilities(predictor.model(x)).cpu()


def write_results(out_dir: str | Path, predictor: Predictor, predictions: Predictions) -> dict:
    """metrics.json and predictions.csv (atomically); returns the metrics dict."""
    out_dir = Path(out_dir)
    metrics = predictions.metrics.summary(predictor.classes)
    raw = predictions.raw_metrics.summary(predictor.classes)
    metrics.update(checkpoint=predictor.checkpoint, left_out=predictions.left_out,
                   temperature=predictor.temperature, ece_uncalibrated=raw["ece"],
                   nll_uncalibrated=raw["nll"], reliability_uncalibrated=raw["reliability"])
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
