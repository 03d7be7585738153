"""What ``predict.py --min-prob`` trades: images of a kind the model never saw rejected as
``unknown``, against real test images wrongly rejected, on the demo's data.

    python -m tools.unknowns               # after python -m coco4.demo
    python -m tools.unknowns --demo DIR --png docs/images/unknowns.png

The unseen kind: the demo's generated images (both splits) whose objects are all of other
COCO categories, none of the four; no list holds them, so training never saw them. The test
images: the val list.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from coco4 import cli
from coco4.data.lists import read_classes, read_list
from coco4.file_predictions import predict_stream
from coco4.plots import save
from coco4.predictor import load_predictor

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The --min-prob trade-off on the demo data.")
    p.add_argument("--demo", type=Path, default=Path("runs/demo"), help="python -m coco4.demo's")
    p.add_argument("--png", type=Path, default=None, help="default: DEMO/vis/unknowns.png")
    return p


def unseen_kind(coco: Path, classes: list) -> list[Path]:
    """Images with annotations, all of them of categories other than ``classes``."""
    found = []
    for split in ("train", "val"):
        data = json.loads((coco / "annotations" / f"instances_{split}2017.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        seen = {}
        for a in data["annotations"]:
            seen.setdefault(a["image_id"], set()).add(names[a["category_id"]])
        found += [coco / "images" / f"{split}2017" / im["file_name"] for im in data["images"]
                  if seen.get(im["id"]) and not seen[im["id"]] & set(classes)]
    return found


def top_probs(predictor, paths) -> tuple[np.ndarray, np.ndarray, list]:
    """(top probability, top class, path) per image that could be read."""
    batches = list(predict_stream(predictor, paths, 64, 0))
    probs = np.concatenate([b.probs.numpy() for b in batches])
    return probs.max(1), probs.argmax(1), [p for b in batches for p in b.paths]


def main(args) -> list[dict]:
    demo = args.demo
    classes = list(read_classes(demo / "data"))
    predictor = load_predictor(demo / "checkpoint" / "best.pt", "cpu")
    unseen, _, _ = top_probs(predictor, unseen_kind(demo / "coco", classes))
    test = read_list(demo / "data" / "annotation_val.txt")
    label = {demo / "coco" / "images" / "val2017" / f: y for f, y in zip(test.files, test.labels)}
    test_top, test_pred, read = top_probs(predictor, list(label))
    right = test_pred == np.array([label[p] for p in read])
    rows = [{"min_prob": p, "unseen_rejected": float((unseen < p).mean()),
             "test_rejected": float((test_top < p).mean()),
             "accuracy_on_accepted": float(right[test_top >= p].mean())}
            for p in THRESHOLDS]
    print(f"{len(unseen)} images of an unseen kind, {len(test_top)} test images "
          f"(accuracy {right.mean():.1%} with nothing rejected)")
    print("min-prob  unseen rejected  test wrongly rejected  accuracy on accepted test")
    for r in rows:
        print(f"{r['min_prob']:8.2f}  {r['unseen_rejected']:15.1%}  {r['test_rejected']:21.1%}"
              f"  {r['accuracy_on_accepted']:25.1%}")
    save(tradeoff_figure(rows), args.png or demo / "vis" / "unknowns.png")
    return rows


def tradeoff_figure(rows):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    x, y = [r["test_rejected"] for r in rows], [r["unseen_rejected"] for r in rows]
    ax.plot(x, y, "o-")
    for r, xi, yi in zip(rows, x, y):
        ax.annotate(f"{r['min_prob']:.2f}", (xi, yi), textcoords="offset points", xytext=(5, -10))
    ax.set(xlabel="test images wrongly rejected", ylabel="unseen-kind images rejected",
           title="predict.py --min-prob", xlim=(-0.02, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return fig


if __name__ == "__main__":
    cli.run(main, get_args_parser())
