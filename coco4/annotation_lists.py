"""annotation_prepare.py's work: COCO 2017 instances annotations to class lists
(annotation_{train,val}.txt, classes.txt) and the audit of what the rule kept and dropped
(report.json, report.png). The rule itself is coco4.data.coco_filter's."""
from dataclasses import dataclass
from pathlib import Path

from .data.coco_filter import RULES, prepare_lists
from .data.lists import DEFAULT_CLASSES
from .data.other_class import HELD_OUT_NEGATIVES, OTHER, SEEN_NEGATIVES, OtherSpec
from .errors import Coco4Error
from .fileio import check_outputs_are_not_inputs, check_writable
from .options import option

OUTPUTS = ("annotation_train.txt", "annotation_val.txt", "classes.txt", "report.json",
           "report.png", SEEN_NEGATIVES, HELD_OUT_NEGATIVES)  # what it writes in --out-dir


@dataclass(frozen=True)
class ListsOptions:
    coco_root: Path = option(Path("coco"), "COCO folder holding annotations/"
                                           "instances_{train,val}2017.json")
    train_json: Path | None = option(None, "train annotations (default: "
                                           "COCO_ROOT/annotations/instances_train2017.json)")
    val_json: Path | None = option(None, "val annotations (default: "
                                         "COCO_ROOT/annotations/instances_val2017.json)")
    out_dir: Path = option(Path("data"), "where the lists go")
    classes: tuple[str, ...] = option(DEFAULT_CLASSES, "COCO category names; their order gives "
                                                       "labels 0..N-1")
    rule: str = option("exact", "exact: keep an image whose annotations are all of one class "
                                "(the original rule); dominant: one target class, covering at "
                                "least --min-area-fraction of the annotated area, other objects "
                                "allowed", choices=RULES)
    min_area_fraction: float | None = option(None, "with --rule dominant: the class's share of "
                                                   "the area of all the image's annotations, "
                                                   "in (0, 1] (default: 0.5)")
    other: int | None = option(None, "add a last class 'other' of N train2017 images holding "
                                     "none of the classes (and a share of val2017), spread over "
                                     "what they show, and write lists of val2017 negatives to "
                                     "evaluate with; 0: only those lists (default: no other "
                                     "class)", metavar="N")
    other_holdout: tuple[str, ...] | None = option(
        None, "with --other: COCO categories or supercategories whose images are kept out of "
              "the other class, to measure rejection of kinds never seen; none for none "
              "(default: two supercategories chosen by --seed)")
    seed: int = option(0, "seeds the other sample and the kinds held out")

    def rule_dict(self) -> dict:
        """The rule as stored in report.json; a fraction given to the exact rule is refused,
        since it would be silently ignored."""
        fraction = self.min_area_fraction
        if self.rule == "exact":
            if fraction is not None:
                raise Coco4Error("--min-area-fraction applies to --rule dominant only; add "
                                 "--rule dominant or drop --min-area-fraction")
            return {"rule": "exact", "min_area_fraction": None}
        fraction = 0.5 if fraction is None else fraction
        if not 0 < fraction <= 1:  # NaN fails this too
            raise Coco4Error(f"--min-area-fraction must be in (0, 1], got {fraction}")
        return {"rule": "dominant", "min_area_fraction": fraction}

    def other_spec(self) -> OtherSpec | None:
        if self.other is None:
            if self.other_holdout is not None:
                raise Coco4Error("--other-holdout applies to --other only; add --other N or "
                                 "drop --other-holdout")
            return None
        if self.other < 0:
            raise Coco4Error(f"--other must be 0 or more, got {self.other}")
        if self.seed < 0:
            raise Coco4Error(f"--seed must be 0 or more, got {self.seed}")
        return OtherSpec(self.other, self.other_holdout, self.seed)


def make_lists(opts: ListsOptions) -> dict:
    """Write the lists and the audit, say what was kept; returns each split's kept images per
    class."""
    rule, other = opts.rule_dict(), opts.other_spec()
    check_writable(opts.out_dir)  # before reading hundreds of megabytes of JSON
    ann = opts.coco_root / "annotations"
    train_json = opts.train_json or ann / "instances_train2017.json"
    val_json = opts.val_json or ann / "instances_val2017.json"
    check_outputs_are_not_inputs([("--out-dir's", opts.out_dir / name) for name in OUTPUTS],
                                 [("--train-json", train_json), ("--val-json", val_json)])
    # the report is rewritten with the lists, never apart: it always describes the lists beside it
    report = prepare_lists(train_json, val_json, opts.out_dir, opts.classes, rule, other)
    if not other:
        remove_earlier_negatives(opts.out_dir)
    counts = {split: {name: c["kept"] for name, c in entry["classes"].items()}
              for split, entry in report["splits"].items()}
    if other and other.count:
        for split in counts:
            counts[split][OTHER] = report["other"][split]["images"]
    for split, per_class in counts.items():
        total = sum(per_class.values())
        detail = ", ".join(f"{name} {n}" for name, n in per_class.items())
        print(f"{split}: {total} images ({detail}) -> {opts.out_dir / f'annotation_{split}.txt'}")
    from . import plots  # matplotlib and torch: seconds that a refused argument need not wait

    png = plots.data_report_png(report, opts.out_dir / "report.png")
    print(f"audit (--rule {rule['rule']}): kept and dropped per class, and why -> "
          f"{opts.out_dir / 'report.json'}, {png}")
    if other:
        held = ", ".join(report["other"]["held_out"]) or "none"
        print(f"negatives of val2017 for evaluate.py --negatives (kinds held out: {held}): "
              + ", ".join(f"{opts.out_dir / name} ({n})"
                          for name, n in report["other"]["negatives"].items()))
    return counts



def remove_earlier_negatives(out_dir: Path) -> None:
    """An earlier --other run's lists of negatives, which this report no longer describes: for
    other classes, they may hold images of the new ones."""
    earlier = [out_dir / n for n in (SEEN_NEGATIVES, HELD_OUT_NEGATIVES) if (out_dir / n).exists()]
    for path in earlier:
        path.unlink()
    if earlier:
        print(f"removed the earlier lists of negatives ({', '.join(p.name for p in earlier)}), "
              "which the new lists do not go with: --other N writes them")
