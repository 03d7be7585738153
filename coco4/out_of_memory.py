"""What to do when a batch does not fit on the GPU, as one line: for training, an
--accum-steps that fits (found on one GPU by trying real steps); for predicting, a smaller
--batch-size."""
import math

import torch

from .config import TrainConfig
from .data.loaders import Batches
from .distributed import DistEnv
from .errors import Coco4Error
from .seeding import generator
from .training import TrainingParts, train_step


def training_advice(cfg: TrainConfig, batches: Batches, during: str,
                    fits: int | None = None) -> str:
    """The advice for an out-of-memory error ``during`` training or validation: the
    --accum-steps ``fits`` (``accum_steps_that_fit``'s finding), or else twice the current."""
    local = batches.smallest_batch()  # this rank's images per step: every step has as many
    micro = math.ceil(local / cfg.accum_steps)
    most = max(1, local // 2)  # micro-batches of at least 2 images: BatchNorm needs them
    what = (f"CUDA out of memory in {during} with micro-batches of {micro} images at "
            f"{cfg.image_size}px")
    if cfg.accum_steps >= most:
        return (f"{what}, and they cannot shrink below 2 images; lower --batch-size or "
                "--image-size, or use a GPU with more memory")
    accum = fits or min(cfg.accum_steps * 2, most)
    return (f"{what}; rerun with --accum-steps {accum} (micro-batches of "
            f"{math.ceil(local / accum)}, the same effective batch; BatchNorm sees each "
            "micro-batch alone)")


def accum_steps_that_fit(parts: TrainingParts, batches: Batches, env: DistEnv,
                         accum_steps: int) -> int | None:
    """The --accum-steps above ``accum_steps`` at which a real training step of ``batches``
    (the optimizer's state, the uint8 batch and its crops included) fits, with a quarter more
    for a margin; None where it cannot be tried: under torchrun (a lone rank cannot step a
    DDP model), off CUDA, or when even micro-batches of 2 images do not fit. The weights it
    changes are never saved: the run ends with the advice."""
    if env.enabled or batches.plan.device.type != "cuda":
        return None
    most = max(1, batches.smallest_batch() // 2)
    accum = accum_steps * 2
    while accum <= most:
        if _a_step_fits(parts, batches, accum):
            return min(most, math.ceil(accum * 4 / 3))  # room for fragmentation
        accum *= 2
    return None


def _a_step_fits(parts, batches, accum):
    parts.accum_steps = accum
    try:
        torch.cuda.empty_cache()
        x, y = next(iter(batches.iterate(0)))
        if parts.batch_transform is not None:  # its copies of the batch count too
            x, y = parts.batch_transform(x, y, generator(0, "probe"))
        train_step(parts, x, y)
        torch.cuda.synchronize(batches.plan.device)
        return True
    except torch.cuda.OutOfMemoryError:
        parts.optimizer.zero_grad(set_to_none=True)
        return False


def prediction_advice(batch_size: int, image_size: int, written: str = "") -> Coco4Error:
    """The error for an out-of-memory error while predicting: half the batch. ``written``
    says what was written before it (predict.py's rows so far)."""
    return Coco4Error(f"CUDA out of memory predicting batches of {batch_size} images at "
                      f"{image_size}px; rerun with --batch-size {max(1, batch_size // 2)}"
                      f"{written}")
