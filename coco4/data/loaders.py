"""Batches of (uint8 images, labels) on the training device, from either data path.

``fast`` (default): the uint8 image cache, indexed per batch and augmented on the device.
``pil``: the original pipeline, PIL decode + transforms in DataLoader workers every epoch.
Both draw the epoch's order from (seed, epoch), so a resumed run sees the same batches.
"""
import dataclasses
import math
import signal
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..balance import balanced_order
from ..seeding import generator
from .images import ListDataset
from .lists import ImageList
from .transforms import (
    pil_eval_transform,
    pil_train_transform,
    random_crops,
    resized_crops,
    resized_crops_each,
)


@dataclass(frozen=True)
class DataOptions:
    """How a list's images are read; training, evaluation and prediction share these."""

    data_path: str = "fast"  # fast: the decoded-image cache; pil: the original pipeline
    cache_dir: Path | None = None  # where the fast path's cache lives
    workers: int = 0  # image-decoding processes
    strict: bool = False  # a missing or unreadable image is an error, not left out


@dataclass(frozen=True)
class BatchPlan:
    """How one split is cut into batches, whichever data path reads the pixels."""

    batch_size: int
    device: torch.device
    image_size: int
    train: bool  # shuffled and augmented, or in list order at the eval protocol
    seed: int = 0
    rank: int = 0  # under torchrun each rank takes every world-th image of the epoch's order
    world: int = 1
    balanced: bool = False  # --balance sampler: each epoch a class-balanced draw of the split


def epoch_order(labels: torch.Tensor, epoch: int, plan: BatchPlan) -> torch.Tensor:
    """This rank's indices into the split (whose ``labels`` these are) for ``epoch``; shuffled
    orders are padded by repetition so every rank takes the same number of steps, as
    DistributedSampler does. A balanced plan draws the epoch class-balanced with replacement
    from the same (seed, epoch) generator: every rank draws the same order and takes its share,
    and a resumed run draws it again."""
    n = len(labels)
    if not plan.train:
        return torch.arange(n)[plan.rank::plan.world]
    g = generator(plan.seed, "order", epoch)
    order = balanced_order(labels, g) if plan.balanced else torch.randperm(n, generator=g)
    pad = (-n) % plan.world
    order = torch.cat([order, order[:pad]])
    return order[plan.rank::plan.world]


class Batches(ABC):
    """One split (``indices`` into a list) as batches on ``plan.device``: what training,
    validation and evaluation iterate over, whichever data path reads the pixels.

    An epoch's batches are equal: ``len(self)`` steps of at most ``plan.batch_size`` images,
    never a full batch and then a tiny one (4,587 images at 2048 are 3 x 1,529, not 2048,
    2048, 539). In training the few images over a multiple of the step count (fewer than the
    steps, a different few each shuffled epoch) are dropped, so every step has one shape, which
    cuDNN's autotuner and torch.compile see once; evaluation keeps every image, in batches
    that differ by at most one.
    """

    def __init__(self, labels: Sequence[int], indices: Sequence[int], plan: BatchPlan):
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)[self.indices]  # the split's
        self.plan = plan

    def _per_rank(self) -> int:
        """Images in this rank's share of an epoch: ``epoch_order``'s length."""
        n, plan = len(self.indices), self.plan
        return -(-n // plan.world) if plan.train else len(range(plan.rank, n, plan.world))

    def __len__(self) -> int:
        """Steps per epoch."""
        return math.ceil(self._per_rank() / self.plan.batch_size)

    def bounds(self, step: int) -> tuple[int, int]:
        """Positions [start, end) of ``step``'s images in this rank's epoch order."""
        per_rank, steps = self._per_rank(), len(self)
        if self.plan.train:
            size = per_rank // steps
            return step * size, (step + 1) * size
        return step * per_rank // steps, (step + 1) * per_rank // steps

    def smallest_batch(self) -> int:
        """The fewest images a step of this rank holds (0 for an empty split)."""
        steps = len(self)
        return self._per_rank() // steps if steps else 0

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_order(self.labels, epoch, self.plan)

    @abstractmethod
    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        """(uint8 NCHW images, labels) for steps ``start_step`` .. ``len(self) - 1`` of
        ``epoch``, on the plan's device; the same batches whenever they are asked for."""


class CachedBatches(Batches):
    """Batches straight from the uint8 cache: no JPEG is decoded after the cache is built."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], indices: Sequence[int],
                 plan: BatchPlan):
        if plan.device.type == "cuda" and plan.device.index is None:  # tensors' devices have one
            plan = dataclasses.replace(plan, device=torch.device("cuda",
                                                                  torch.cuda.current_device()))
        super().__init__(labels, indices, plan)
        self.images = images  # uint8, NCHW-shaped view of the NHWC cache, on CPU or the device

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        plan, order = self.plan, self.order(epoch)
        for step in range(start_step, len(self)):
            pick = order[slice(*self.bounds(step))]
            rows = self.indices[pick]
            y = to_device(self.labels[pick], plan.device)
            if not plan.train:
                yield self._gather(rows), y
                continue
            # one generator per step: a run resumed at step k draws exactly what step k drew
            g = generator(plan.seed, "augment", epoch, step, plan.rank)
            boxes, flips = random_crops(len(rows), *self.images.shape[2:], g)
            if plan.device.type == "cpu":
                yield resized_crops_each(self.images, rows, boxes, flips, plan.image_size), y
            else:
                yield resized_crops(self._gather(rows), to_device(boxes, plan.device),
                                    to_device(flips, plan.device), plan.image_size), y

    def _gather(self, rows):
        if self.images.device == self.plan.device:
            return self.images[to_device(rows, self.plan.device)]
        return to_device(self.images[rows], self.plan.device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor.to(device)`` that never makes the host wait for the GPU: a copy from ordinary
    (pageable) memory waits for every kernel already queued, one from pinned memory does not.
    torch's caching host allocator keeps the pinned staging buffer alive until the copy ends."""
    if device.type != "cuda" or not tensor.is_cpu:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class PilBatches(Batches):
    """The original pipeline: every epoch decodes and transforms each JPEG in DataLoader workers."""

    def __init__(self, image_list: ImageList, image_dir: str | Path, indices: Sequence[int],
                 plan: BatchPlan, workers: int = 0):
        super().__init__(image_list.labels, indices, plan)
        transform = (pil_train_transform if plan.train else pil_eval_transform)(plan.image_size)
        self.dataset = ListDataset(image_list, image_dir, transform)
        self.workers = workers

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        plan, order = self.plan, self.indices[self.order(epoch)].tolist()
        steps = [order[slice(*self.bounds(step))] for step in range(start_step, len(self))]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=steps, num_workers=self.workers,
            pin_memory=plan.device.type == "cuda",
            generator=generator(plan.seed, "workers", epoch, plan.rank),
            worker_init_fn=ignore_sigint)
        for x, y in loader:
            yield x.to(plan.device, non_blocking=True), y.to(plan.device, non_blocking=True)


def ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: workers leave it to the main
    process, which finishes its step and saves instead of losing its workers mid-epoch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
