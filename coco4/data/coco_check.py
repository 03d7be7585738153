"""What annotation_prepare.py reads of a COCO instances file, checked before the rule runs.

pycocotools trusts its input: an annotation of an image that is not there is indexed anyway,
two categories of one name leave ``--classes`` to pick one silently, and a file name with a
space is written into a list that then reads as three fields. Each of these is an error here
that names the entry: its section, position and id.
"""
import re
from collections import Counter
from pathlib import Path

from ..errors import Coco4Error
from .lists import file_name_problem

SECTIONS = ("images", "annotations", "categories")
UNLISTABLE = re.compile(r"\s|[\x00-\x1f\x7f]")  # a list line is "<file_name> <label>"


def check_instances(data: object, path: Path) -> None:
    """Raise a one-line Coco4Error for the first entry of ``data`` the rule cannot trust."""
    if not isinstance(data, dict):
        raise Coco4Error(f"{path} is not a COCO instances file: it holds a "
                         f"{type(data).__name__}, not an object")
    missing = [k for k in SECTIONS if k not in data]
    if missing:
        raise Coco4Error(f"{path} is not a COCO instances file: it has no {missing}; "
                         "use annotations/instances_{train,val}2017.json")
    for section in SECTIONS:
        if not isinstance(data[section], list):
            raise Coco4Error(f"{path}: '{section}' is a {type(data[section]).__name__}, "
                             "not a list")
    # person_keypoints_*.json has all three sections, but only the person category: the rule
    # would find none of the classes and blame --classes
    if any(isinstance(c, dict) and "keypoints" in c for c in data["categories"]):
        raise Coco4Error(f"{path} is not a COCO instances file: it is a keypoints file (its "
                         "categories hold keypoints); use annotations/instances_{train,val}"
                         "2017.json")
    categories = _ids(data, "categories", {"id": int, "name": str}, path)
    images = _ids(data, "images", {"id": int, "file_name": str}, path)
    _unique(data["categories"], "name", path)
    _unique(data["images"], "file_name", path)
    for i, image in enumerate(data["images"]):
        if not image["file_name"] or UNLISTABLE.search(image["file_name"]):
            raise Coco4Error(f"{path}: images[{i}] (id {image['id']}) has the file name "
                             f"{image['file_name']!r}, which a list line cannot hold (spaces "
                             "or control characters); rename the file and its entry")
        problem = file_name_problem(image["file_name"])
        if problem:
            raise Coco4Error(f"{path}: images[{i}] (id {image['id']}) has the file name "
                             f"{image['file_name']!r}: {problem}; fix its entry")
    fields = {"image_id": int, "category_id": int}
    for i, ann in enumerate(data["annotations"]):
        _fields(ann, fields, f"annotations[{i}]", path)
        for key, known, what in (("image_id", images, "image"),
                                 ("category_id", categories, "category")):
            if ann[key] not in known:
                raise Coco4Error(f"{path}: annotations[{i}] (id {ann.get('id')}) names "
                                 f"{key} {ann[key]}, but there is no such {what}")


def _ids(data, section, fields, path) -> set:
    """The ids of ``section``'s entries, each checked for ``fields`` and listed once."""
    ids = set()
    for i, entry in enumerate(data[section]):
        _fields(entry, fields, f"{section}[{i}]", path)
        if entry["id"] in ids:
            raise Coco4Error(f"{path}: {section}[{i}] repeats id {entry['id']}; each id names "
                             "one entry")
        ids.add(entry["id"])
    return ids


def _fields(entry, fields, where, path) -> None:
    if not isinstance(entry, dict):
        raise Coco4Error(f"{path}: {where} is a {type(entry).__name__}, not an object")
    for key, kind in fields.items():
        value = entry.get(key)
        # bool is an int to Python, never an id to COCO
        if not isinstance(value, kind) or isinstance(value, bool):
            raise Coco4Error(f"{path}: {where} has {key} {value!r}; expected "
                             f"{'an integer' if kind is int else 'a string'}")


def _unique(entries, key, path) -> None:
    repeated = [value for value, n in Counter(e[key] for e in entries).items() if n > 1]
    if repeated:
        section = "categories" if key == "name" else "images"
        raise Coco4Error(f"{path}: {section} repeat the {key} {repeated[0]!r}; the rule "
                         "could not tell which is meant")
