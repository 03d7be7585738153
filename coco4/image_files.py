"""Finding a user's images: files as given, folders walked (an image is known by its content
or its suffix), globs expanded (``**`` without following symlinked folders), a list file."""
import fnmatch
import glob
import os
from collections.abc import Sequence
from pathlib import Path

from .data.lists import read_text
from .errors import Coco4Error

# A folder's files are taken by content: these signatures, or a name with an image suffix (so
# that a broken file named .jpg is reported, not silently passed over); other files (notes,
# JSON, videos) are ignored. Files named on the command line or in --list are always tried.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
              b"MM\x00*")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


def looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith(SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _folder_images(folder: Path) -> list[Path]:
    # a link to a file that is gone, named as an image, is reported like a broken image
    return [p for p in _walk(folder) if (p.is_file() or (p.is_symlink() and not p.exists()))
            and looks_like_image(p)]


def _glob(pattern: str) -> list[Path]:
    """The paths ``pattern`` matches. A ``**`` pattern is matched over a walk that follows no
    symlinked folder: glob's own ``**`` follows them, and one link to a parent folder would
    give each image over and over (two, exponentially many times)."""
    if "**" not in pattern:
        return [Path(p) for p in sorted(glob.glob(pattern))]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    # fnmatch's * crosses folders, so "a/**/*.jpg" becomes "a/*.jpg": any depth under a/;
    # written as pathlib writes the walked paths ("./a//b" is "a/b"), or nothing would match
    flat = str(Path(pattern)).replace("/**/", "/").replace("**/", "").replace("**", "*")
    return [p for p in _walk(root) if fnmatch.fnmatch(str(p), flat)]


def _walk(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):  # symlinked folders are not followed: no loops
        dirs.sort()
        found += [Path(folder) / f for f in sorted(files)]
    return found


def find_images(inputs: Sequence[str], list_file: Path | None = None) -> list[Path]:
    """Every image the inputs name, in order, each once: files as given, folders recursively,
    globs expanded; ``list_file`` holds one path per line (relative to the current folder)."""
    names = list(inputs)
    if list_file is not None and not list_file.is_file():
        raise Coco4Error(f"--list {list_file}: no such file (one image path per line)")
    if list_file is not None:
        names += [line.strip() for line in read_text(list_file, "--list").splitlines()
                  if line.strip()]
    found = []
    for name in names:
        if not name.strip():  # Path("") is the current folder: every image below it
            raise Coco4Error(f"{name!r}: an empty path; give a file, folder or glob")
        path = Path(name)
        if path.is_dir():
            found += _folder_images(path)
        elif os.path.lexists(path):
            found.append(path)  # a file, or something odd that decoding will report
        elif any(c in name for c in "*?["):
            found += [p for m in _glob(name)
                      for p in (_folder_images(m) if m.is_dir() else [m])]
        else:
            raise Coco4Error(f"{name}: no such file or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise Coco4Error(f"no images found in {', '.join(names) or 'nothing'}; give image "
                         "files, folders, globs or --list FILE")
    return unique
