"""Classify your own images with a trained checkpoint: files, folders (recursively), globs.

    python predict.py photos/                        # a table for a few images, else a CSV
    python predict.py photos/ --out preds.csv --top-k 2 --min-prob 0.6
    python predict.py --list paths.txt --out preds.jsonl      # one path per line; JSON lines

One row per image: the path, the predicted class (``unknown`` below --min-prob), its
probability, and every class's probability. Rows stream to the file as batches are predicted.
Images that cannot be read are left out, named in a warning and in OUT.skipped.tsv.
"""
from coco4 import cli, options

with cli.quiet_startup(__name__):  # Ctrl-C while torch imports: one line
    from coco4.file_predictions import PredictOptions, predict_files


def get_args_parser():
    return options.parser("Classify your own images with a checkpoint.", PredictOptions)


def main(args):
    return predict_files(options.from_args(PredictOptions, args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
