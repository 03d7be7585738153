"""The modern recipe's options measured on generated data: the original recipe, each option
alone and ``--recipe modern``, over several seeds, on the demo's kind of images and on harder
ones (coco4.synthetic.HARD: smaller objects, straying colours, clutter, occluding bars); a
markdown table of test accuracy, macro F1, ECE and seconds per epoch.

    python -m tools.recipe_study --out /tmp/recipe-study        # docs/training.md's table
    python -m tools.recipe_study --out /tmp/quick --seeds 0 --epochs 2 --only original,ema

Each data set is generated once (seed 0); each run trains from random weights (no ImageNet
weights on these machines) with train.py's settings below and --seed S, then evaluate.py on
val2017; a run whose metrics.json exists is read, not run again.
"""
import argparse
import csv
import json
import statistics
from pathlib import Path

from coco4 import cli
from coco4.annotation_lists import ListsOptions, make_lists
from coco4.config import RECIPES, TrainConfig
from coco4.evaluation import EvaluateOptions, evaluate_checkpoint
from coco4.options import HelpFormatter
from coco4.synthetic import HARD, Look, make_synthetic_coco
from coco4.trainer import fit

# the EMA's decay for these short runs of few images: the default 0.998 would average over
# about 39 epochs of a 20-epoch run of 8 updates an epoch (the run's log says so); 0.98, the
# last 4
EMA = {"model_ema": True, "model_ema_decay": 0.98}
OPTIONS = {
    "original": {},
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "mixup 0.2": {"mixup_alpha": 0.2},
    "cutmix 1.0": {"cutmix_alpha": 1.0},
    "TrivialAugment": {"auto_augment": "ta_wide"},
    "random erasing 0.25": {"random_erase": 0.25},
    "warmup 2 + cosine": {"lr_scheduler": "cosine", "lr_warmup_epochs": 2},
    "EMA 0.98": EMA,
    "modern (EMA 0.98)": {**RECIPES.sets["modern"], **EMA},
}
DATA = {"demo": Look(), "hard": HARD}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Measure the recipe options on generated data.",
                                formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="data, runs and table.md go here")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="train.py --seed: split, order, augmentation, initialisation")
    p.add_argument("--only", default=None, help="comma-separated names of OPTIONS' keys' "
                   "first words (original, label, mixup, ...): a subset")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=200, help="the test set")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--arch", default="resnet18")
    return p


def prepare(out: Path, look: Look, args: argparse.Namespace) -> Path:
    """The data set (COCO layout and lists) in ``out``, generated unless it is there."""
    if not (out / "data" / "annotation_val.txt").exists():
        make_synthetic_coco(out / "coco", args.num_train, args.num_val, seed=0, progress=False,
                            look=look)
        make_lists(ListsOptions(coco_root=out / "coco", out_dir=out / "data"))
    return out


def run_one(data: Path, out: Path, recipe: dict, seed: int, args) -> dict:
    """One run's test metrics and seconds per epoch, run now or read from an earlier run."""
    done = out / "eval" / "metrics.json"
    if not done.exists():
        fit(TrainConfig(coco_root=str(data / "coco"), data_dir=str(data / "data"),
                        output_dir=str(out), overwrite=True, device="cpu", weights="none",
                        epochs=args.epochs, image_size=args.image_size, batch_size=32,
                        lr=1e-3, val_fraction=0.2, workers=0, seed=seed, arch=args.arch,
                        **recipe), progress=False)
        evaluate_checkpoint(EvaluateOptions(coco_root=data / "coco", data_dir=data / "data",
                                            checkpoint=out / "best.pt", device="cpu",
                                            workers=0, out_dir=out / "eval"))
    metrics = json.loads(done.read_text())
    with open(out / "metrics.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "ece": metrics["ece_uncalibrated"], "seconds": statistics.mean(seconds)}


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1%} ± {sd:.1%}"


def table(results: dict) -> str:
    rows = ["| option | data | test accuracy | macro F1 | ECE (raw) | s/epoch |",
            "|---|---|---|---|---|---|"]
    for (name, data), runs in results.items():
        rows.append(f"| {name} | {data} | {spread([r['accuracy'] for r in runs])} | "
                    f"{spread([r['macro_f1'] for r in runs])} | "
                    f"{spread([r['ece'] for r in runs])} | "
                    f"{statistics.mean(r['seconds'] for r in runs):.2f} |")
    return "\n".join(rows) + "\n"


def main(args: argparse.Namespace) -> str:
    cli.check_at_least(args, epochs=3)  # the preset warms up for 2
    wanted = set(args.only.split(",")) if args.only else None
    options = {k: v for k, v in OPTIONS.items()
               if wanted is None or k.split()[0].lower() in wanted}
    results = {}
    # the settings in the folders' names: a study into the same --out with others runs anew
    size = f"{args.num_train}-{args.num_val}"
    setting = f"{args.arch}-{args.image_size}px-{args.epochs}ep"
    for data_name, look in DATA.items():
        data = prepare(args.out / f"data-{data_name}-{size}", look, args)
        for seed in args.seeds:  # seed by seed: a study stopped early still compares all
            for name, recipe in options.items():
                slug = name.split()[0].lower()
                run = run_one(data, args.out / f"{data_name}-{size}-{setting}-{slug}-seed{seed}",
                              recipe, seed, args)
                results.setdefault((name, data_name), []).append(run)
    text = table(results)
    (args.out / "table.md").write_text(text)
    print(f"\nseeds {args.seeds}, {args.epochs} epochs, {args.arch} from random weights, "
          f"{args.image_size} px, {args.num_train} train / {args.num_val} test images:\n\n{text}")
    return text


if __name__ == "__main__":
    cli.run(main, get_args_parser())
