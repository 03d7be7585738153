"""Shared fixtures: one small synthetic COCO dataset with its lists, built once per session."""
import argparse
import contextlib
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the entry scripts live at the repository root

from coco4.data.images import read_rgb  # noqa: E402
from coco4.data.lists import read_list  # noqa: E402
from coco4.devtools.synthetic import make_synthetic_coco  # noqa: E402

import annotation_prepare  # noqa: E402  (pycocotools is imported only when it runs)

try:
    import pycocotools.coco  # noqa: F401, E402
    HAVE_PYCOCOTOOLS = True
except ImportError:  # the GPU check's machine has none
    HAVE_PYCOCOTOOLS = False


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Generated COCO layout + lists: about 40 train-list and 26 val-list images at small sizes."""
    root = tmp_path_factory.mktemp("demo")
    # where pycocotools is missing (the GPU check's machine), the generator writes the lists
    # itself: the same images and labels (tests/test_synthetic.py), in label-then-name order
    make_synthetic_coco(root / "coco", num_train=60, num_val=40, seed=1,
                        image_sizes=((64, 48), (48, 64)), progress=False,
                        lists_dir=None if HAVE_PYCOCOTOOLS else root / "data")
    if HAVE_PYCOCOTOOLS:
        annotation_prepare.main(argparse.Namespace(
            coco_root=root / "coco", train_json=None, val_json=None, out_dir=root / "data",
            classes=["bird", "airplane", "train", "boat"], rule="exact", min_area_fraction=None))
    return root


class CreatesFile:
    """Unpickling this calls a function with side effects: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="session")
def trained(demo_data, tmp_path_factory):
    """best.pt of a 2-epoch run on ``demo_data``, shared by the tests that only read it (a test
    that changes a checkpoint copies it first)."""
    from coco4.trainer import fit

    out = tmp_path_factory.mktemp("run")
    fit(train_args(demo_data, out, epochs=2), progress=False)
    return out / "best.pt"


def read_csv(path):
    """The rows of a CSV file as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_args(data_root, out, **overrides):
    """A tiny CPU training configuration over ``demo_data``, as train.py would build it."""
    from coco4.config import TrainConfig

    values = {"coco_root": str(data_root / "coco"), "data_dir": str(data_root / "data"),
              "output_dir": str(out), "device": "cpu", "weights": "none", "image_size": 32,
              "epochs": 1, "batch_size": 8, "lr": 1e-3, "workers": 0, "seed": 0,
              "val_fraction": 0.2}
    values.update(overrides)
    return TrainConfig(**values)


def out_of_memory(*args, **kwargs):
    """Stands in for a step or a pass that runs out of GPU memory, as torch raises it."""
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def eval_argv(data_root, checkpoint, out, *extra):
    """evaluate.py's (and visualize.py's) arguments over ``demo_data``, on the CPU by default."""
    return ["--checkpoint", str(checkpoint), "--data-dir", str(data_root / "data"),
            "--coco-root", str(data_root / "coco"), "--device", "cpu", "--workers", "0",
            "--out-dir", str(out), *map(str, extra)]


def smooth_images(n, side=37):
    """``n`` uint8 NCHW gradient images: smooth, so the GPU and CPU resamplers agree on them."""
    import torch

    yy, xx = torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing="ij")
    images = torch.stack([torch.stack([xx * 6, yy * 6, (xx + yy) * 3]) + k for k in range(n)])
    return images.clamp(0, 255).to(torch.uint8)


def train_cli(data_root, out, *extra):
    """train.py's command line for the same tiny configuration."""
    return [sys.executable, str(REPO / "train.py"), "--coco-root", str(data_root / "coco"),
            "--data-dir", str(data_root / "data"), "--output-dir", str(out), "--device", "cpu",
            "--weights", "none", "--image-size", "32", "--batch-size", "8", "--lr", "1e-3",
            "--workers", "0", "--val-fraction", "0.2", *extra]


# ---------------------------------------------------------------- references that do not
# come from the code under test: torchvision's own network and transforms, published constants


def direct_predictions(model, demo_data, image_size, temperature=1.0, mirror=False):
    """Predictions computed by hand: PIL decode, the original eval transform written out with
    torchvision and ImageNet's published constants, the bare torchvision network, and the
    logits divided by ``temperature`` (a checkpoint's, read from the file) before the softmax;
    ``mirror``: of each image's left-right mirror, flipped by torchvision before the resize."""
    image_list = read_list(demo_data / "data" / "annotation_val.txt")
    side = round(image_size * 256 / 224)
    flip = [T.RandomHorizontalFlip(1.0)] if mirror else []
    transform = T.Compose([*flip, T.Resize((side, side)), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    model.eval()
    with torch.no_grad():
        x = torch.stack([transform(read_rgb(demo_data / "coco" / "images" / "val2017" / f))
                         for f in image_list.files])
        probs = (model(x) / temperature).softmax(1)
    return image_list, probs


def check_against_direct(out, image_list, probs, classes):
    metrics = json.loads((out / "metrics.json").read_text())
    labels, preds = np.array(image_list.labels), probs.argmax(1).numpy()
    assert metrics["num_images"] == len(labels)
    assert metrics["accuracy"] == pytest.approx((labels == preds).mean())
    cm = np.zeros((len(classes), len(classes)), int)
    np.add.at(cm, (labels, preds), 1)
    assert metrics["confusion_matrix"] == cm.tolist()
    for i, c in enumerate(classes):
        assert metrics["per_class_accuracy"][c] == pytest.approx((preds[labels == i] == i).mean())
    rows = read_csv(out / "predictions.csv")
    assert [r["file"] for r in rows] == list(image_list.files)
    got = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    assert np.abs(got - probs.numpy()).max() < 1e-4
    with Image.open(out / "confusion_matrix.png") as im:  # a whole 4x4 matrix figure
        assert im.format == "PNG" and min(im.size) > 200, im.size
        im.load()
    return metrics


def at_temperature(probs, t):
    """Probabilities (numpy or torch, [N, classes]) at temperature ``t`` by hand: each to the
    power 1/T, renormalised, which is softmax(log p / T)."""
    scaled = probs ** (1 / t)
    return scaled / scaled.sum(1)[:, None]


def stored_temperature(checkpoint):
    """The temperature a checkpoint file holds, read with torch alone (1 where there is none)."""
    return torch.load(checkpoint, weights_only=True).get("temperature") or 1.0


def original_model():
    """The original project's model, built as its code did: torchvision resnet50 + its head."""
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Sequential(nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 4))
    return model


@contextlib.contextmanager
def tmpfs(folder, options):
    """A real small file system (tmpfs, mount ``options``) at ``folder``, for the test's block;
    the test is skipped where this machine does not let it mount one (it needs root)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
