"""Evaluate a checkpoint on the val2017 list: accuracy, per-class accuracy, confusion matrix.

    python evaluate.py                          # checkpoint/best.pt on data/annotation_val.txt
    python evaluate.py --checkpoint checkpoint/model.pth    # the original project's checkpoint
    python evaluate.py --min-class-acc 0.95                 # exit 1 if any class is below 95%

Writes metrics.json, predictions.csv, confusion_matrix.png and reliability_diagram.png to
--out-dir (default: eval/ beside the checkpoint). Probabilities are divided by the checkpoint's
temperature (fitted on the held-out validation split) unless --no-calibration.
"""
import argparse
from pathlib import Path

from coco4 import cli
from coco4.cli import GateFailed, add_source_args, default_out_dir
from coco4.evaluation import predict_from_args, write_results
from coco4.fileio import check_writable
from coco4.metrics import classes_below, confusion_text, report_text
from coco4.plots import confusion_matrix_figure, reliability_figure, save


def get_args_parser():
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on an image list.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_source_args(p)
    p.add_argument("--out-dir", type=Path, default=None, help="default: CHECKPOINT_DIR/eval")
    p.add_argument("--min-class-acc", type=float, default=None,
                   help="exit with status 1 when any class's accuracy is below this (0..1)")
    return p


def main(args):
    cli.check_fraction("--min-class-acc", args.min_class_acc)
    out_dir = default_out_dir(args, "eval")
    check_writable(out_dir)  # before the predictions, not after them
    predictor, predictions = predict_from_args(args)
    metrics = write_results(out_dir, predictor, predictions)
    save(confusion_matrix_figure(metrics["confusion_matrix"], predictor.classes,
                                 f"{Path(args.checkpoint).name} on {predictions.list_path.name}"),
         out_dir / "confusion_matrix.png")
    save(reliability_figure(metrics), out_dir / "reliability_diagram.png")
    print(confusion_text(metrics["confusion_matrix"], predictor.classes))
    print(report_text(metrics["confusion_matrix"], predictor.classes))
    for c, acc in metrics["per_class_accuracy"].items():
        print(f"{c:>12s}: {'n/a' if acc is None else f'{acc:.2%}'}")
    print(f"calibration: temperature {metrics['temperature']:.3g}, ECE "
          f"{metrics['ece_uncalibrated']:.4f} raw, {metrics['ece']:.4f} calibrated; NLL "
          f"{metrics['nll_uncalibrated']:.4f} raw, {metrics['nll']:.4f} calibrated")
    print(f"accuracy {metrics['accuracy']:.2%} on {metrics['num_images']} images; "
          f"written to {out_dir}")
    gate = args.min_class_acc
    if gate is not None:
        below = classes_below(metrics, gate)
        if below:  # a class with no images is not known to pass: it fails the gate
            raise GateFailed(f"below --min-class-acc {gate:.2%}: " + ", ".join(
                f"{c} {'no test images' if a is None else f'{a:.2%}'}" for c, a in below.items()))
    return metrics


if __name__ == "__main__":
    cli.run(main, get_args_parser())
