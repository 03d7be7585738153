"""visualize.py's work: PNG pictures of a list's images and of a checkpoint's predictions on
them (samples, predictions, errors, Grad-CAM, training curves), or on the user's own images."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import gradcam
from . import plots as vis
from .cli import check_at_least
from .data.images import UnreadableImage, read_rgb
from .errors import Coco4Error
from .evaluation import ListOptions, predict_list_for
from .fileio import check_outputs_are_not_inputs, check_writable
from .options import option
from .predictor import predict_images
from .run_log import read_metrics_csv

PICTURES = ("samples.png", "predictions.png", "errors.png", "gradcam.png",
            "training_curves.png")


@dataclass(frozen=True)
class PictureOptions(ListOptions):
    out_dir: Path | None = option(None, "where the pictures go (default: CHECKPOINT_DIR/vis)")
    num: int = option(8, "images per figure")
    image: tuple[Path, ...] | None = option(None, "your own image files for predictions.png "
                                                  "(the other pictures still come from the "
                                                  "list)")
    metrics: Path | None = option(None, "metrics.csv for the curves (default: beside the "
                                        "checkpoint)")
    seed: int = option(0, "which list images are shown")
    show: bool = option(False, "also open each figure in a window")


def draw_pictures(opts: PictureOptions) -> list[str]:
    """Write the pictures (each cheap check made before the list is predicted); returns the
    paths written."""
    out = opts.out("vis", opts.out_dir)
    check_writable(out)
    check_at_least(opts, num=1)
    if opts.seed < 0:
        raise Coco4Error(f"--seed must be 0 or more, got {opts.seed}")
    check_outputs_are_not_inputs(
        [("--out-dir's", out / name) for name in PICTURES],
        [("--checkpoint", opts.checkpoint), *(("--image", p) for p in opts.image or ())])
    own = [_decode(path) for path in opts.image or ()]  # a few files, kept decoded
    if opts.metrics and not opts.metrics.is_file():
        raise Coco4Error(f"--metrics {opts.metrics}: no such file (the run's metrics.csv)")
    metrics_csv = opts.metrics or Path(opts.checkpoint).parent / "metrics.csv"
    if metrics_csv.is_file():
        read_metrics_csv(metrics_csv)  # a file train.py did not write is an error now
    predictor, predictions = predict_list_for(opts)
    classes = predictor.classes
    written = [vis.samples_png(predictions, classes, out / "samples.png", opts.num, opts.seed)]
    if opts.image:
        paths, probs, truth = opts.image, predict_images(predictor, own), None
    else:
        pick = np.random.default_rng(opts.seed).choice(
            len(predictions.files), min(opts.num, len(predictions.files)), replace=False)
        paths = [predictions.image_dir / predictions.files[i] for i in pick]
        probs, truth = predictions.probs[pick], [predictions.labels[i] for i in pick]
    written.append(vis.predictions_png(paths, probs, classes, out / "predictions.png", truth))
    written.append(vis.errors_png(predictions, classes, out / "errors.png", opts.num))
    if why := gradcam.missing():  # the other pictures are still worth having
        print(f"skipped gradcam.png: {why}")
        (out / "gradcam.png").unlink(missing_ok=True)  # an earlier one: not of this model
    else:
        written.append(gradcam.gradcam_png(predictor, predictions, out / "gradcam.png",
                                           opts.num))
    if metrics_csv.is_file():
        written.append(vis.curves_png(metrics_csv, out / "training_curves.png"))
    else:  # a checkpoint copied away from its run: say why one picture is missing
        print(f"skipped training_curves.png: no {metrics_csv} (the run's metrics.csv); "
              "pass --metrics PATH to draw it")
        (out / "training_curves.png").unlink(missing_ok=True)
    for path in written:
        print(f"wrote {path}")
    if opts.show:
        _show(written)
    return [str(p) for p in written]


def _decode(path: Path):
    """The user's own image, decoded before any work: an unreadable one stops the run before
    the list is predicted or any picture drawn."""
    if not path.exists():
        raise Coco4Error(f"--image {path}: no such file")
    if not path.is_file():  # a FIFO would wait for a writer, a folder is not an image
        raise Coco4Error(f"--image {path}: not a regular file; give an image file")
    try:
        return read_rgb(path)
    except UnreadableImage as e:
        raise Coco4Error(f"--image {e}; give an image file") from None


def _show(paths):
    import matplotlib.pyplot as plt

    for path in paths:
        plt.figure(path.name)
        plt.imshow(plt.imread(path))
        plt.axis("off")
    plt.show()
