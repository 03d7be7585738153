"""Turn COCO 2017 instances annotations into 4-class image lists.

    python annotation_prepare.py                      # ./coco -> ./data
    python annotation_prepare.py --coco-root /data/coco --out-dir ./data
    python annotation_prepare.py --classes bird airplane train boat

Writes annotation_train.txt and annotation_val.txt (``<file_name> <label>`` per line, the
original project's format) and classes.txt (class names in label order) into --out-dir.
"""
import argparse
from pathlib import Path

from coco4 import cli
from coco4.data.coco_filter import prepare_lists
from coco4.data.lists import DEFAULT_CLASSES
from coco4.fileio import check_writable


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    return p


def main(args):
    check_writable(args.out_dir)  # before reading hundreds of megabytes of JSON
    ann = args.coco_root / "annotations"
    counts = prepare_lists(args.train_json or ann / "instances_train2017.json",
                           args.val_json or ann / "instances_val2017.json",
                           args.out_dir, args.classes)
    for split, per_class in counts.items():
        total = sum(per_class.values())
        detail = ", ".join(f"{name} {n}" for name, n in per_class.items())
        print(f"{split}: {total} images ({detail}) -> {args.out_dir / f'annotation_{split}.txt'}")
    return counts


if __name__ == "__main__":
    cli.run(main, get_args_parser())
