"""Shared fixtures: one small synthetic COCO dataset with its lists, built once per session."""
import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the entry scripts live at the repository root

import annotation_prepare  # noqa: E402
from coco4.synthetic import make_synthetic_coco  # noqa: E402


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Generated COCO layout + lists: about 40 train-list and 26 val-list images at small sizes."""
    root = tmp_path_factory.mktemp("demo")
    make_synthetic_coco(root / "coco", num_train=60, num_val=40, seed=1,
                        image_sizes=((64, 48), (48, 64)), progress=False)
    annotation_prepare.main(argparse.Namespace(
        coco_root=root / "coco", train_json=None, val_json=None, out_dir=root / "data",
        classes=["bird", "airplane", "train", "boat"]))
    return root


def train_args(data_root, out, **overrides):
    """A tiny CPU training configuration over ``demo_data``, as train.py would build it."""
    from coco4.config import TrainConfig

    values = dict(coco_root=str(data_root / "coco"), data_dir=str(data_root / "data"),
                  output_dir=str(out), device="cpu", weights="none", image_size=32,
                  epochs=1, batch_size=8, lr=1e-3, workers=0, seed=0, val_fraction=0.2)
    values.update(overrides)
    return TrainConfig(**values)


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
