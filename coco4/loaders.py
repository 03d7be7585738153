"""Batches of (normalised images, labels) on the training device, from either data path.

``fast`` (default): the uint8 image cache, indexed per batch and augmented on the device.
``pil``: the original pipeline, PIL decode + transforms in DataLoader workers every epoch.
Both draw the epoch's order from (seed, epoch), so a resumed run sees the same batches.
"""
import math
import signal

import torch

from .data import ListDataset
from .seeding import generator
from .transforms import (pil_eval_transform, pil_train_transform, random_crops, resized_crops,
                         resized_crops_each)


def epoch_order(n, epoch, seed, shuffle, rank=0, world=1):
    """This rank's indices into ``range(n)`` for ``epoch``; shuffled orders are padded by
    repetition so every rank takes the same number of steps, as DistributedSampler does."""
    if not shuffle:
        return torch.arange(n)[rank::world]
    order = torch.randperm(n, generator=generator(seed, "order", epoch))
    pad = (-n) % world
    order = torch.cat([order, order[:pad]])
    return order[rank::world]


def steps_per_epoch(n, batch_size, shuffle, rank=0, world=1):
    """How many batches ``epoch_order`` makes of ``n`` images on this rank."""
    return math.ceil(len(epoch_order(n, 0, 0, shuffle, rank, world)) / batch_size)


class CachedBatches:
    """Batches straight from the uint8 cache: no JPEG is decoded after the cache is built."""

    def __init__(self, images, labels, indices, batch_size, device, image_size, train, seed,
                 rank=0, world=1):
        self.images = images  # uint8, NCHW-shaped view of the NHWC cache, on CPU or the device
        self.labels = torch.as_tensor(labels)[torch.as_tensor(indices)]
        self.indices = torch.as_tensor(indices)
        if device.type == "cuda" and device.index is None:  # tensors' devices carry an index
            device = torch.device("cuda", torch.cuda.current_device())
        self.batch_size, self.device, self.image_size = batch_size, device, image_size
        self.train, self.seed, self.rank, self.world = train, seed, rank, world

    def __len__(self):
        return steps_per_epoch(len(self.indices), self.batch_size, self.train, self.rank,
                               self.world)

    def iterate(self, epoch, start_step=0):
        """uint8 batches (normalised by the engine on the device) and labels, on the device."""
        order = epoch_order(len(self.indices), epoch, self.seed, self.train, self.rank, self.world)
        for step in range(start_step, len(self)):
            pick = order[step * self.batch_size:(step + 1) * self.batch_size]
            rows = self.indices[pick]
            y = to_device(self.labels[pick], self.device)
            if not self.train:
                yield self._gather(rows), y
                continue
            # one generator per step: a run resumed at step k draws exactly what step k drew
            g = generator(self.seed, "augment", epoch, step, self.rank)
            boxes, flips = random_crops(len(rows), *self.images.shape[2:], g)
            if self.device.type == "cpu":
                yield resized_crops_each(self.images, rows, boxes, flips, self.image_size), y
            else:
                yield resized_crops(self._gather(rows), to_device(boxes, self.device),
                                    to_device(flips, self.device), self.image_size), y

    def _gather(self, rows):
        if self.images.device == self.device:
            return self.images[to_device(rows, self.device)]
        return to_device(self.images[rows], self.device)


def to_device(tensor, device):
    """``tensor.to(device)`` that never makes the host wait for the GPU: a copy from ordinary
    (pageable) memory waits for every kernel already queued, one from pinned memory does not.
    torch's caching host allocator keeps the pinned staging buffer alive until the copy ends."""
    if device.type != "cuda" or not tensor.is_cpu:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class PilBatches:
    """The original pipeline: every epoch decodes and transforms each JPEG in DataLoader workers."""

    def __init__(self, image_list, image_dir, indices, batch_size, device, image_size, train,
                 seed, workers, rank=0, world=1):
        transform = pil_train_transform(image_size) if train else pil_eval_transform(image_size)
        self.dataset = ListDataset(image_list, image_dir, transform)
        self.indices = torch.as_tensor(indices)
        self.batch_size, self.device, self.train, self.seed = batch_size, device, train, seed
        self.workers, self.rank, self.world = workers, rank, world

    def __len__(self):
        return steps_per_epoch(len(self.indices), self.batch_size, self.train, self.rank,
                               self.world)

    def iterate(self, epoch, start_step=0):
        order = epoch_order(len(self.indices), epoch, self.seed, self.train, self.rank, self.world)
        sampler = self.indices[order][start_step * self.batch_size:].tolist()
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=sampler,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            generator=generator(self.seed, "workers", epoch, self.rank),
            worker_init_fn=ignore_sigint)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def ignore_sigint(worker_id):
    """Ctrl-C reaches every process of the terminal's group: workers leave it to the main
    process, which finishes its step and saves instead of losing its workers mid-epoch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
