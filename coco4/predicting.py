"""predict.py's work: find the user's images, decode them in parallel, and stream one row per
image (class, probability, every class's probability) to a CSV or JSON-lines file as batches
are predicted: memory for one batch, however many images."""
import csv
import fnmatch
import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from .cli import Coco4Error
from .data.images import probe
from .data.lists import read_text
from .data.transforms import pil_eval_transform
from .evaluation import Predictor

# A folder's files are taken by content: these signatures, or a name with an image suffix (so
# that a broken file named .jpg is reported, not silently passed over); other files (notes,
# JSON, videos) are ignored. Files named on the command line or in --list are always tried.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
              b"MM\x00*")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
UNKNOWN = "unknown"


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
    return [p for p in _walk(folder) if p.is_file() and looks_like_image(p)]


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


class _Decoded(torch.utils.data.Dataset):
    """(index, uint8 tensor or None, why not) per path: the evaluation transform of evaluate.py's
    PIL path, which its cache path equals, so probabilities match evaluate.py's."""

    def __init__(self, paths: Sequence[Path], image_size: int):
        self.paths, self.transform = paths, pil_eval_transform(image_size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image, why = probe(self.paths[i])
        return i, None if image is None else self.transform(image), why


def _collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    x = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], x, [(i, why) for i, x, why in items if x is None]


@dataclass
class Batch:
    paths: list  # the images predicted, in order
    probs: torch.Tensor  # [n, classes]
    skipped: list  # (path, why) of the batch's images that could not be used


@torch.no_grad()
def predict_stream(predictor: Predictor, paths: Sequence[Path], batch_size: int,
                   workers: int) -> Iterator[Batch]:
    """Batches of predictions, in the order of ``paths``, decoded by ``workers`` processes."""
    loader = torch.utils.data.DataLoader(_Decoded(paths, predictor.image_size), batch_size,
                                         num_workers=workers, collate_fn=_collate)
    for index, x, bad in loader:
        probs = torch.empty(0, len(predictor.classes))
        if x is not None:
            probs = predictor.predict(x.to(predictor.device))
        yield Batch([paths[i] for i in index], probs, [(paths[i], why) for i, why in bad])


@dataclass(frozen=True)
class RowFormat:
    """What each output row holds: every class's probability, the top ``top_k``, and the
    predicted class, or ``unknown`` where the top probability is below ``min_prob``."""

    classes: tuple
    top_k: int = 1
    min_prob: float = 0.0

    def rows(self, batch: Batch) -> Iterator[dict]:
        top = batch.probs.topk(self.top_k, dim=1)
        for path, probs, values, idx in zip(batch.paths, batch.probs.tolist(),
                                            top.values.tolist(), top.indices.tolist()):
            best = values[0]
            yield {"path": str(path),
                   "class": self.classes[idx[0]] if best >= self.min_prob else UNKNOWN,
                   "prob": best,
                   "top_k": [(self.classes[j], v) for j, v in zip(idx, values)],
                   "probs": dict(zip(self.classes, probs))}


class RowWriter:
    """Rows to an open text file as CSV or JSON lines, flushed after every batch."""

    def __init__(self, f: IO[str], fmt: str, rows: RowFormat):
        self.f, self.fmt, self.rows = f, fmt, rows
        self.csv = csv.writer(f) if fmt == "csv" else None
        if self.csv:
            top = [f"top{j}" for j in range(1, rows.top_k + 1)] if rows.top_k > 1 else []
            self.csv.writerow(["path", "class", "prob", *top,
                               *(f"prob_{c}" for c in rows.classes)])

    def write(self, batch: Batch) -> None:
        for row in self.rows.rows(batch):
            if self.csv:
                top = [f"{c}:{p:.6f}" for c, p in row["top_k"]] if self.rows.top_k > 1 else []
                self.csv.writerow([row["path"], row["class"], f"{row['prob']:.6f}", *top,
                                   *(f"{p:.6f}" for p in row["probs"].values())])
            else:
                row["top_k"] = [{"class": c, "prob": p} for c, p in row["top_k"]]
                self.f.write(json.dumps(row) + "\n")
        self.f.flush()


def table(rows: list[dict], top_k: int) -> str:
    """A few predictions as an aligned text table, for the terminal."""
    if not rows:
        return "no image could be read"
    width = max(len(r["path"]) for r in rows)
    lines = [f"{'image':<{width}}  {'class':<10} prob" + ("   top" if top_k > 1 else "")]
    for r in rows:
        top = "   " + " ".join(f"{c}:{p:.3f}" for c, p in r["top_k"]) if top_k > 1 else ""
        lines.append(f"{r['path']:<{width}}  {r['class']:<10} {r['prob']:.3f}{top}")
    return "\n".join(lines)
