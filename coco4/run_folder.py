"""A training run's output folder: one run at a time holds it, and a new run never silently
replaces another run's files.

The lock is ``flock`` on ``OUTPUT_DIR/.coco4.lock``, which holds who took it (PID, host, when).
The kernel drops the lock when its process dies, however it dies, so a lock left by a killed
run is never in the way: the next run takes it over, and says whose it was.
"""
import contextlib
import fcntl
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import Coco4Error
from .fileio import check_writable

LOCK_FILE = ".coco4.lock"
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "tensorboard")  # what a run writes here
# what evaluate.py, visualize.py and predict.py write beside a run by default (export.py: by suffix)
LATER_OUTPUTS = ("eval", "vis", "predictions")


@contextlib.contextmanager
def run_lock(folder: str | Path, say=print,
             user: tuple[str, str] = ("training run", "--output-dir")) -> Iterator[None]:
    """Hold the lock on ``folder`` for the block; another holder is a one-line error naming it
    (``user``: what holds such a lock, and the flag that chooses the folder). A folder this
    call had to create, and left holding nothing but the lock, is removed."""
    folder = Path(folder)
    check_writable(folder)
    created = [p for p in (folder, *folder.absolute().parents) if not p.exists()]
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        previous = os.pread(fd, 512, 0).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = previous or "it has not said who it is yet"
            raise Coco4Error(f"{folder} is in use by another {user[0]} ({holder}); wait "
                             f"for it to end, or choose another {user[1]}") from None
        if previous:
            say(f"{folder}: took over the lock of a run that ended without releasing it "
                f"({previous})")
        try:  # a disk so full that even these few bytes do not fit
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except OSError as e:
            raise _cannot_write(path, e) from None
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: the next run has nothing to take over
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                path.unlink()  # while still held: no other run is waiting on this file
                with contextlib.suppress(OSError):
                    for made in created:  # innermost first; stops at one that is not empty
                        made.rmdir()
    finally:
        os.close(fd)  # releases the lock


def _cannot_write(path: Path, error: OSError) -> Coco4Error:
    return Coco4Error(f"could not write {path}: {error.strerror or error}; check free disk "
                      "space and write permission")


def earlier_run(folder: str | Path, overwrite: bool) -> list[Path]:
    """An earlier run's files in ``folder``, which ``overwrite`` allows a new run to replace
    (``remove`` them once every check of the new run has passed); without it, an error."""
    folder = Path(folder)
    found = [folder / name for name in RUN_FILES if (folder / name).exists()]
    if found and not overwrite:
        names = ", ".join(p.name for p in found)
        if (folder / "last.pt").exists():
            resume = f"continue it with --resume {folder / 'last.pt'}, "
        elif (folder / "best.pt").exists():
            resume = "its last.pt is gone, so it cannot be resumed: "
        else:
            resume = "it stopped before its first checkpoint, so there is nothing to resume: "
        raise Coco4Error(f"{folder} already holds a run ({names}); {resume}choose another "
                         "--output-dir, or pass --overwrite to replace it")
    return found


def remove(paths: list[Path]) -> None:
    """Delete files and folders: an earlier run's, so that none of them (best.pt, TensorBoard
    events) is left to mix with the new run's; name what later steps wrote beside it, which
    stays (the user's) but describes the old model."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if paths:
        folder = paths[0].parent
        kept = sorted(p.name for p in folder.iterdir() if p.name.startswith(LATER_OUTPUTS)
                      or p.name.endswith((".onnx", ".torchscript.pt")))
        if kept:
            print(f"warning: --overwrite replaced the earlier run in {folder} but kept "
                  f"{', '.join(kept)}, written of its model by later steps", file=sys.stderr)
