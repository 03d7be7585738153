"""Pictures of the data and of a checkpoint's predictions, written as PNG files.

    python visualize.py                                   # checkpoint/best.pt on the val list
    python visualize.py --image my_bird.jpg other.png     # predict your own images
    python visualize.py --num 12 --show                   # also open the figures in windows

Writes samples.png, predictions.png, errors.png, gradcam.png (where the evidence for the
predicted class lies, over the most wrong images and a few right ones) and, when the run's
metrics.csv is beside the checkpoint, training_curves.png to --out-dir (default: vis/ beside
the checkpoint).
"""
import argparse
from pathlib import Path

import numpy as np

from coco4 import cli, gradcam
from coco4 import plots as vis
from coco4.cli import Coco4Error, add_source_args, default_out_dir
from coco4.data.images import UnreadableImage, read_rgb
from coco4.evaluation import predict_from_args, predict_images
from coco4.fileio import check_writable
from coco4.run_log import read_metrics_csv


def get_args_parser():
    p = argparse.ArgumentParser(description="Write PNG pictures of data and predictions.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_source_args(p)
    p.add_argument("--out-dir", type=Path, default=None, help="default: CHECKPOINT_DIR/vis")
    p.add_argument("--num", type=int, default=8, help="images per figure")
    p.add_argument("--image", type=Path, nargs="+", default=None,
                   help="your own image files for predictions.png (the other pictures still "
                        "come from the list)")
    p.add_argument("--metrics", type=Path, default=None,
                   help="metrics.csv for the curves (default: beside the checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="which list images are shown")
    p.add_argument("--show", action="store_true", help="also open each figure in a window")
    return p


def main(args):
    out = default_out_dir(args, "vis")
    # everything cheap is checked before the list is predicted
    check_writable(out)
    if args.seed < 0:
        raise Coco4Error(f"--seed must be 0 or more, got {args.seed}")
    own = [_decode(path) for path in args.image or ()]  # a few files, kept decoded
    if args.metrics and not args.metrics.is_file():
        raise Coco4Error(f"--metrics {args.metrics}: no such file (the run's metrics.csv)")
    metrics_csv = args.metrics or Path(args.checkpoint).parent / "metrics.csv"
    if metrics_csv.is_file():
        read_metrics_csv(metrics_csv)  # a file train.py did not write is an error now
    predictor, predictions = predict_from_args(args)
    written = [vis.samples_png(predictions, predictor.classes, out / "samples.png", args.num,
                               args.seed)]
    if args.image:
        paths, probs, truth = args.image, predict_images(predictor, own), None
    else:
        pick = np.random.default_rng(args.seed).choice(
            len(predictions.files), min(args.num, len(predictions.files)), replace=False)
        paths = [predictions.image_dir / predictions.files[i] for i in pick]
        probs, truth = predictions.probs[pick], [predictions.labels[i] for i in pick]
    written.append(vis.predictions_png(paths, probs, predictor.classes, out / "predictions.png",
                                       truth))
    written.append(vis.errors_png(predictions, predictor.classes, out / "errors.png", args.num))
    if why := gradcam.missing():  # the other pictures are still worth having
        print(f"skipped gradcam.png: {why}")
    else:
        written.append(gradcam.gradcam_png(predictor, predictions, out / "gradcam.png",
                                           args.num))
    if metrics_csv.is_file():
        written.append(vis.curves_png(metrics_csv, out / "training_curves.png"))
    else:  # a checkpoint copied away from its run: say why one picture is missing
        print(f"skipped training_curves.png: no {metrics_csv} (the run's metrics.csv); "
              "pass --metrics PATH to draw it")
    for path in written:
        print(f"wrote {path}")
    if args.show:
        _show(written)
    return [str(p) for p in written]


def _decode(path: Path):
    """The user's own image, decoded before any work: an unreadable one stops the run before
    the list is predicted or any picture drawn."""
    if not path.is_file():
        raise Coco4Error(f"--image {path}: no such file")
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


if __name__ == "__main__":
    cli.run(main, get_args_parser())
