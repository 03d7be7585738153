"""COCO instances JSON -> single-class image lists, with the original project's rule.

An image is kept for class C when the set of category ids over ALL its annotations, crowd
annotations included, is exactly {C}. On real COCO 2017 with bird, airplane, train, boat this
gives 4,587 train and 172 val images, the lists the original project published.
"""
import contextlib
import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli import Coco4Error
from .coco_check import check_instances
from .lists import write_classes, write_list

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


def select_images(coco: "COCO", class_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """Return (file_names, labels): images whose annotations all belong to exactly one class.

    Images are grouped by label in class order; within a class, in pycocotools' own order, the
    order the original script produced.
    """
    files, labels = [], []
    for label, cat_id in enumerate(class_ids(coco, class_names)):
        for img_id in coco.getImgIds(catIds=[cat_id]):
            # iscrowd=None: crowd annotations count too, exactly as in the original rule
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None))
            if {a["category_id"] for a in anns} == {cat_id}:
                files.append(coco.loadImgs([img_id])[0]["file_name"])
                labels.append(label)
    return files, labels


def prepare_lists(train_json: str | Path, val_json: str | Path, out_dir: str | Path,
                  class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Write annotation_train.txt, annotation_val.txt and classes.txt into ``out_dir``.

    Both splits are filtered before anything is written, so a bad val file never leaves a new
    train list beside an old val list and class file.
    """
    out_dir = Path(out_dir)
    selected = {split: select_images(load_coco(path), class_names)
                for split, path in (("train", train_json), ("val", val_json))}
    counts = {}
    for split, (files, labels) in selected.items():
        write_list(out_dir / f"annotation_{split}.txt", files, labels)
        per_class = Counter(labels)
        counts[split] = {name: per_class.get(i, 0) for i, name in enumerate(class_names)}
    write_classes(out_dir, class_names)
    return counts
