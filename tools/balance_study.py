"""Class balance measured on the demo: ``train.py --balance none``, ``sampler`` and ``loss`` on
an imbalanced synthetic set (a third as many boats by default), each over several seeds, then
a markdown table of worst-class and overall test accuracy, mean and standard deviation.

    python -m tools.balance_study --out /tmp/balance-runs   # the README's table
    python -m tools.balance_study --out /tmp/quick --seeds 0 --epochs 2   # a smoke run

Each run is ``python -m coco4.demo --class-ratios R --balance B --seed S --no-visualize`` with
the settings below, in OUT/B-seedS; a run whose metrics.json exists is read, not run again.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

from coco4 import cli, demo
from coco4.config import BALANCE_MODES
from coco4.options import HelpFormatter


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Compare --balance modes on imbalanced demo data.",
                                formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="one demo folder per run, and table.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="data, split, initialisation and order seeds, one run each")
    p.add_argument("--class-ratios", default="1,1,1,0.33", help="bird,airplane,train,boat")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=200, help="the test set, balanced")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--workers", type=int, default=2)
    return p


def run_one(args: argparse.Namespace, balance: str, seed: int) -> dict:
    """One demo run's test metrics (and its wall time), run now or read from an earlier run."""
    out = args.out / f"{balance}-seed{seed}"
    done = out / "eval" / "metrics.json"
    if not done.exists():
        tic = time.perf_counter()
        demo.main(demo.get_args_parser().parse_args([
            "--out", str(out), "--class-ratios", args.class_ratios, "--balance", balance,
            "--seed", str(seed), "--epochs", str(args.epochs), "--num-train", str(args.num_train),
            "--num-val", str(args.num_val), "--image-size", str(args.image_size),
            "--arch", args.arch, "--workers", str(args.workers), "--no-visualize"]))
        (out / "seconds.txt").write_text(f"{time.perf_counter() - tic:.0f}\n")
    metrics = json.loads(done.read_text())
    seconds = out / "seconds.txt"
    metrics["seconds"] = float(seconds.read_text()) if seconds.exists() else float("nan")
    return metrics


def spread(values: list[float]) -> str:
    """Mean ± sample standard deviation in percent, and the per-seed values."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    each = " / ".join(f"{v:.1%}" for v in values)
    return f"{statistics.mean(values):.1%} ± {sd:.1%} ({each})"


def table(results: dict) -> str:
    rows = ["| --balance | worst-class test accuracy | test accuracy | boat test accuracy |"
            " seconds per run |", "|---|---|---|---|---|"]
    for balance, runs in results.items():
        worst = [m["min_class_accuracy"] for m in runs]
        overall = [m["accuracy"] for m in runs]
        boat = [m["per_class_accuracy"]["boat"] for m in runs]
        seconds = statistics.mean(m["seconds"] for m in runs)
        rows.append(f"| {balance} | {spread(worst)} | {spread(overall)} | {spread(boat)} | "
                    f"{seconds:.0f} |")
    return "\n".join(rows) + "\n"


def main(args: argparse.Namespace) -> str:
    cli.check_at_least(args, epochs=1)
    results = {b: [] for b in BALANCE_MODES}
    for seed in args.seeds:  # seed by seed: a study stopped early still compares all modes
        for balance in BALANCE_MODES:
            results[balance].append(run_one(args, balance, seed))
    text = table(results)
    (args.out / "table.md").write_text(text)
    print(f"\nseeds {args.seeds}, --class-ratios {args.class_ratios}, {args.epochs} epochs, "
          f"{args.num_train} train / {args.num_val} test images generated, {args.image_size} px, "
          f"{args.arch}:\n\n{text}")
    return text


if __name__ == "__main__":
    cli.run(main, get_args_parser())
