"""Image lists: ``<file_name> <label>`` per line, the original project's format, and classes.txt.

The lists produced by the original code (``annotation_train.txt``, ``annotation_val.txt``) are
read unchanged; a class file is optional and defaults to the original four classes.
"""
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Coco4Error
from ..fileio import atomic_write_text

DEFAULT_CLASSES = ("bird", "airplane", "train", "boat")
CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class ImageList:
    """A parsed list file: parallel tuples of file names and integer labels."""

    path: Path
    files: tuple
    labels: tuple

    def __len__(self) -> int:
        return len(self.files)


LABEL = re.compile(r"[0-9]+")  # ASCII digits only: int() also takes "0_1" and Arabic digits


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an image's name in a list or a COCO file, or None: it must be a
    relative path inside the image folder, written once and only one way (``a.jpg``, not
    ``./a.jpg``, which would count the image twice), and encodable as UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8 text"
    if "\0" in name or "\\" in name:
        return "it holds a NUL or a backslash"
    if name.startswith("/") or re.match(r"[A-Za-z]:/", name):  # C:/x; a:1.jpg is a name
        return "it is an absolute path, outside the image folder"
    parts = name.split("/")
    if ".." in parts:
        return "it climbs out of the image folder (..)"
    if name in (".", "") or posixpath.normpath(name) != name:
        return f"it is not written plainly (as {posixpath.normpath(name)!r})"
    return None


def read_list(path: str | Path, num_classes: int | None = None) -> ImageList:
    """Parse a list file; any malformed line is an error naming the file and the line number."""
    path = Path(path)
    if not path.is_file():
        raise Coco4Error(f"image list {path} not found; create it with "
                         "`python annotation_prepare.py` (or pass the right --data-dir)")
    files, labels, first_line = [], [], {}
    for lineno, line in enumerate(read_text(path, "image list").splitlines(), start=1):
        if not line.strip():
            continue
        name, label = _parse_line(line, path, lineno, num_classes)
        # once: it would land in both the training and the validation split
        _listed_once(first_line, name, path, lineno)
        files.append(name)
        labels.append(label)
    if not files:
        raise Coco4Error(f"image list {path} is empty; re-run `python annotation_prepare.py` "
                         "and check that its per-class counts are not all zero")
    return ImageList(path, tuple(files), tuple(labels))


def read_names(path: str | Path, flag: str) -> ImageList:
    """A list of images of none of the classes (``flag`` names it in errors): a file name a
    line, or the list format with its labels ignored; each name checked as a list's are, and
    each image listed once. Labelled 0 for the batching, which needs a label; may be empty."""
    path = Path(path)
    if path.is_dir():
        raise Coco4Error(f"{flag} {path} is a folder; give a list file (annotation_prepare.py "
                         "--other writes data/negatives_val_*.txt)")
    if not path.is_file():
        raise Coco4Error(f"{flag} {path}: no such file (annotation_prepare.py --other writes "
                         "data/negatives_val_*.txt)")
    files, first_line = [], {}
    for lineno, line in enumerate(read_text(path, f"{flag} list").splitlines(), start=1):
        if not line.strip():
            continue
        name = line.split()[0]
        _check_name(name, f"{path}:{lineno}")
        _listed_once(first_line, name, path, lineno)  # counted twice, it would weigh twice
        files.append(name)
    return ImageList(path, tuple(files), (0,) * len(files))


def read_text(path: Path, what: str) -> str:
    """A list or class file's text: UTF-8, with or without a byte-order mark (which would
    otherwise become part of the first file name); anything else is a one-line error."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise Coco4Error(f"{what} {path} is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Coco4Error(f"{what} {path} is not UTF-8 text (byte {e.start}: "
                         f"{data[e.start:e.start + 1]!r}); save it as UTF-8") from None
    if "\0" in text:
        raise Coco4Error(f"{what} {path} holds NUL bytes: not a text file")
    return text


def _check_name(name: str, where: str) -> None:
    problem = file_name_problem(name)
    if problem:
        raise Coco4Error(f"{where}: the file name {name!r} cannot be used: {problem}")


def _listed_once(first_line: dict, name: str, path: Path, lineno: int) -> None:
    """Refuse a name seen before in the file (``first_line``: name -> line), else note it."""
    if name in first_line:
        raise Coco4Error(f"{path}:{lineno}: {name} is listed again (first on line "
                         f"{first_line[name]}); list each image once")
    first_line[name] = lineno


def _parse_line(line, path, lineno, num_classes):
    fields = line.split()
    where = f"{path}:{lineno}"
    if len(fields) != 2:
        raise Coco4Error(f"{where}: expected '<file_name> <label>', got {line.strip()!r} "
                         f"({len(fields)} fields)")
    name, label_text = fields
    _check_name(name, where)
    if not LABEL.fullmatch(label_text):
        raise Coco4Error(f"{where}: label {label_text!r} is not an integer")
    label = int(label_text)
    if label < 0:
        raise Coco4Error(f"{where}: label {label} is negative; labels are 0, 1, ...")
    if num_classes is not None and label >= num_classes:
        raise Coco4Error(f"{where}: label {label} is out of range for {num_classes} classes "
                         f"(expected 0..{num_classes - 1})")
    return name, label


def write_list(path: str | Path, files: Sequence[str], labels: Sequence[int]) -> None:
    atomic_write_text(path, "".join(f"{f} {y}\n" for f, y in zip(files, labels)))


def write_classes(folder: str | Path, classes: Sequence[str]) -> None:
    atomic_write_text(Path(folder) / CLASSES_FILE, "".join(f"{c}\n" for c in classes))


UNKNOWN = "unknown"  # predict.py's label for an image below --min-prob


def read_classes(folder: str | Path) -> tuple[str, ...]:
    """Class names in label order from ``folder/classes.txt``; the original four if absent.

    The original workflow wrote no class file, and its lists use bird, airplane, train, boat.
    """
    path = Path(folder) / CLASSES_FILE
    if not path.is_file():
        return DEFAULT_CLASSES
    classes = tuple(line.strip() for line in read_text(path, "class file").splitlines()
                    if line.strip())
    if len(classes) < 2:
        raise Coco4Error(f"{path} names {len(classes)} class(es); a classifier needs at least 2")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise Coco4Error(f"{path} names the class {repeated[0]!r} twice; each class once")
    if UNKNOWN in classes:
        raise Coco4Error(f"{path} names a class {UNKNOWN!r}, the label predict.py --min-prob "
                         "gives the images it rejects: rename the class")
    return classes
