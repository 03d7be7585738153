"""evaluate.py's work: a checkpoint's predictions for a labelled list (the val2017 test list by
default), their metrics, and the files and pictures written of them. visualize.py starts from
the same predictions."""
import csv
import dataclasses
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .cli import check_fraction
from .config import DATA_PATHS
from .data.lists import read_classes, read_list
from .data.loaders import BatchPlan, DataOptions
from .data.prepare import make_batches, open_images, unusable_report
from .errors import Coco4Error, GateFailed
from .fileio import atomic_write_text, check_writable
from .loop import predict_logits
from .metrics import MetricAccumulator, classes_below, confusion_text, report_text
from .options import option
from .out_of_memory import prediction_advice
from .plots import confusion_matrix_figure, reliability_figure, save
from .predictor import (
    Predictions,
    Predictor,
    PredictorOptions,
    averaged_log_probs,
    predictor_for,
)


@dataclass(frozen=True)
class ListOptions(PredictorOptions):
    """A labelled list and its images: what evaluate.py and visualize.py predict."""

    data_dir: Path = option(Path("data"), "lists from annotation_prepare.py")
    coco_root: Path = option(Path("coco"), "COCO folder")
    list: Path | None = option(None, "image list (default: DATA_DIR/annotation_val.txt)")
    images: Path | None = option(None, "its image folder (default: COCO_ROOT/images/val2017)")
    data_path: str = option("fast", "fast: decoded-image cache; pil: decode every image each "
                                    "time", choices=DATA_PATHS)
    cache_dir: Path | None = option(None, "decoded-image cache (default: DATA_DIR/cache)")

    @property
    def list_path(self) -> Path:
        return self.list or self.data_dir / "annotation_val.txt"

    @property
    def image_dir(self) -> Path:
        return self.images or self.coco_root / "images" / "val2017"

    @property
    def data_options(self) -> DataOptions:
        return DataOptions(self.data_path, self.cache_dir or self.data_dir / "cache",
                           self.workers, self.strict)

    def out(self, name: str, out_dir: Path | None) -> Path:
        """The output folder: ``out_dir``, or NAME beside the checkpoint."""
        return out_dir or Path(self.checkpoint).parent / name


@dataclass(frozen=True)
class EvaluateOptions(ListOptions):
    out_dir: Path | None = option(None, "where the results go (default: CHECKPOINT_DIR/eval)")
    min_class_acc: float | None = option(None, "exit with status 1 when any class's accuracy "
                                               "is below this (0..1)")


def evaluate_checkpoint(opts: EvaluateOptions) -> dict:
    """Predict the list, write metrics.json, predictions.csv, confusion_matrix.png and
    reliability_diagram.png, print the report; with ``min_class_acc``, fail the gate where a
    class is below it (the results are written first). Returns the metrics."""
    check_fraction("--min-class-acc", opts.min_class_acc)
    out_dir = opts.out("eval", opts.out_dir)
    check_writable(out_dir)  # before the predictions, not after them
    predictor, predictions = predict_list_for(opts)
    metrics = write_results(out_dir, predictor, predictions)
    save(confusion_matrix_figure(metrics["confusion_matrix"], predictor.classes,
                                 f"{Path(opts.checkpoint).name} on {predictions.list_path.name}"),
         out_dir / "confusion_matrix.png")
    save(reliability_figure(metrics), out_dir / "reliability_diagram.png")
    print(report(metrics, predictor.classes) + f"; written to {out_dir}")
    gate = opts.min_class_acc
    below = classes_below(metrics, gate) if gate is not None else {}
    if below:  # a class with no images is not known to pass: it fails the gate
        raise GateFailed(f"below --min-class-acc {gate:.2%}: " + ", ".join(
            f"{c} {'no test images' if a is None else f'{a:.2%}'}" for c, a in below.items()))
    return metrics


def report(metrics: dict, classes: list) -> str:
    """What evaluate.py prints: the confusion matrix, scikit-learn's report, each class's
    accuracy, the calibration, and the accuracy."""
    per_class = [f"{c:>12s}: {'n/a' if acc is None else f'{acc:.2%}'}"
                 for c, acc in metrics["per_class_accuracy"].items()]
    return "\n".join([
        confusion_text(metrics["confusion_matrix"], classes),
        report_text(metrics["confusion_matrix"], classes), *per_class,
        f"calibration: temperature {metrics['temperature']:.3g}, ECE "
        f"{metrics['ece_uncalibrated']:.4f} raw, {metrics['ece']:.4f} calibrated; NLL "
        f"{metrics['nll_uncalibrated']:.4f} raw, {metrics['nll']:.4f} calibrated",
        f"accuracy {metrics['accuracy']:.2%} on {metrics['num_images']} images"])


def predict_list_for(opts: ListOptions) -> tuple[Predictor, Predictions]:
    """What evaluate.py and visualize.py start with: the checkpoint's predictions for the list
    their options name, the options checked first."""
    opts.check()
    if opts.cache_dir:  # asked for by name: an error, not the fallback a default folder gets
        check_writable(opts.cache_dir)
    predictor = predictor_for(opts)
    return predictor, predict_list(predictor, opts.list_path, opts.image_dir, opts.batch_size,
                                   opts.data_options)


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
            raise prediction_advice(batches.plan.batch_size, predictor.image_size)
        views.append(logits)
    return views, labels


def check_classes(predictor: Predictor, list_path: Path) -> None:
    """The list's classes (its classes.txt, or the original four) must be the checkpoint's."""
    list_classes = list(read_classes(list_path.parent))
    if list_classes != predictor.classes:
        raise Coco4Error(f"{predictor.checkpoint} predicts {len(predictor.classes)} classes "
                         f"{predictor.classes}, but {list_path} is labelled for "
                         f"{len(list_classes)} classes {list_classes}; use the checkpoint "
                         "trained on these lists, or lists made with its --classes")


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
