"""Rejecting images of none of the classes, measured on the demo: the 4-class model with
``--min-prob`` (its top probability as the score) against a model with an ``other`` class (its
``1 - p(other)`` and its top known-class probability), on the same generated data, for
negatives of the kinds the ``other`` class saw and of kinds held out of it.

    python -m tools.openset_study --out /tmp/openset      # docs/calibration.md's table
    python -m tools.openset_study --out /tmp/quick --epochs 2 --num-train 120 --num-val 40

Two demo runs into OUT/four (``--other 0``: four classes) and OUT/other (``--other N``); a run
whose eval/metrics.json exists is read, not run again. The generated data is the same for both
(the negatives do not depend on N), and so are the test images of the four classes; both
models are measured on the other run's lists of negatives (the images its ``other`` val
sample did not take), the 4-class one by evaluate.py again into OUT/four/eval-shared.
"""
import argparse
import json
from pathlib import Path

from coco4 import cli, demo
from coco4.data.other_class import HELD_OUT_NEGATIVES, SEEN_NEGATIVES
from coco4.evaluation import EvaluateOptions, evaluate_checkpoint
from coco4.options import HelpFormatter


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Compare --min-prob with an other class.",
                                formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the two demo folders, and table.md")
    p.add_argument("--other", type=int, default=100, help="the other class's train images")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--num-train", type=int, default=500)
    p.add_argument("--num-val", type=int, default=120)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--seed", type=int, default=0)
    return p


def run_one(args: argparse.Namespace, name: str, other: int) -> dict:
    out = args.out / name
    if not (out / "eval" / "metrics.json").is_file():
        argv = ["--out", str(out), "--other", str(other), "--epochs", str(args.epochs),
                "--num-train", str(args.num_train), "--num-val", str(args.num_val),
                "--arch", args.arch, "--seed", str(args.seed), "--no-visualize"]
        demo.main(demo.get_args_parser().parse_args(argv))
    return json.loads((out / "eval" / "metrics.json").read_text())


def rows(name: str, metrics: dict) -> list[str]:
    """One table row per score of one model: rejection at 5% and 10% of the known images
    wrongly rejected, and the AUROC, for each list of negatives."""
    lists = metrics["open_set"]
    first = next(iter(lists.values()))
    out = []
    for score in first["scores"]:
        cells = []
        for figures in lists.values():
            f = figures["scores"][score]
            at = f["unknown_rejected_at_known_rejected"]
            cells.append(f"{at['0.05']:.1%} / {at['0.10']:.1%} (AUROC {f['auroc']:.3f})")
        out.append(f"| {name} | {score} | {' | '.join(cells)} | {first['known_accuracy']:.1%} |")
    return out


def shared_negatives(args: argparse.Namespace) -> dict:
    """The 4-class model's figures on the other run's lists of negatives."""
    out = args.out / "four" / "eval-shared"
    if not (out / "metrics.json").is_file():
        lists = tuple(args.out / "other" / "data" / name
                      for name in (SEEN_NEGATIVES, HELD_OUT_NEGATIVES))
        evaluate_checkpoint(EvaluateOptions(
            checkpoint=args.out / "four" / "checkpoint" / "best.pt", device="cpu",
            data_dir=args.out / "four" / "data", coco_root=args.out / "four" / "coco",
            out_dir=out, negatives=lists))
    return json.loads((out / "metrics.json").read_text())


def main(args: argparse.Namespace) -> str:
    cli.check_at_least(args, other=1, epochs=1)
    run_one(args, "four", 0)
    other = run_one(args, "other", args.other)
    four = shared_negatives(args)
    lists = list(four["open_set"])
    counts = [f"{n} ({four['open_set'][n]['num_unknown']} images)" for n in lists]
    table = "\n".join([
        f"| model | score | {' | '.join(counts)} | known accuracy |",
        "|---|---|" + "---|" * len(lists) + "---|",
        *rows("4 classes", four), *rows(f"other ({args.other})", other)])
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    cli.run(main, get_args_parser())
