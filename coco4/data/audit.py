"""The data audit: what the filtering rule kept and dropped, written beside the lists.

report.json holds, per split and class, the images kept and dropped (dropped: the class is in
the image but the rule refused it), which other COCO categories were in the dropped images
(the top ten), and how many images hold this one target class plus other objects, the data the
exact rule gives up. It also names the rule and the list file it produced, by checksum, so a
training run can tell which rule made the list it reads (``list_rule``).
"""
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import atomic_write_text

REPORT_FILE = "report.json"
TOP_DISQUALIFIERS = 10


@dataclass
class ClassAudit:
    """One class in one split: every image that holds the class, counted once."""

    kept: int = 0
    dropped: int = 0
    only_this_class: int = 0  # nothing else annotated: kept by either rule
    one_target_plus_others: int = 0  # other objects, but no other target class
    with_other_targets: int = 0  # another target class too: dropped by either rule
    disqualifiers: Counter = field(default_factory=Counter)

    def add(self, others: set[str], other_target: bool, kept: bool) -> None:
        """An image of this class: ``others`` are the names of its other categories."""
        self.kept += kept
        self.dropped += not kept
        if not others:
            self.only_this_class += 1
        elif other_target:
            self.with_other_targets += 1
        else:
            self.one_target_plus_others += 1
        if not kept:
            self.disqualifiers.update(others)

    def to_dict(self) -> dict:
        # most images first, ties by name, so that the ranking does not depend on the JSON order
        ranked = sorted(self.disqualifiers.items(), key=lambda item: (-item[1], item[0]))
        return {"kept": self.kept, "dropped": self.dropped,
                "only_this_class": self.only_this_class,
                "one_target_plus_others": self.one_target_plus_others,
                "with_other_targets": self.with_other_targets,
                "top_disqualifiers": dict(ranked[:TOP_DISQUALIFIERS])}


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, read in chunks (a checkpoint is hundreds of megabytes)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_report(out_dir: Path, rule: dict, splits: dict, other: dict | None = None) -> dict:
    """Write report.json: ``rule`` ({"rule", "min_area_fraction"}) and, per split, its source,
    list file (name and checksum), image count and per-class audit; with ``other``, what the
    ``other`` sample holds (coco4.data.other_class). Returns the report."""
    report = {**rule, "splits": {}}
    for split, entry in splits.items():
        list_path = out_dir / f"annotation_{split}.txt"
        report["splits"][split] = {"json": str(entry["json"]), "list": list_path.name,
                                   "list_sha256": file_sha256(list_path),
                                   "images": entry["images"],
                                   "kept": sum(c["kept"] for c in entry["classes"].values()),
                                   "classes": entry["classes"]}
    if other is not None:  # without --other, report.json is what it always was
        report["other"] = other
    atomic_write_text(out_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def list_rule(list_path: str | Path) -> dict:
    """The rule that made ``list_path``, from the report.json beside it: {"rule",
    "min_area_fraction"}; the rule is None where no report describes this very file (lists
    from the original project or edited by hand)."""
    list_path = Path(list_path)
    unknown = {"rule": None, "min_area_fraction": None}
    try:
        report = json.loads((list_path.parent / REPORT_FILE).read_text(encoding="utf-8"))
        entries = report["splits"].values()
        sha = file_sha256(list_path)
        if any(e["list"] == list_path.name and e["list_sha256"] == sha for e in entries):
            return {"rule": report["rule"], "min_area_fraction": report["min_area_fraction"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no report, or not ours: the rule is unknown, which is no reason to stop training
    return unknown
