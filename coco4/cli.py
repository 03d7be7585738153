"""What a user meets at the command line: the runner every entry script uses (an error is one
line and an exit status, not a traceback), and the checks and help texts several scripts'
options share."""
import argparse
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable

from .errors import Coco4Error
from .fileio import printable


class Terminated(BaseException):
    """SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt: the blocks
    that clean up (a temporary file removed, a partial file kept) run on the way out."""


def _terminate(signum, frame):
    raise Terminated


def run(main: Callable, parser: argparse.ArgumentParser, argv: list | None = None) -> None:
    """Parse ``argv``, call ``main(args)``, and exit with its status (an int return, or 0).
    A Coco4Error is one line and its status; so are Ctrl-C (130) and SIGTERM (143) wherever
    they land, where the command has no graceful stop of its own (train.py and predict.py
    have: they finish a step or a batch and say what they saved)."""
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: the signal is not ours to handle
        previous = None
    try:
        status = main(args)
    except Coco4Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        # any path a user gives meets Path.exists() somewhere first, which raises on a name
        # too long instead of answering False: one answer here, for every script
        print(f"error: {printable_path(e.filename)}: a name in this path is longer than the "
              "file system allows (255 bytes a folder or file name, 4,096 the whole path); "
              "shorten it", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Terminated) as e:
        signum = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
        print(f"error: stopped by {signal.Signals(signum).name}; no file was left half-written "
              "under its final name", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(status if isinstance(status, int) else 0)


@contextlib.contextmanager
def quiet_startup(name: str):
    """Around a script's imports (torch's take seconds): Ctrl-C there is the documented line
    and exit 130, not a traceback from inside an import. ``name``: the script's __name__;
    imported as a module (the tests), an interrupt is left as it is."""
    try:
        yield
    except KeyboardInterrupt:
        if name != "__main__":
            raise
        print("error: stopped by SIGINT while starting; nothing was written", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def default_workers() -> int:
    """Image-decoding processes: one per core, at most 8 (JPEG decoding stops scaling there)."""
    return min(8, os.cpu_count() or 1)


def workers_problem(workers: int) -> str | None:
    """What is wrong with ``--workers``, if anything. Far more processes than cores only slow
    decoding down, and thousands of them exhaust the machine's process and file limits."""
    most = max(64, os.cpu_count() or 1)
    if not 0 <= workers <= most:
        return (f"--workers must be between 0 and {most} (64, or this machine's core count if "
                f"larger), got {workers}")
    return None


DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda, cuda:N (GPU N) or mps (Apple GPUs)"


def check_at_least(args: object, **least: int) -> None:
    """Each named option at least its bound: ``check_at_least(opts, batch_size=1)``."""
    for name, bound in least.items():
        value = getattr(args, name)
        if value < bound:
            raise Coco4Error(f"--{name.replace('_', '-')} must be at least {bound}, got {value}")


def check_fraction(flag: str, value: float | None) -> None:
    """A value in [0, 1]; 95 for 95% would be a bar nothing passes: say what was meant."""
    if value is not None and not 0 <= value <= 1:  # nan fails both comparisons
        hint = f"; it is a fraction: for {value:g}% pass {value / 100:g}" if 1 < value <= 100 \
            else ""
        raise Coco4Error(f"{flag} must be between 0 and 1, got {value}{hint}")


def printable_path(path, most: int = 120) -> str:
    """A path for a one-line message: fileio.printable's text (undecodable bytes escaped),
    shortened in its middle past ``most`` characters."""
    text = printable(os.fsdecode(path)) if path is not None else "a path"
    return text if len(text) <= most else f"{text[:most // 2]}...{text[-most // 2:]}"
