"""Turn COCO 2017 instances annotations into 4-class image lists.

    python annotation_prepare.py                      # ./coco -> ./data
    python annotation_prepare.py --coco-root /data/coco --out-dir ./data
    python annotation_prepare.py --classes bird airplane train boat
    python annotation_prepare.py --rule dominant --min-area-fraction 0.5

Writes annotation_train.txt and annotation_val.txt (``<file_name> <label>`` per line, the
original project's format), classes.txt (class names in label order) and the audit of what the
rule kept and dropped, report.json and report.png, into --out-dir.
"""
import argparse
from pathlib import Path

from coco4 import cli
from coco4.data.coco_filter import RULES, prepare_lists
from coco4.data.lists import DEFAULT_CLASSES
from coco4.fileio import check_writable


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each default in --help, but not "None": those options say what they fall back to."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=_Defaults)
    p.add_argument("--coco-root", type=Path, default=Path("coco"),
                   help="COCO folder holding annotations/instances_{train,val}2017.json")
    p.add_argument("--train-json", type=Path, default=None,
                   help="train annotations "
                        "(default: COCO_ROOT/annotations/instances_train2017.json)")
    p.add_argument("--val-json", type=Path, default=None,
                   help="val annotations (default: COCO_ROOT/annotations/instances_val2017.json)")
    p.add_argument("--out-dir", type=Path, default=Path("data"), help="where the lists go")
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES),
                   help="COCO category names; their order gives labels 0..N-1")
    p.add_argument("--rule", choices=RULES, default="exact",
                   help="exact: keep an image whose annotations are all of one class (the "
                        "original rule); dominant: one target class, covering at least "
                        "--min-area-fraction of the annotated area, other objects allowed")
    p.add_argument("--min-area-fraction", type=float, default=None,
                   help="with --rule dominant: the class's share of the area of all the "
                        "image's annotations, in (0, 1] (default 0.5)")
    return p


def rule_of(args) -> dict:
    """The rule as stored in report.json; a fraction given to the exact rule is refused, since
    it would be silently ignored."""
    fraction = args.min_area_fraction
    if args.rule == "exact":
        if fraction is not None:
            raise cli.Coco4Error("--min-area-fraction applies to --rule dominant only; add "
                                 "--rule dominant or drop --min-area-fraction")
        return {"rule": "exact", "min_area_fraction": None}
    fraction = 0.5 if fraction is None else fraction
    if not 0 < fraction <= 1:  # NaN fails this too
        raise cli.Coco4Error(f"--min-area-fraction must be in (0, 1], got {fraction}")
    return {"rule": "dominant", "min_area_fraction": fraction}


def main(args):
    rule = rule_of(args)
    check_writable(args.out_dir)  # before reading hundreds of megabytes of JSON
    ann = args.coco_root / "annotations"
    # the report is rewritten with the lists, never apart: it always describes the lists beside it
    report = prepare_lists(args.train_json or ann / "instances_train2017.json",
                           args.val_json or ann / "instances_val2017.json",
                           args.out_dir, args.classes, rule)
    counts = {split: {name: c["kept"] for name, c in entry["classes"].items()}
              for split, entry in report["splits"].items()}
    for split, per_class in counts.items():
        total = sum(per_class.values())
        detail = ", ".join(f"{name} {n}" for name, n in per_class.items())
        print(f"{split}: {total} images ({detail}) -> {args.out_dir / f'annotation_{split}.txt'}")
    from coco4 import plots  # matplotlib and torch: seconds that a refused argument need not wait

    png = plots.data_report_png(report, args.out_dir / "report.png")
    print(f"audit (--rule {rule['rule']}): kept and dropped per class, and why -> "
          f"{args.out_dir / 'report.json'}, {png}")
    return counts


if __name__ == "__main__":
    cli.run(main, get_args_parser())
