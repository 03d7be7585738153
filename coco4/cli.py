"""What a user meets at the command line: the one error type, shown as one line with an exit
status instead of a traceback, the runner every entry script uses, and the arguments that
evaluate.py and visualize.py share (which checkpoint, which list, which images)."""
import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path


class Coco4Error(Exception):
    """A problem with the user's input or environment, phrased as what was wrong and what to do.

    The entry scripts print it as ``error: <message>`` and exit with ``exit_code``; library code
    raises it and never prints, so tests and the notebook can catch it.
    """

    exit_code = 2


class GateFailed(Coco4Error):
    """A quality gate (``evaluate.py --min-class-acc``) was not met: exit 1, like a failing test."""

    exit_code = 1


def run(main: Callable, parser: argparse.ArgumentParser, argv: list | None = None) -> None:
    """Parse ``argv``, call ``main(args)``, and exit with its status (an int return, or 0)."""
    args = parser.parse_args(argv)
    try:
        status = main(args)
    except Coco4Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(status if isinstance(status, int) else 0)


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


def add_source_args(p: argparse.ArgumentParser, default_split: str = "val") -> None:
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoint/best.pt"),
                   help="a train.py checkpoint, or the original project's")
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="lists from annotation_prepare.py")
    p.add_argument("--coco-root", type=Path, default=Path("coco"), help="COCO folder")
    p.add_argument("--list", type=Path, default=None,
                   help=f"image list (default: DATA_DIR/annotation_{default_split}.txt)")
    p.add_argument("--images", type=Path, default=None,
                   help=f"image folder (default: COCO_ROOT/images/{default_split}2017)")
    p.add_argument("--batch-size", type=int, default=128, help="images per prediction batch")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16, or fp16 where bf16 is emulated)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="image-decoding processes")
    add_calibration_arg(p)
    add_tta_arg(p)
    p.add_argument("--data-path", choices=("fast", "pil"), default="fast",
                   help="fast: decoded-image cache; pil: decode every image each time")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: DATA_DIR/cache")
    p.add_argument("--strict", action="store_true",
                   help="stop on a missing or unreadable image instead of leaving it out")


def add_calibration_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", action=argparse.BooleanOptionalAction, default=True,
                   help="divide the logits by the checkpoint's temperature (fitted on the "
                        "held-out validation split); --no-calibration for raw probabilities")


def add_tta_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", choices=("none", "flip"), default="none",
                   help="test-time augmentation: flip averages the probabilities of each image "
                        "and its mirror (twice the model's work)")


def check_at_least(args: argparse.Namespace, **least: int) -> None:
    """Each named argument at least its bound: ``check_at_least(args, batch_size=1)``."""
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


def first_line(error: BaseException) -> str:
    """An exception's first non-empty line (libraries' messages run to pages), or its type."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()),
                type(error).__name__)


def resolve_sources(args: argparse.Namespace, split: str = "val") -> tuple[Path, Path, Path]:
    """(list path, image folder, cache folder) with the defaults filled in; arguments checked."""
    check_at_least(args, batch_size=1, **({"num": 1} if hasattr(args, "num") else {}))
    if workers_problem(args.workers):
        raise Coco4Error(workers_problem(args.workers))
    list_path = args.list or args.data_dir / f"annotation_{split}.txt"
    images = args.images or args.coco_root / "images" / f"{split}2017"
    cache_dir = args.cache_dir or args.data_dir / "cache"
    return list_path, images, cache_dir


def default_out_dir(args: argparse.Namespace, name: str) -> Path:
    return args.out_dir or Path(args.checkpoint).parent / name
