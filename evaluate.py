"""Evaluate a checkpoint on the val2017 list: accuracy, per-class accuracy, confusion matrix.

    python evaluate.py                          # checkpoint/best.pt on data/annotation_val.txt
    python evaluate.py --checkpoint checkpoint/model.pth    # the original project's checkpoint
    python evaluate.py --min-class-acc 0.95                 # exit 1 if any class is below 95%

Writes metrics.json, predictions.csv, confusion_matrix.png and reliability_diagram.png to
--out-dir (default: eval/ beside the checkpoint). Probabilities are divided by the checkpoint's
temperature (fitted on the held-out validation split) unless --no-calibration.
"""
from coco4 import cli, options

with cli.quiet_startup(__name__):  # Ctrl-C while torch imports: one line
    from coco4.evaluation import EvaluateOptions, evaluate_checkpoint


def get_args_parser():
    return options.parser("Evaluate a checkpoint on an image list.", EvaluateOptions)


def main(args):
    return evaluate_checkpoint(options.from_args(EvaluateOptions, args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
