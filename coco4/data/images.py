"""Reading images as RGB, and the dataset over (list file, image folder)."""
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from ..errors import Coco4Error
from .lists import ImageList


class UnreadableImage(Exception):
    """An image file that exists but cannot be decoded (truncated, empty, not an image)."""


def read_rgb(path: str | Path) -> Image.Image:
    """Open any image PIL can decode as an upright RGB image.

    COCO holds grayscale JPEGs and users' folders hold CMYK, palette and PNG-named-.jpg files:
    PIL sniffs the real format from the bytes, exif_transpose applies a camera's rotation, and
    convert("RGB") gives every model input three channels.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # opening a FIFO would wait forever for a writer
            raise UnreadableImage(f"{path}: not a regular file ({_kind(mode)})")
        with Image.open(path, formats=safe_formats()) as im:
            return as_rgb(im, path)
    except (FileNotFoundError, UnreadableImage):
        raise
    except Exception as e:  # decoders fail in many ways (NotImplementedError, ValueError,
        # SyntaxError, ...) and the file system too (a symlink loop, a name too long, a path
        # through a file): one image is unusable, never the run
        raise UnreadableImage(f"{path}: {e}") from e


def safe_formats() -> list[str]:
    """Every format PIL reads but EPS, whose reader hands the file to Ghostscript: a folder
    of someone else's "photos" must not run a PostScript interpreter."""
    Image.init()
    return [f for f in Image.OPEN if f != "EPS"]


def as_rgb(im: Image.Image, name) -> Image.Image:
    """An opened image as ``read_rgb`` gives it (upright, 8 bits, RGB): a file's, or one a
    program already holds (``name`` says which, in a message)."""
    im = ImageOps.exif_transpose(im)
    return _to_8_bits(im, name).convert("RGB")


def _to_8_bits(im: Image.Image, path) -> Image.Image:
    """Grayscale pixels of more than 8 bits scaled by their real range: PIL's convert("RGB")
    clips 16-bit values (a mid-grey 16-bit PNG turns white) and truncates floats in [0, 1]
    (turning them black). Integers beyond 16 bits and floats outside [0, 255] have no range
    to trust: the image is unusable, with the reason."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    values = np.asarray(im)  # its own type: a float64 copy of a 12000 x 12000 scan is 1.2 GB
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if values.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        raise UnreadableImage(f"{path}: {im.mode} pixels that are not finite numbers")
    if im.mode == "F":
        if low < 0 or high > 255:
            raise UnreadableImage(f"{path}: float pixels from {low:g} to {high:g}, neither "
                                  "in [0, 1] nor in [0, 255]")
        scale = 255 if high <= 1 else 1  # [0, 1] floats, or [0, 255] ones
    elif im.mode.startswith("I;16") or 255 < high <= 65535 and low >= 0:
        scale = 255 / 65535  # 16-bit data
    elif low >= 0 and high <= 255:
        scale = 1  # 8-bit values stored in 32-bit integers
    else:
        raise UnreadableImage(f"{path}: {im.mode} pixels from {low:g} to {high:g}, beyond "
                              "16 bits")
    return Image.fromarray(_scaled(values, scale), "L")


def _scaled(values: np.ndarray, scale: float, rows: int = 256) -> np.ndarray:
    """``round(values * scale)`` clipped to uint8, computed in float64 a band of ``rows`` rows at
    a time: the same numbers as the whole array at once, in a few megabytes."""
    out = np.empty(values.shape, np.uint8)
    for top in range(0, len(values), rows):
        band = values[top:top + rows].astype(np.float64) * scale
        out[top:top + rows] = np.clip(np.round(band), 0, 255)
    return out


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


def image_paths(image_list: ImageList, image_dir: str | Path) -> list[Path]:
    return [Path(image_dir) / name for name in image_list.files]


def check_image_dir(image_dir: str | Path) -> None:
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise Coco4Error(f"image folder {image_dir} not found; unzip COCO's train2017.zip / "
                         "val2017.zip into COCO_ROOT/images (see README) or pass --coco-root")


def probe(path: str | Path) -> tuple[Image.Image, None] | tuple[None, str]:
    """(RGB image, None) when ``path`` decodes, else (None, why it cannot be used)."""
    try:
        return read_rgb(path), None
    except FileNotFoundError:
        return None, "missing"
    except UnreadableImage as e:
        return None, f"unreadable: {str(e).split(': ', 1)[-1]}"


class _Probe(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return i, probe(self.paths[i])[1]


def find_unusable(image_list: ImageList, image_dir: str | Path, workers: int = 0,
                  progress: bool = True) -> dict[int, str]:
    """{index: why} for every listed image that is missing or does not decode, found in parallel."""
    loader = torch.utils.data.DataLoader(_Probe(image_paths(image_list, image_dir)),
                                         batch_size=32, num_workers=workers, collate_fn=list)
    bad = {}
    for batch in tqdm(loader, desc="checking images", unit="batch", disable=not progress):
        bad.update((i, why) for i, why in batch if why)
    return bad


class ListDataset(torch.utils.data.Dataset):
    """(image tensor, label) pairs for one list; the original PIL pipeline, kept for comparison."""

    def __init__(self, image_list: ImageList, image_dir: str | Path,
                 transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = image_paths(image_list, image_dir)
        self.labels = image_list.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_rgb(self.paths[i])), self.labels[i]
