"""evaluate.py's work: a checkpoint's predictions for a labelled list (the val2017 test list by
default), their metrics, and the files and pictures written of them. visualize.py starts from
the same predictions."""
import csv
import dataclasses
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cli import check_fraction
from .config import DATA_PATHS
from .data.audit import file_sha256
from .data.lists import ImageList, read_classes, read_list, read_names
from .data.loaders import BatchPlan, DataOptions
from .data.other_class import OTHER
from .data.prepare import make_batches, open_images, unusable_report
from .errors import Coco4Error, GateFailed
from .fileio import (
    atomic_write_text,
    check_outputs_are_not_inputs,
    check_writable,
    same_file,
    spreadsheet_safe,
)
from .inference import predict_logits
from .metrics import MetricAccumulator, classes_below, confusion_text, report_text
from .open_set import open_set_figures, scores, tradeoff
from .options import option
from .out_of_memory import prediction_advice
from .plots import confusion_matrix_figure, open_set_figure, reliability_figure, save
from .predictor import (
    Predictions,
    Predictor,
    PredictorOptions,
    averaged_log_probs,
    predictor_for,
)
from .run_folder import run_lock


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


EVALUATION_FILES = ("metrics.json", "predictions.csv", "confusion_matrix.png",
                    "reliability_diagram.png", "open_set.png")


@dataclass(frozen=True)
class EvaluateOptions(ListOptions):
    out_dir: Path | None = option(None, "where the results go (default: CHECKPOINT_DIR/eval, "
                                        "or eval-STEM for a checkpoint not named best.pt)")
    min_class_acc: float | None = option(None, "exit with status 1 when any class's accuracy "
                                               "is below this (0..1)")
    negatives: tuple[Path, ...] | None = option(
        None, "lists of images of none of the classes (a file name a line, in the --images "
              "folder; annotation_prepare.py --other writes two): report how well the model "
              "rejects them (open-set figures, open_set.png)")
    overwrite: bool = option(False, "replace another checkpoint's results in --out-dir")
    min_prob: float = option(0.0, "with --negatives: the operating point, as predict.py's: an "
                                  "image is rejected below this top probability (or when its "
                                  "top class is other)")


def evaluate_checkpoint(opts: EvaluateOptions) -> dict:
    """Predict the list, write metrics.json, predictions.csv, confusion_matrix.png and
    reliability_diagram.png, print the report; with ``min_class_acc``, fail the gate where a
    class is below it (the results are written first). Returns the metrics."""
    check_fraction("--min-class-acc", opts.min_class_acc)
    check_fraction("--min-prob", opts.min_prob)
    if opts.min_prob and not opts.negatives:
        raise Coco4Error("--min-prob is the operating point of the open-set figures: it needs "
                         "--negatives (predict.py --min-prob applies it to your images)")
    # each checkpoint its own folder: best.pt's eval/, last.pt's eval-last/
    stem = Path(opts.checkpoint).stem
    out_dir = opts.out("eval" if stem == "best" else f"eval-{stem}", opts.out_dir)
    check_writable(out_dir)  # before the predictions, not after them
    negatives = negative_lists(opts) if opts.negatives else None  # a typo found now
    check_outputs_are_not_inputs(
        [("--out-dir's", out_dir / name) for name in EVALUATION_FILES],
        [("--checkpoint", opts.checkpoint), ("--list", opts.list_path),
         *(("--negatives", p) for p in opts.negatives or ())])
    # locked: a second evaluation into the folder waits for none of this one's files
    with run_lock(out_dir, user=("evaluation", "--out-dir")):
        check_earlier_results(out_dir, opts)
        predictor, predictions = predict_list_for(opts)
        metrics = write_all(out_dir, opts, negatives, predictor, predictions)
    print(report(metrics, predictor.classes) + f"; written to {out_dir}")
    gate = opts.min_class_acc
    below = classes_below(metrics, gate) if gate is not None else {}
    if below:  # a class with no images is not known to pass: it fails the gate
        raise GateFailed(f"below --min-class-acc {gate:.2%}: " + ", ".join(
            f"{c} {'no test images' if a is None else f'{a:.2%}'}" for c, a in below.items()))
    return metrics


def write_all(out_dir: Path, opts: "EvaluateOptions", negatives: dict | None,
              predictor: Predictor, predictions: Predictions) -> dict:
    """Every file of an evaluation, the open-set figures included; returns the metrics."""
    open_set = open_set_report(opts, negatives, predictor, predictions) if negatives else None
    if open_set and not open_set["figures"]:  # every list was empty
        open_set = None
    metrics = write_results(out_dir, predictor, predictions, open_set)
    if not open_set:  # an earlier evaluation's, of other negatives: not these results'
        (out_dir / "open_set.png").unlink(missing_ok=True)
    save(confusion_matrix_figure(metrics["confusion_matrix"], predictor.classes,
                                 f"{Path(opts.checkpoint).name} on {predictions.list_path.name}"),
         out_dir / "confusion_matrix.png")
    save(reliability_figure(metrics), out_dir / "reliability_diagram.png")
    if open_set:
        save(open_set_figure(open_set["curves"], open_set["figures"]), out_dir / "open_set.png")
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
    return predict_images_of(predictor, image_list, Path(image_dir),
                             BatchRequest(batch_size, options, progress, log))


@dataclass(frozen=True)
class BatchRequest:
    """How a list's images are read and batched, and what the user is told meanwhile."""

    batch_size: int
    options: DataOptions
    progress: bool = True
    log: Callable[[str], None] = print


def predict_images_of(predictor: Predictor, image_list: ImageList, image_dir: Path,
                      request: BatchRequest) -> Predictions:
    """``predict_list``'s work on a list already read (the labels of an unlabelled one are 0,
    and its metrics mean nothing)."""
    source = open_images(image_list, image_dir, predictor.image_size, request.options,
                         request.progress)
    report = unusable_report(source, request.options.strict, request.log)
    keep = source.usable()
    batches = make_batches(source, keep, BatchPlan(request.batch_size, predictor.device,
                                                   predictor.image_size, train=False))
    views, labels = _view_logits(predictor, batches, request.progress)
    calibrated = averaged_log_probs(views, predictor.temperature)
    metrics, raw = (MetricAccumulator(len(predictor.classes)) for _ in range(2))
    metrics.update(calibrated, labels)
    raw.update(averaged_log_probs(views, 1.0), labels)
    return Predictions(image_list.path, image_dir, [image_list.files[i] for i in keep],
                       [image_list.labels[i] for i in keep], calibrated.exp(), metrics,
                       report["left_out"], raw)


def check_earlier_results(out_dir: Path, opts: "EvaluateOptions") -> None:
    """Results of another checkpoint in ``out_dir`` are replaced only with --overwrite; those
    of this one (a re-evaluation) always."""
    earlier = out_dir / "metrics.json"
    if opts.overwrite:
        return
    if not earlier.is_file():  # predict.py's predictions.csv, a picture of the user's
        found = [name for name in EVALUATION_FILES if (out_dir / name).exists()]
        if found:
            raise Coco4Error(f"{out_dir} holds {', '.join(found)}, not an evaluation's results "
                             "(no metrics.json); choose another --out-dir, or pass --overwrite "
                             "to replace them")
        return
    try:
        stored = json.loads(earlier.read_text(encoding="utf-8"))
        # the absolute path: the path as typed was relative to another run's folder
        checkpoint = stored.get("checkpoint_resolved") or stored.get("checkpoint")
        content = stored.get("checkpoint_sha256")
    except (ValueError, OSError, AttributeError):
        checkpoint = content = None
    if isinstance(checkpoint, str) and same_file(checkpoint, opts.checkpoint):
        return
    # the same file under another name: a run folder moved or copied since (#35); a path
    # that is no regular file is for the checkpoint's own check to report, not hashed here
    if not (isinstance(content, str) and Path(opts.checkpoint).is_file()
            and content == file_sha256(opts.checkpoint)):
        raise Coco4Error(f"{out_dir} holds the results of {checkpoint or 'another evaluation'};"
                         " choose another --out-dir, or pass --overwrite to replace them")


def negative_lists(opts: "EvaluateOptions") -> dict[str, ImageList]:
    """Each --negatives list under the name it is reported by (its file name, or its path
    where two share one), checked before anything is predicted: none of them may hold an image
    of the test list, and the test list must hold images of the known classes."""
    file_names = [Path(p).name for p in opts.negatives]
    lists = {}
    for path in opts.negatives:
        key = Path(path).name if file_names.count(Path(path).name) == 1 else str(path)
        if key in lists:
            raise Coco4Error(f"--negatives {path} is given twice")
        lists[key] = read_names(path, "--negatives")
    test_list = read_list(opts.list_path)
    classes = read_classes(opts.list_path.parent)
    if OTHER in classes and set(test_list.labels) <= {classes.index(OTHER)}:
        raise Coco4Error(f"--negatives: {opts.list_path} holds no image of the known classes, "
                         "so there is nothing to tell the negatives from; give the test list")
    test_images = set(test_list.files)
    for path, names in zip(opts.negatives, lists.values()):
        shared = [name for name in names.files if name in test_images]
        if shared:
            raise Coco4Error(f"--negatives {path} lists {len(shared)} of the images of the test "
                             f"list {opts.list_path} (such as {shared[0]}): negatives are "
                             "images of none of the classes (annotation_prepare.py --other "
                             "writes two)")
    return lists


def open_set_report(opts: "EvaluateOptions", negatives: dict[str, ImageList],
                    predictor: Predictor, predictions: Predictions) -> dict:
    """Each negatives list's open-set figures (coco4.open_set) against the list's images of
    the known classes, printed; and each score's trade-off curve, for open_set.png."""
    classes = predictor.classes
    labels = np.array(predictions.labels, dtype=int)
    known = np.array([classes[y] != OTHER for y in labels], dtype=bool)
    if not known.any():  # every image of the known classes was unreadable
        raise Coco4Error(f"no image of the known classes in {opts.list_path} could be read, so "
                         "there is nothing to tell the negatives from")
    known_probs = predictions.probs.numpy()[known]
    request = BatchRequest(opts.batch_size, opts.data_options)
    figures, curves = {}, {}
    for name, names in negatives.items():
        if not names.files:
            print(f"warning: --negatives {names.path} names no image: no open-set figures for "
                  "it", file=sys.stderr)
            continue
        unknown = predict_images_of(predictor, names, opts.image_dir, request)
        probs = unknown.probs.numpy()
        figures[name] = open_set_figures(known_probs, labels[known], probs, classes,
                                         opts.min_prob)
        figures[name]["left_out"] = unknown.left_out
        curves[name] = {score: tradeoff(known_scores, scores(probs, classes)[score])
                        for score, known_scores in scores(known_probs, classes).items()}
        print(open_set_line(name, figures[name]))
    return {"figures": figures, "curves": curves}


def open_set_line(name: str, figures: dict) -> str:
    rates = ", ".join(f"AUROC {'n/a' if f['auroc'] is None else format(f['auroc'], '.3f')} by "
                      f"{score}" for score, f in figures["scores"].items())
    point = figures["operating_point"]
    return (f"open set, {name} ({figures['num_unknown']} images): {rates}; at --min-prob "
            f"{point['min_prob']:g}, {_share(point['unknown_rejected'])} of them rejected and "
            f"{_share(point['known_rejected'])} of the known images")


def _share(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction:.1%}"


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


def write_results(out_dir: str | Path, predictor: Predictor, predictions: Predictions,
                  open_set: dict | None = None) -> dict:
    """metrics.json and predictions.csv (atomically), with ``open_set_report``'s figures
    under ``open_set`` where there are some; returns the metrics dict."""
    out_dir = Path(out_dir)
    metrics = predictions.metrics.summary(predictor.classes)
    raw = predictions.raw_metrics.summary(predictor.classes)
    metrics.update(checkpoint=predictor.checkpoint,
                   checkpoint_resolved=str(Path(predictor.checkpoint).resolve()),
                   checkpoint_sha256=file_sha256(predictor.checkpoint),
                   left_out=predictions.left_out,
                   tta=predictor.tta, temperature=predictor.temperature,
                   checkpoint_temperature=predictor.checkpoint_temperature,
                   ece_uncalibrated=raw["ece"], nll_uncalibrated=raw["nll"],
                   reliability_uncalibrated=raw["reliability"])
    if open_set:
        metrics["open_set"] = open_set["figures"]
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "true_label", "predicted_label"]
                    + [f"prob_{c}" for c in predictor.classes])
    for f, y, p, probs in zip(predictions.files, predictions.labels, predictions.preds,
                              predictions.probs.tolist()):
        # text cells: a file name starting with = must not run as a formula
        writer.writerow([spreadsheet_safe(f), spreadsheet_safe(predictor.classes[y]),
                         spreadsheet_safe(predictor.classes[p])] + [f"{q:.6f}" for q in probs])
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())
    return metrics
