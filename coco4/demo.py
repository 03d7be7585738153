"""The whole workflow on generated COCO-format data, on the CPU, in a few minutes.

    python -m coco4.demo                     # everything under runs/demo/
    python -m coco4.demo --out /tmp/demo --epochs 3 --num-train 120   # a shorter run
    python -m coco4.demo --class-ratios 1,1,1,0.33 --balance sampler  # a third as many boats

Generates a small synthetic dataset in COCO's layout, then runs what annotation_prepare.py,
train.py, evaluate.py and visualize.py run on it (the same package functions, each step shown
as the command line that does the same).
"""
import argparse
import dataclasses
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import cli
from .annotation_lists import ListsOptions, make_lists
from .config import BALANCE_MODES, TrainConfig
from .data.other_class import HELD_OUT_NEGATIVES, SEEN_NEGATIVES
from .evaluation import EvaluateOptions, evaluate_checkpoint
from .model import ARCHITECTURES, DEFAULT_ARCH
from .options import HelpFormatter, to_argv
from .pictures import PictureOptions, draw_pictures
from .synthetic import make_synthetic_coco, parse_ratios
from .trainer import fit


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run the coco4 workflow on generated demo data.",
                                formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="everything goes here")
    p.add_argument("--num-train", type=int, default=500, help="generated train2017 images")
    p.add_argument("--num-val", type=int, default=120, help="generated val2017 images")
    p.add_argument("--epochs", type=int, default=30, help="train.py --epochs")
    p.add_argument("--image-size", type=int, default=48, help="small: this runs on a CPU")
    p.add_argument("--batch-size", type=int, default=64, help="train.py --batch-size")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="higher than the recipe's 1e-4: the demo starts from random weights")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="a larger held-out share than the recipe's 0.1: the demo set is small")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--seed", type=int, default=0,
                   help="the generated data's and train.py's --seed")
    p.add_argument("--class-ratios", default=None,
                   help="train2017's share of each class (bird,airplane,train,boat), e.g. "
                        "1,1,1,0.33 for a third as many boats; the test set stays balanced")
    p.add_argument("--balance", choices=BALANCE_MODES, default="none",
                   help="train.py --balance: none, sampler or loss")
    p.add_argument("--arch", choices=tuple(ARCHITECTURES), default=DEFAULT_ARCH,
                   help="train.py --arch (resnet18 trains several times faster on a CPU)")
    p.add_argument("--visualize", action=argparse.BooleanOptionalAction, default=True,
                   help="run visualize.py too (--no-visualize for measurements)")
    p.add_argument("--other", type=int, default=None, metavar="N",
                   help="annotation_prepare.py --other N: a fifth class 'other' of N images of "
                        "none of the four (0: four classes, with the lists of negatives), and "
                        "evaluate.py --negatives; the data then holds images of none of the "
                        "classes too, as many as --num-train in train2017 and twice --num-val "
                        "in val2017 (default: none, four classes)")
    return p


def main(args: argparse.Namespace) -> dict:
    tic = time.perf_counter()
    out = args.out
    print(f"== generating demo COCO data in {out / 'coco'}")
    ratios = parse_ratios(args.class_ratios) if args.class_ratios else None
    make_synthetic_coco(out / "coco", args.num_train, args.num_val, seed=args.seed,
                        class_ratios=ratios, negatives=demo_negatives(args))
    data = {"coco_root": out / "coco", "data_dir": out / "data"}
    step("annotation_prepare", make_lists,
         ListsOptions(coco_root=data["coco_root"], out_dir=data["data_dir"], other=args.other))
    step("train", fit, TrainConfig(
        **{k: str(v) for k, v in data.items()}, output_dir=str(out / "checkpoint"),
        overwrite=True, device="cpu", weights="none", epochs=args.epochs,
        image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
        val_fraction=args.val_fraction, workers=args.workers, seed=args.seed,
        balance=args.balance, arch=args.arch))
    model = {**data, "checkpoint": out / "checkpoint" / "best.pt", "device": "cpu",
             "workers": args.workers}
    lists = None if args.other is None else tuple(
        data["data_dir"] / name for name in (SEEN_NEGATIVES, HELD_OUT_NEGATIVES))
    metrics = step("evaluate", evaluate_checkpoint,
                   EvaluateOptions(**model, out_dir=out / "eval", negatives=lists))
    if args.visualize:
        step("visualize", draw_pictures, PictureOptions(**model, out_dir=out / "vis"))
    _summary(out, metrics, time.perf_counter() - tic)
    return metrics


def demo_negatives(args: argparse.Namespace) -> tuple[int, int]:
    """The images of none of the classes the demo's data holds with --other: as many as
    --num-train in train2017, twice --num-val in val2017; not a function of --other's N, so
    that --other 0 and --other 100 make the same data."""
    return (0, 0) if args.other is None else (args.num_train, 2 * args.num_val)


def step(script: str, run: Callable, opts: object) -> Any:
    """Run one workflow step as the package function its script calls, showing the command
    line that does the same (the settings that are not the script's defaults)."""
    changed = [f.name for f in dataclasses.fields(opts)
               if getattr(opts, f.name) != getattr(type(opts)(), f.name)]
    print(f"\n== python {script}.py {shlex.join(to_argv(opts, changed))}", flush=True)
    return run(opts)


def _summary(out, metrics, seconds):
    per_class = ", ".join(f"{c} {a:.0%}" for c, a in metrics["per_class_accuracy"].items())
    print(f"\n== demo finished in {seconds:.0f}s: test accuracy {metrics['accuracy']:.1%} "
          f"on {metrics['num_images']} val images ({per_class}); chance is "
          f"{1 / len(metrics['classes']):.0%}")
    for what, path in (("generated COCO data", "coco/"), ("class lists", "data/"),
                       ("checkpoints, metrics.csv, tensorboard", "checkpoint/"),
                       ("evaluation (metrics.json, predictions.csv, confusion_matrix.png)",
                        "eval/"), ("pictures", "vis/")):
        if (out / path).is_dir():  # vis/ is not there with --no-visualize
            print(f"   {str(out / path):<32} {what}")


if __name__ == "__main__":
    cli.run(main, get_args_parser())
