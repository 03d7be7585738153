"""Benchmark: the original input pipeline vs the fast path, and training images/s on a device.

    python -m coco4.bench                                    # generated 640x480 JPEGs, this machine
    python -m coco4.bench --device cuda --batch-size 2048 --num-images 4600 --json bench.json
    python -m coco4.bench --list data/annotation_train.txt --images coco/images/train2017

Measured in one run on the same images: (1) input pipeline images/s: the original project's
PIL DataLoader configuration (one batch per worker), the same PIL transforms at a fair
configuration (64 images per worker batch), and the fast path (cache build counted
separately); (2) training-step images/s, fed by each pipeline and by random tensors already
on the device (the model-only ceiling); (3) peak host and GPU memory. ``--load N`` keeps N
busy processes running meanwhile: the figures of a machine that is not quiet.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import cli
from .config import RECIPES, Recipe, TrainConfig
from .data import cache
from .data.lists import read_list, write_list
from .data.loaders import BatchPlan, CachedBatches, PilBatches
from .distributed import DistEnv, pick_device
from .fileio import atomic_write_text, check_writable
from .inference import Amp
from .model import ARCHITECTURES, DEFAULT_ARCH, build_model
from .options import HelpFormatter
from .seeding import generator
from .synthetic import CASES
from .training import (
    TrainingParts,
    build_batch_transform,
    build_criterion,
    build_model_ema,
    build_optimizer,
    build_scheduler,
    train_step,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark the input pipelines and training speed.",
                                formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", help=cli.DEVICE_HELP)
    p.add_argument("--workers", type=int, default=cli.default_workers(),
                   help="image-decoding processes")
    p.add_argument("--arch", choices=tuple(ARCHITECTURES), default=DEFAULT_ARCH, help="backbone")
    p.add_argument("--epochs", type=int, default=2,
                   help="pipeline epochs timed (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch")
    p.add_argument("--image-size", type=int, default=224, help="crop size")
    p.add_argument("--num-images", type=int, default=512, help="generated images (no --list)")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps per feed")
    p.add_argument("--list", type=Path, default=None,
                   help="benchmark on this list (default: generated images) ...")
    p.add_argument("--images", type=Path, default=None, help="... and this image folder")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="generated data and cache (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None,
                   help="write the figures here (default: not written)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA")
    p.add_argument("--load", type=int, default=0,
                   help="busy processes kept running during the timings: a machine that is "
                        "not quiet, as users' rarely are")
    return p


def _source(args, work):
    if args.list:
        return read_list(args.list), args.images
    from .synthetic import COCO_SIZES, make_synthetic_coco

    make_synthetic_coco(work / "coco", args.num_images, 8, seed=0, image_sizes=COCO_SIZES,
                        progress=True)
    images = work / "coco" / "images" / "train2017"
    files = sorted(p.name for p in images.iterdir())[: args.num_images]
    write_list(work / "bench.txt", files, [i % 4 for i in range(len(files))])
    return read_list(work / "bench.txt"), images


def _time_epochs(batches, epochs, device, transform=None):
    """Images per second over ``epochs`` passes, after one untimed warm-up pass (every batch
    shape, cuDNN's and the allocator's first calls) that the GPU has finished; ``transform``:
    a batch transform applied to each batch, as training applies it."""
    for x, y in batches.iterate(0):
        if transform is not None:
            transform(x, y, generator(0, "bench"))
    _sync(device)
    count, tic = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        for step, (x, y) in enumerate(batches.iterate(epoch)):
            if transform is not None:
                transform(x, y, generator(0, "bench", epoch, step))
            count += len(y)
    _sync(device)
    return count / (time.perf_counter() - tic)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_training(parts, feed, steps, device):
    """Images per second of full training steps, one warm-up step first."""
    parts.model.train()
    count, tic = 0, None
    for i, (x, y) in enumerate(feed()):
        if parts.batch_transform is not None:  # as train_one_epoch applies it
            x, y = parts.batch_transform(x, y, generator(0, "bench", i))
        train_step(parts, x, y)
        if i == 0:
            _sync(device)
            tic = time.perf_counter()
        else:
            count += len(y)
        if i == steps:
            break
    _sync(device)
    return count / (time.perf_counter() - tic) if count else None


class Concatenated:
    """The original transforms at a fair configuration: DataLoader batches of ``PIL_BATCH``
    images, one per worker at a time, joined into the training batch. At batch 2048 the
    original configuration gives each worker a whole batch, so an epoch of three batches keeps
    only three workers decoding, however many there are."""

    def __init__(self, small: PilBatches, join: int):
        self.small, self.join, self.plan = small, join, small.plan

    def __len__(self):
        return -(-len(self.small) // self.join)

    def iterate(self, epoch):
        parts = []
        for part in self.small.iterate(epoch):
            parts.append(part)
            if len(parts) == self.join:
                yield _joined(parts)
                parts = []
        if parts:
            yield _joined(parts)


def _joined(parts):
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


PIL_BATCH = 64


def _forever(batches):
    epoch = 0
    while True:
        yield from batches.iterate(epoch)
        epoch += 1


def run_benchmark(args: argparse.Namespace, progress: bool = True) -> dict:
    device = pick_device(args.device, DistEnv())
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        image_list, image_dir = _source(args, work)
        n, idx = len(image_list), list(range(len(image_list)))
        plan = BatchPlan(args.batch_size, device, args.image_size, train=True)
        original = PilBatches(image_list, image_dir, idx, plan, args.workers)
        small = dataclasses.replace(plan, batch_size=min(PIL_BATCH, args.batch_size))
        fair = Concatenated(PilBatches(image_list, image_dir, idx, small, args.workers),
                            max(1, args.batch_size // PIL_BATCH))
        tic = time.perf_counter()
        built = cache.load_or_build(image_list, image_dir, args.image_size, work / "cache",
                                    args.workers, progress)
        build_s = time.perf_counter() - tic
        images = built.tensor()
        if device.type == "cuda":
            images = images.to(device)
        fast = CachedBatches(images, image_list.labels, idx, plan)
        figures = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda"
                                 else f"cpu ({os.cpu_count()} cores)"),
                   "images": n, "batch_size": args.batch_size, "image_size": args.image_size,
                   "workers": args.workers, "load": args.load,
                   "threads": torch.get_num_threads(),
                   "pipeline": {"original_img_s": _time_epochs(original, args.epochs, device),
                                "pil_fair_img_s": _time_epochs(fair, args.epochs, device),
                                "cache_build_img_s": n / build_s,
                                "fast_img_s": _time_epochs(fast, args.epochs, device),
                                "fast_modern_img_s": _time_epochs(
                                    fast, args.epochs, device,
                                    build_batch_transform(_modern(args), 4))}}
        figures["train"] = _train_figures(args, device, original, fair, fast)
    figures["memory"] = _memory(device)
    return figures


def _train_figures(args, device, original, fair, fast):
    torch.manual_seed(0)
    model = build_model(args.arch, 4).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    amp = Amp.for_device(device, args.amp)
    recipe = Recipe(arch=args.arch, batch_size=args.batch_size, image_size=args.image_size)
    optimizer = build_optimizer(recipe, model)  # the recipe train.py runs, from its builders
    parts = TrainingParts(model, optimizer, build_scheduler(recipe, optimizer, len(fast)),
                          build_criterion(recipe), amp, amp.scaler())
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    y = torch.randint(0, 4, (args.batch_size,), device=device)
    ceiling = lambda: iter([(x, y)] * (args.train_steps + 1))
    figures = {name: _time_training(parts, feed, args.train_steps, device)
               for name, feed in (("ceiling_img_s", ceiling),
                                  ("fast_img_s", lambda: _forever(fast)),
                                  ("pil_fair_img_s", lambda: _forever(fair)),
                                  ("original_img_s", lambda: _forever(original)))}
    modern = _modern(args)
    optimizer = build_optimizer(modern, model)
    parts = TrainingParts(model, optimizer, build_scheduler(modern, optimizer, len(fast)),
                          build_criterion(modern), amp, amp.scaler(),
                          batch_transform=build_batch_transform(modern, 4),
                          ema=build_model_ema(modern, model))
    figures["fast_modern_img_s"] = _time_training(parts, lambda: _forever(fast),
                                                  args.train_steps, device)
    return figures


def _modern(args) -> Recipe:
    """--recipe modern at the benchmark's size: its per-image transforms, mixing, loss,
    schedule and model EMA, from train.py's builders."""
    # timed past its warmup: there the model EMA averages (in the warmup it only copies)
    return Recipe(arch=args.arch, batch_size=args.batch_size, image_size=args.image_size,
                  **{**RECIPES.sets["modern"], "lr_warmup_epochs": 0})


def _memory(device):
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"host_peak_mb": host_peak_mb(), "gpu_peak_mb": gpu}


def host_peak_mb() -> float | None:
    """Peak resident memory of this process or its largest ended child (the DataLoader
    workers), in MiB; None where the ``resource`` module is missing (Windows), so the table
    says it was not measured instead of the benchmark failing to start."""
    try:
        import resource
    except ImportError:
        return None
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB else


def format_table(f: dict) -> str:
    p, t, m = f["pipeline"], f["train"], f["memory"]
    fmt = lambda v: "n/a" if v is None else f"{v:,.0f}"
    rows = [("input pipeline, the original project's configuration", p["original_img_s"]),
            (f"input pipeline, PIL at {PIL_BATCH} images per worker batch", p["pil_fair_img_s"]),
            ("input pipeline, fast path (per epoch, cache built)", p["fast_img_s"]),
            ("cache build (once)", p["cache_build_img_s"]),
            ("training step, the original project's configuration", t["original_img_s"]),
            (f"training step, PIL at {PIL_BATCH} per worker batch", t["pil_fair_img_s"]),
            ("training step, fast path", t["fast_img_s"]),
            ("input pipeline, fast path + --recipe modern's transforms",
             p.get("fast_modern_img_s")),
            ("training step, fast path, --recipe modern", t.get("fast_modern_img_s")),
            ("training step, model only (ceiling)", t["ceiling_img_s"])]
    load = f"; {f['load']} busy processes running" if f.get("load") else "; quiet"
    lines = [f"device: {f['device']}; {f['images']} images, batch {f['batch_size']}, "
             f"{f['image_size']} px, {f['workers']} workers, {f.get('threads')} torch "
             f"threads{load}", f"{'what':<56}{'images/s':>12}"]
    lines += [f"{name:<56}{fmt(v):>12}" for name, v in rows]
    gpu = "n/a" if m["gpu_peak_mb"] is None else f"{m['gpu_peak_mb']:,.0f} MB"
    host = ("not measured (no resource module on this platform)" if m["host_peak_mb"] is None
            else f"{m['host_peak_mb']:,.0f} MB")
    lines.append(f"fast input pipeline: {p['fast_img_s'] / p['original_img_s']:.1f}x the "
                 f"original configuration, {p['fast_img_s'] / p['pil_fair_img_s']:.1f}x PIL at "
                 f"{PIL_BATCH} per worker batch; peak host memory {host}; "
                 f"peak GPU memory {gpu}")
    if t.get("fast_modern_img_s") and t["fast_img_s"]:
        lines.append(f"--recipe modern: {t['fast_modern_img_s'] / t['fast_img_s']:.1%} of the "
                     "default recipe's training images/s on the fast path")
    return "\n".join(lines)


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` processes that each keep a core busy until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main(args: argparse.Namespace) -> dict:
    TrainConfig(batch_size=args.batch_size, image_size=args.image_size, epochs=args.epochs,
                workers=args.workers)  # the same argument checks as train.py
    generated = 0 if args.list else len(CASES)  # the generator's least: one image per case
    cli.check_at_least(args, load=0, train_steps=0, num_images=generated)
    for path in (args.json.parent if args.json else None, args.work_dir):
        if path is not None:  # before the minutes of timing, not after
            check_writable(path)
    with busy_processes(args.load):
        figures = run_benchmark(args)
    print(format_table(figures))
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    cli.run(main, get_args_parser())
