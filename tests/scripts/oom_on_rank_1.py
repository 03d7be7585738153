"""train.py under torchrun, with rank 1's second training step failing as a CUDA out-of-memory
error does: what a user's run meets when one GPU has less memory free than the others."""
import os
import runpy
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import tiny_backbone  # noqa: E402, F401  (registers --arch tiny)

import coco4.training  # noqa: E402

real_step, steps = coco4.training.train_step, []


def train_step(parts, x, y):
    steps.append(1)
    if os.environ["RANK"] == "1" and len(steps) == 2:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return real_step(parts, x, y)


coco4.training.train_step = train_step
sys.argv[0] = str(REPO / "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
