"""Turn COCO 2017 instances annotations into 4-class image lists.

    python annotation_prepare.py                      # ./coco -> ./data
    python annotation_prepare.py --coco-root /data/coco --out-dir ./data
    python annotation_prepare.py --classes bird airplane train boat
    python annotation_prepare.py --rule dominant --min-area-fraction 0.5

Writes annotation_train.txt and annotation_val.txt (``<file_name> <label>`` per line, the
original project's format), classes.txt (class names in label order) and the audit of what the
rule kept and dropped, report.json and report.png, into --out-dir.
"""
from coco4 import cli, options

with cli.quiet_startup(__name__):  # Ctrl-C while torch imports: one line
    from coco4.annotation_lists import ListsOptions, make_lists


def get_args_parser():
    return options.parser(__doc__.split("\n")[0], ListsOptions)


def main(args):
    return make_lists(options.from_args(ListsOptions, args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
