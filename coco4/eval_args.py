"""Arguments evaluate.py and visualize.py share: which checkpoint, which list, which images."""
from pathlib import Path

from .config import default_workers
from .errors import Coco4Error


def add_source_args(p, default_split="val"):
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoint/best.pt"),
                   help="a train.py checkpoint, or the original project's")
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="lists from annotation_prepare.py")
    p.add_argument("--coco-root", type=Path, default=Path("coco"), help="COCO folder")
    p.add_argument("--list", type=Path, default=None,
                   help=f"image list (default: DATA_DIR/annotation_{default_split}.txt)")
    p.add_argument("--images", type=Path, default=None,
                   help=f"image folder (default: COCO_ROOT/images/{default_split}2017)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--data-path", choices=("fast", "pil"), default="fast",
                   help="fast: decoded-image cache; pil: decode every image each time")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: DATA_DIR/cache")
    p.add_argument("--strict", action="store_true",
                   help="stop on a missing or unreadable image instead of leaving it out")


def resolve_sources(args, split="val"):
    """(list path, image folder, cache folder) with the defaults filled in; arguments checked."""
    for name in ("batch_size", "num"):
        if getattr(args, name, 1) < 1:
            raise Coco4Error(f"--{name.replace('_', '-')} must be at least 1, got "
                             f"{getattr(args, name)}")
    if args.workers < 0:
        raise Coco4Error(f"--workers must be 0 or more, got {args.workers}")
    list_path = args.list or args.data_dir / f"annotation_{split}.txt"
    images = args.images or args.coco_root / "images" / f"{split}2017"
    cache_dir = args.cache_dir or args.data_dir / "cache"
    return list_path, images, cache_dir


def default_out_dir(args, name):
    return args.out_dir or Path(args.checkpoint).parent / name
