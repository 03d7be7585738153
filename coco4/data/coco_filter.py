"""COCO instances JSON -> single-class image lists, with the original project's rule.

An image is kept for class C when the set of category ids over ALL its annotations, crowd
annotations included, is exactly {C}. On real COCO 2017 with bird, airplane, train, boat this
gives 4,587 train and 172 val images, the lists the original project published.

The dominant rule (``rule="dominant"``) also keeps an image holding other objects, as long as no
other target class is in it and the class's annotations cover at least ``min_area_fraction`` of
the area of all its annotations (COCO's ``area`` field, crowd annotations included).
"""
import contextlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Coco4Error
from ..fileio import atomic_write_text
from .audit import ClassAudit, write_report
from .coco_check import check_instances
from .lists import write_classes, write_list
from .other_class import OTHER, OtherSampler, OtherSpec

if TYPE_CHECKING:
    from pycocotools.coco import COCO


def load_coco(json_path: str | Path) -> "COCO":
    """Read an instances JSON with pycocotools, silencing its chatter, with a clear error."""
    from pycocotools.coco import COCO  # imported here: only annotation prep needs it

    json_path = Path(json_path)
    if not json_path.is_file():
        raise Coco4Error(f"COCO annotations {json_path} not found; download "
                         "annotations_trainval2017.zip and unzip it into --coco-root "
                         "(see README), or pass --train-json/--val-json")
    try:  # read here, not by pycocotools, so that every entry is checked before indexing
        data = json.loads(json_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise Coco4Error(f"{json_path} is not a COCO instances file (not JSON: {e})") from None
    except RecursionError:  # arrays nested thousands deep: no COCO file looks like that
        raise Coco4Error(f"{json_path} is not a COCO instances file (JSON nested too deep to "
                         "read)") from None
    check_instances(data, json_path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def class_ids(coco: "COCO", class_names: Sequence[str]) -> list[int]:
    """Map class names to COCO category ids, or fail listing the valid names."""
    by_name = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    unknown = [n for n in class_names if n not in by_name]
    if unknown:
        raise Coco4Error(f"unknown COCO categories {unknown}; valid names: "
                         + ", ".join(sorted(by_name)))
    if len(class_names) < 2:
        raise Coco4Error(f"--classes names {len(class_names)} class; a classifier needs at least 2")
    if len(set(class_names)) != len(class_names):
        raise Coco4Error(f"--classes lists a name twice: {list(class_names)}")
    return [by_name[n] for n in class_names]


RULES = ("exact", "dominant")
EXACT = {"rule": "exact", "min_area_fraction": None}


def keeps(anns: Sequence[dict], cat_id: int, target_ids: Sequence[int], rule: dict) -> bool:
    """Whether an image with annotations ``anns`` (crowd ones included) is kept for ``cat_id``."""
    cats = {a["category_id"] for a in anns}
    if rule["rule"] == "exact":
        return cats == {cat_id}
    if cats & set(target_ids) != {cat_id}:  # another target class: which label would be right?
        return False
    total = sum(a["area"] for a in anns)
    own = sum(a["area"] for a in anns if a["category_id"] == cat_id)
    # a ratio, not own >= f * total: 7 of 100 must pass at 0.07, and 0.07 * 100 > 7 in floats.
    # No area at all (every annotation 0 px): nothing outweighs the class, as with exact
    return total == 0 or own / total >= rule["min_area_fraction"]


def filter_images(coco: "COCO", class_names: Sequence[str],
                  rule: dict = EXACT) -> tuple[list[str], list[int], dict]:
    """Return (file_names, labels, audit): the images ``rule`` keeps, grouped by label in class
    order, within a class in pycocotools' own order (the order the original script produced),
    and per class name the ClassAudit of every image holding the class."""
    ids = class_ids(coco, class_names)
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    files, labels, audit = [], [], {}
    for label, cat_id in enumerate(ids):
        counts = ClassAudit()
        for img_id in coco.getImgIds(catIds=[cat_id]):
            # iscrowd=None: crowd annotations count too, exactly as in the original rule
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None))
            others = {a["category_id"] for a in anns} - {cat_id}
            kept = keeps(anns, cat_id, ids, rule)
            counts.add({names[c] for c in others}, bool(others & set(ids)), kept)
            if kept:
                files.append(coco.loadImgs([img_id])[0]["file_name"])
                labels.append(label)
        audit[class_names[label]] = counts.to_dict()
    return files, labels, audit


def select_images(coco: "COCO", class_names: Sequence[str],
                  rule: dict = EXACT) -> tuple[list[str], list[int]]:
    """Return (file_names, labels) of the images ``rule`` keeps (see filter_images)."""
    files, labels, _ = filter_images(coco, class_names, rule)
    return files, labels


def check_areas(coco: "COCO", path: str | Path) -> None:
    """The dominant rule weighs COCO's ``area`` field: each must be a number, at least 0."""
    for i, ann in enumerate(coco.dataset["annotations"]):
        area = ann.get("area")
        if (not isinstance(area, int | float) or isinstance(area, bool) or not math.isfinite(area)
                or area < 0):
            raise Coco4Error(f"{path}: annotations[{i}] (id {ann.get('id')}) has area {area!r}; "
                             "--rule dominant needs a number of pixels, at least 0 (or use "
                             "--rule exact, which does not read areas)")


def prepare_lists(train_json: str | Path, val_json: str | Path, out_dir: str | Path,
                  class_names: Sequence[str], rule: dict = EXACT,
                  other: OtherSpec | None = None) -> dict:
    """Write annotation_train.txt, annotation_val.txt, classes.txt and report.json (the audit,
    see coco4.data.audit) into ``out_dir``; return the report. With ``other``, the lists get a
    last class ``other`` (unless its count is 0) and the lists of negatives are written too
    (coco4.data.other_class).

    Both splits are filtered before anything is written, so a bad val file never leaves a new
    train list beside an old val list, class file and report.
    """
    out_dir = Path(out_dir)
    audits, sampler = {}, OtherSampler(other) if other else None
    for split, path in (("train", train_json), ("val", val_json)):
        coco = load_coco(path)
        if rule["rule"] == "dominant":
            check_areas(coco, path)
        files, labels, classes = filter_images(coco, class_names, rule)
        if sampler:  # label len(class_names): the last class
            extra = sampler.split(split, coco, class_ids(coco, class_names), len(files))
            files, labels = files + extra, labels + [len(class_names)] * len(extra)
        audits[split] = {"json": path, "images": len(coco.dataset["images"]),
                         "classes": classes, "files": files, "labels": labels}
    for split, audit in audits.items():
        write_list(out_dir / f"annotation_{split}.txt", audit.pop("files"), audit.pop("labels"))
    write_classes(out_dir, [*class_names, OTHER] if other and other.count else class_names)
    if sampler:
        for name, files in sampler.negatives.items():
            atomic_write_text(out_dir / name, "".join(f"{f}\n" for f in files))
    return write_report(out_dir, rule, audits, sampler.report if sampler else None)
