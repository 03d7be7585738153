"""Decode every image once into a memory-mapped uint8 cache at the protocol's pre-crop size.

The original pipeline decoded each 640x480 JPEG and resized it every epoch; here a list is
decoded once, in parallel, and every later epoch (and run) reads a flat uint8 array. The cache
file's name carries a hash of the list's file names, the pre-crop size and each image's size,
mtime and first and last 4 KB, so a changed list or image builds a new cache instead of
serving stale pixels.
"""
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import Coco4Error
from ..fileio import atomic_path, atomic_write_text, check_writable, remove_stale_temporaries
from .images import image_paths, probe
from .lists import ImageList
from .loaders import ignore_sigint
from .transforms import pil_resize, precrop_size


@dataclass
class ImageCache:
    """``images[i]`` is image i of the list as uint8 HWC (PIL's own layout, and the one torch's
    uint8 resize is fastest on); ``bad`` maps the index of each image that could not be used to
    why (missing or unreadable); their rows are zeros."""

    images: np.ndarray
    bad: dict
    path: Path

    def tensor(self) -> torch.Tensor:
        """NCHW-shaped view of the NHWC array: channels_last strides, no copy."""
        return torch.from_numpy(self.images).permute(0, 3, 1, 2)


def cache_key(paths: list[Path], size: int) -> str:
    """A hash of the pre-crop size and, for each image, its name, size, modification time and
    first and last ``EDGE`` bytes: an image replaced by another of the same size and time (a
    copy that keeps times, a restored backup) changes the key too, as JPEG headers and ends
    differ between images. Measured: 15-20 ms per 512 files in the page cache, 280-470 ms
    cold (after dropping it), on the development VM."""
    h = hashlib.sha1(f"v3 {size}".encode())  # v3: content edges; v2: NHWC layout
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p.name} {st.st_size} {st.st_mtime_ns}\n".encode())
            if stat.S_ISREG(st.st_mode):  # a FIFO is never opened
                with open(p, "rb") as f:
                    h.update(f.read(EDGE))
                    f.seek(max(0, st.st_size - EDGE))
                    h.update(f.read(EDGE))
        except (OSError, ValueError) as e:  # missing, a symlink loop, a name too long, ...
            h.update(f"{p.name} {type(e).__name__}\n".encode())
    return h.hexdigest()[:16]


EDGE = 4096


def cache_file(image_list: ImageList, image_dir: str | Path, image_size: int,
               cache_dir: str | Path) -> tuple[Path, list[Path], int]:
    paths = image_paths(image_list, image_dir)
    size = precrop_size(image_size)
    key = cache_key(paths, size)
    return Path(cache_dir) / f"{image_list.path.stem}-{size}px-{key}.u8", paths, size


def load_or_build(image_list: ImageList, image_dir: str | Path, image_size: int,
                  cache_dir: str | Path, workers: int = 0, progress: bool = True) -> ImageCache:
    """Return the list's ImageCache, building it first if no valid one exists."""
    path, paths, size = cache_file(image_list, image_dir, image_size, cache_dir)
    meta = _valid_meta(path, len(paths), size)
    if meta is None and not _writable(cache_dir):
        # a read-only dataset mount holding data/: the user's own cache folder instead
        fallback = user_cache_dir()
        tqdm.write(f"warning: cannot write the image cache to {cache_dir}; using {fallback} "
                   "(--cache-dir chooses another folder)")
        check_writable(fallback)
        cache_dir = fallback
        path = Path(cache_dir) / path.name
        meta = _valid_meta(path, len(paths), size)
    if meta is None:
        if Path(cache_dir).is_dir():
            remove_stale_temporaries(cache_dir, tqdm.write)
        meta = _write_cache(path, paths, size, workers, progress)
    # copy-on-write mapping: torch gets a writable view without ever writing to the file
    images = np.memmap(path, dtype=np.uint8, mode="c", shape=(len(paths), size, size, 3))
    return ImageCache(images, {int(i): why for i, why in meta["bad"].items()}, path)


def user_cache_dir() -> Path:
    """This user's cache folder for coco4: $XDG_CACHE_HOME/coco4, or ~/.cache/coco4."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "coco4"


def _writable(folder) -> bool:
    try:
        check_writable(folder)
        return True
    except Coco4Error:
        return False


def _valid_meta(path: Path, count: int, size: int) -> dict | None:
    """The cache's metadata when the cache and its JSON are whole and agree with the list;
    None (with a warning when something is there but damaged) when it must be built again."""
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    expected = count * size * size * 3
    problem = None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        bad = {int(i): str(why) for i, why in meta["bad"].items()}
        if (meta["size"], meta["count"]) != (size, count) or any(
                not 0 <= i < count for i in bad):
            problem = f"{meta_path.name} describes another list"
        elif path.stat().st_size != expected:
            problem = f"{path.stat().st_size:,} bytes where {expected:,} belong"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        problem = f"unreadable {meta_path.name} ({type(e).__name__})"
    if problem:
        tqdm.write(f"warning: the image cache {path} is damaged ({problem}); building it again")
        return None
    return meta


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image, why = probe(self.paths[i])
        if image is None:
            return i, why
        # a tensor, not a numpy array: DataLoader hands tensors over in shared memory
        return i, torch.from_numpy(np.asarray(pil_resize(image, self.size)).copy())


def _write_cache(path, paths, size, workers, progress):
    path.parent.mkdir(parents=True, exist_ok=True)
    bad = {}
    loader = torch.utils.data.DataLoader(_DecodeDataset(paths, size), batch_size=32,
                                         num_workers=workers, collate_fn=list,
                                         worker_init_fn=ignore_sigint)
    with atomic_path(path) as tmp:
        # reserve the whole file first: writing through a memory map into a sparse file on a
        # full disk is a SIGBUS that kills the process without a word; this is an OSError,
        # which atomic_path turns into a one-line error after removing the partial file
        with open(tmp, "r+b") as f:  # (a list is never empty: read_list refuses one)
            os.posix_fallocate(f.fileno(), 0, len(paths) * size * size * 3)
        images = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(len(paths), size, size, 3))
        with tqdm(total=len(paths), desc=f"caching {path.name}", unit="img",
                  disable=not progress) as bar:
            for batch in loader:
                for i, array in batch:
                    if isinstance(array, str):
                        bad[i] = array
                    else:
                        images[i] = array.numpy()
                bar.update(len(batch))
        images.flush()
        del images
    meta = {"size": size, "count": len(paths), "bad": bad}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
    _remove_stale(path)
    return meta


def _remove_stale(path):
    """Delete older caches of the same list and size: each can be a gigabyte."""
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(prefix + "*"):
        if old.stem != path.stem and old.suffix in (".u8", ".json"):
            old.unlink(missing_ok=True)
