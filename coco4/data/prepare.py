"""Everything between the list files and the batches that training and evaluation iterate.

Reads the classes and the list, finds images that are missing or cannot be decoded (left out
and reported, or an error with --strict), holds out the validation split, and builds the
batches for the chosen data path.
"""
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..distributed import DistEnv, barrier
from ..errors import Coco4Error
from . import cache
from .audit import file_sha256, list_rule
from .images import check_image_dir, find_unusable
from .lists import ImageList, read_classes, read_list
from .loaders import Batches, BatchPlan, CachedBatches, DataOptions, PilBatches


@dataclass
class ImageSource:
    """A list's images, ready to batch: the decoded cache (fast path) or the JPEGs (pil path),
    and the images that could not be used, {index: why}."""

    image_list: ImageList
    image_dir: Path
    cache: torch.Tensor | None
    unusable: dict
    workers: int = 0

    def usable(self) -> list[int]:
        return [i for i in range(len(self.image_list)) if i not in self.unusable]


def open_images(image_list: ImageList, image_dir: str | Path, image_size: int,
                options: DataOptions, progress: bool) -> ImageSource:
    """Decode every image once: into the cache on the fast path (built, or reused when the
    list and its images are unchanged), or only to find the broken ones on the pil path."""
    check_image_dir(image_dir)
    if options.data_path == "pil":
        return ImageSource(image_list, Path(image_dir), None,
                           find_unusable(image_list, image_dir, options.workers, progress),
                           options.workers)
    built = cache.load_or_build(image_list, image_dir, image_size, options.cache_dir,
                                options.workers, progress)
    return ImageSource(image_list, Path(image_dir), built.tensor(), built.bad, options.workers)


def make_batches(source: ImageSource, indices: Sequence[int], plan: BatchPlan) -> Batches:
    """Batches of ``indices`` from the cache, or through the PIL pipeline when there is none."""
    if source.cache is not None:
        return CachedBatches(source.cache, source.image_list.labels, indices, plan)
    return PilBatches(source.image_list, source.image_dir, indices, plan, source.workers)


def unusable_report(source: ImageSource, strict: bool, warn: Callable[[str], None]) -> dict:
    """Report images that cannot be used, once; with ``strict`` they are an error."""
    image_list = source.image_list
    names = {image_list.files[i]: why for i, why in sorted(source.unusable.items())}
    if names:
        listing = ", ".join(f"{n} ({why})" for n, why in list(names.items())[:5])
        summary = (f"{len(names)} of {len(image_list)} images in {image_list.path} cannot be "
                   f"used: {listing}{', ...' if len(names) > 5 else ''}")
        if strict:
            raise Coco4Error(summary + "; fix or remove them, or drop --strict to leave them out")
        if len(names) == len(image_list):
            raise Coco4Error(summary + f"; no image is left: check that {source.image_dir} "
                             "is the folder they are in (--coco-root, or --images / "
                             "--train-images)")
        warn(f"warning: {summary}; they are left out of this run")
    return {"listed_images": len(image_list), "left_out": names}


@dataclass(frozen=True)
class TrainDataSpec:
    """What a training run asks of its data: which list and images, how they are read, how the
    held-out split and the batches are cut (TrainConfig.data_spec builds it)."""

    train_list: Path
    train_images: Path
    image_size: int
    options: DataOptions
    val_fraction: float
    seed: int
    batch_size: int  # global: each of torchrun's processes takes its share
    accum_steps: int
    balanced: bool  # --balance sampler: each epoch a class-balanced draw


@dataclass
class TrainData:
    train: Batches
    val: Batches
    classes: tuple
    report: dict  # stored in every checkpoint: listed, left out, train and validation counts


def prepare_train_data(spec: TrainDataSpec, env: DistEnv, device: torch.device, progress: bool,
                       info: Callable[[str], None]) -> TrainData:
    """The training run's batches; ``info`` tells the user what was found."""
    classes = read_classes(spec.train_list.parent)
    image_list = read_list(spec.train_list, len(classes))
    check_image_dir(spec.train_images)  # on every rank: all fail together, none waits
    # each machine's local rank 0 builds the cache (machines may have disks of their own)
    # while every other rank waits, then all map it. On a shared file system several machines
    # may build the same file at once: each writes a temporary file of its own and renames it
    # into place, so every rank maps one complete cache, the same pixels whichever won.
    builds = env.local_rank == 0
    if not builds:
        barrier(env)
    source = open_images(image_list, spec.train_images, spec.image_size, spec.options, progress)
    if builds:
        barrier(env)
    report = unusable_report(source, spec.options.strict, info)
    report["list_rule"] = list_rule(spec.train_list)  # which data the checkpoint saw
    report["list_sha256"] = file_sha256(spec.train_list)  # a resume checks it trains on it
    usable = source.usable()
    train_pos, val_pos = stratified_split([image_list.labels[i] for i in usable], classes,
                                          spec.val_fraction, spec.seed)
    train_idx, val_idx = [usable[i] for i in train_pos], [usable[i] for i in val_pos]
    report.update(train_images=len(train_idx), val_images=len(val_idx))
    info(f"data: {len(train_idx)} train / {len(val_idx)} validation images held out "
         f"from {spec.train_list} ({len(classes)} classes: {', '.join(classes)})")
    if source.cache is not None:
        source.cache = cache_on_gpu_if_it_fits(source.cache, device)
    train, val = _split_batches(spec, source, (train_idx, val_idx), env, device)
    return TrainData(train, val, classes, report)


def _split_batches(spec: TrainDataSpec, source: ImageSource, split: tuple, env: DistEnv,
                   device: torch.device) -> tuple[Batches, Batches]:
    """The training and validation batches of the (train, val) indices ``split``."""
    train_idx, val_idx = split
    local_batch = math.ceil(spec.batch_size / env.world)
    plan = BatchPlan(local_batch, device, spec.image_size, True, spec.seed, env.rank, env.world,
                     balanced=spec.balanced)
    # validation in micro-batches, unshuffled: what fits for a training step fits there
    val_plan = BatchPlan(math.ceil(local_batch / spec.accum_steps), device, spec.image_size,
                         False, spec.seed, env.rank, env.world)
    train = make_batches(source, train_idx, plan)
    if train.smallest_batch() < 2 * spec.accum_steps:
        raise Coco4Error(
            f"{len(train_idx)} training images at --batch-size {spec.batch_size}"
            f"{f' over {env.world} processes' if env.enabled else ''} make steps of "
            f"{train.smallest_batch()} images, which --accum-steps {spec.accum_steps} splits "
            "into micro-batches of fewer than 2, and BatchNorm cannot train on one image: raise "
            "--batch-size or lower --accum-steps")
    return train, make_batches(source, val_idx, val_plan)


def stratified_split(labels: Sequence[int], classes: Sequence[str], val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, val) in ``labels``: ``val_fraction`` of each class, at least one
    image on each side, chosen by ``seed``.

    val2017 is the test set: choosing the checkpoint on it (as the original did) would report a
    number tuned on the very images it claims to generalise to. This split is held out of the
    train list instead, for model selection and the LR schedule.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c, name in enumerate(classes):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            raise Coco4Error(f"class {name!r} (label {c}) has no training image; check the list "
                             "or the --classes given to annotation_prepare.py")
        n_val = int(round(len(members) * val_fraction))
        if n_val == 0 or n_val == len(members):
            raise Coco4Error(f"--val-fraction {val_fraction} leaves class {name!r} with "
                             f"{n_val} of its {len(members)} images for validation; "
                             "each class needs at least one image on each side")
        members = rng.permutation(members)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(train), np.sort(val)


def cache_on_gpu_if_it_fits(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep the whole uint8 cache on the GPU when it fits easily (4,600 images at 256 px are
    0.9 GB): then a batch is one on-device gather, no host copy at all."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() < 0.25 * free:
            return images.to(device)
    return images
