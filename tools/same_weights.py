"""Does a refactor keep the recipe's results? Trains the same short runs with this working tree
and with an earlier commit, on the same generated data, and compares every tensor of their
checkpoints (weights, optimizer and scheduler state) and their metrics, bit for bit.

    python -m tools.same_weights --against e49943c        # the default recipe and its options
    python -m tools.same_weights --against HEAD~3 --case default

Each case is train.py's defaults (ResNet-50, Adam, ReduceLROnPlateau, ...) with only what a
CPU and generated data need (--device cpu --weights none --image-size 32 --epochs 2) and the
case's own flags. The commit is checked out into a temporary git worktree.
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from coco4 import cli
from coco4.synthetic import make_synthetic_coco

REPO = Path(__file__).resolve().parents[1]
COMMON = ("--device", "cpu", "--weights", "none", "--image-size", "32", "--epochs", "2",
          "--batch-size", "16", "--workers", "0")
CASES = {"default": (), "balance-loss": ("--balance", "loss"),
         "balance-sampler": ("--balance", "sampler"), "accum-steps": ("--accum-steps", "2"),
         "pil": ("--data-path", "pil"), "select-by": ("--select-by", "macro_f1")}
# what differs between two runs of the same recipe: the clock, the library versions, and where
# the files were (coco4 stores the recipe and the run options apart since #30)
NOT_COMPARED = ("seconds", "images_per_s", "versions", "run_options", "config")


def train(tree: Path, data: Path, out: Path, flags: tuple) -> None:
    subprocess.run([sys.executable, "train.py", "--coco-root", str(data / "coco"),
                    "--data-dir", str(data / "data"), "--output-dir", str(out), *COMMON, *flags],
                   cwd=tree, check=True, capture_output=True)


def differences(a, b, where: str = "") -> list[str]:
    """Where two checkpoints' contents differ (tensors bit for bit). At the top level a key
    only one side has is left to the caller (a field added or dropped since); below it, a key
    the commit's side has and this tree's lacks is a difference."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        # a key only the newer side has is a field the commit did not write yet; one only the
        # commit's, a field dropped since (best.pt's training state, #34): ``dropped`` says so
        keys = (set(a) & set(b) if not where.count("/") else set(a)) - set(NOT_COMPARED)
        return [d for k in sorted(keys, key=str)
                for d in differences(a.get(k), b.get(k), f"{where}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def compare(against: str, cases: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_synthetic_coco(tmp / "data" / "coco", num_train=80, num_val=20, seed=5,
                            image_sizes=((64, 48), (48, 64)), progress=False,
                            lists_dir=tmp / "data" / "data")
        old = tmp / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), against], cwd=REPO,
                       check=True, capture_output=True)
        try:
            results = {}
            for case in cases:
                for name, tree in (("old", old), ("new", REPO)):
                    train(tree, tmp / "data", tmp / case / name, CASES[case])
                diffs, dropped = [], []
                for file in ("last.pt", "best.pt"):
                    a, b = (torch.load(tmp / case / n / file, weights_only=True)
                            for n in ("old", "new"))
                    dropped += [f"{file}/{k}" for k in sorted(set(a) - set(b))]
                    # a setting the commit did not have yet is compared by the weights alone
                    common = set(a["config"]) & set(b["config"])
                    diffs += differences(a, b, file) + [
                        f"{file}/config/{k}" for k in sorted(common)
                        if a["config"][k] != b["config"][k]]
                results[case] = diffs
                shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4
                                                 else "")
                print(f"{case:16} {'DIFFERENT: ' + shown if diffs else 'identical'}"
                      + (f" (fields no longer written: {', '.join(dropped)})" if dropped else ""))
            return results
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                           capture_output=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Compare this tree's training results with a "
                                "commit's, bit for bit.")
    p.add_argument("--against", required=True, help="the commit to compare with")
    p.add_argument("--case", nargs="+", choices=tuple(CASES), default=list(CASES),
                   help="which runs (default: all)")
    return p


def main(args: argparse.Namespace) -> int:
    results = compare(args.against, args.case)
    return 0 if not any(results.values()) else 1


if __name__ == "__main__":
    cli.run(main, get_args_parser())
