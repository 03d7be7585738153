"""Everything between the list files and the training loop's batches.

Reads the classes and the train list, finds images that are missing or cannot be decoded (left
out and reported, or an error with --strict), holds out the validation split, and builds the
batches for the chosen data path.
"""
import math
from dataclasses import dataclass

import torch

from . import cache
from .data import check_image_dir, find_unusable
from .distributed import barrier
from .errors import Coco4Error
from .lists import read_classes, read_list
from .loaders import CachedBatches, PilBatches
from .split import stratified_split


@dataclass
class TrainData:
    train: object
    val: object
    classes: tuple
    report: dict


def prepare_train_data(cfg, env, device, progress, log):
    classes = read_classes(cfg.train_list_path.parent)
    image_list = read_list(cfg.train_list_path, len(classes))
    check_image_dir(cfg.train_images_path)
    images, bad = _decode_check(cfg, image_list, env, progress)
    report = unusable_report(image_list, bad, cfg.strict, log.info)
    usable = [i for i in range(len(image_list)) if i not in bad]
    labels = [image_list.labels[i] for i in usable]
    train_pos, val_pos = stratified_split(labels, classes, cfg.val_fraction, cfg.seed)
    train_idx = [usable[i] for i in train_pos]
    val_idx = [usable[i] for i in val_pos]
    report.update(train_images=len(train_idx), val_images=len(val_idx))
    log.info(f"data: {len(train_idx)} train / {len(val_idx)} validation images held out "
             f"from {cfg.train_list_path} ({len(classes)} classes: {', '.join(classes)})")
    local_batch = math.ceil(cfg.batch_size / env.world)
    if cfg.data_path == "fast":
        images = _place(images, device)
    make = lambda idx, train, batch: make_batches(
        images, image_list, cfg.train_images_path, idx, batch, device, cfg.image_size, train,
        cfg.seed, cfg.workers, env.rank, env.world)
    # validation in micro-batches: what fits for a training step fits there
    return TrainData(make(train_idx, True, local_batch),
                     make(val_idx, False, math.ceil(local_batch / cfg.accum_steps)),
                     classes, report)


def _decode_check(cfg, image_list, env, progress):
    # rank 0 builds the cache while the others wait, then everyone maps the same file
    if not env.is_main:
        barrier(env)
    result = decode_check(image_list, cfg.train_images_path, cfg.image_size, cfg.data_path,
                          cfg.cache_path, cfg.workers, progress)
    if env.is_main:
        barrier(env)
    return result


def decode_check(image_list, image_dir, image_size, data_path, cache_dir, workers, progress):
    """Decode every image once: into the cache (fast path) or just to test it (pil path).

    Returns (the cache's uint8 tensor, or None on the pil path; {index: why unusable}).
    """
    if data_path == "pil":
        return None, find_unusable(image_list, image_dir, workers, progress)
    built = cache.load_or_build(image_list, image_dir, image_size, cache_dir, workers, progress)
    return built.tensor(), built.bad


def make_batches(images, image_list, image_dir, indices, batch_size, device, image_size, train,
                 seed, workers, rank=0, world=1):
    """Batches of ``indices`` from the cache tensor ``images``, or (None) the PIL pipeline."""
    common = dict(device=device, image_size=image_size, train=train, seed=seed, rank=rank,
                  world=world)
    if images is not None:
        return CachedBatches(images, image_list.labels, indices, batch_size, **common)
    return PilBatches(image_list, image_dir, indices, batch_size, workers=workers, **common)


def unusable_report(image_list, bad, strict, warn):
    """Report images that cannot be used, once; with ``strict`` they are an error."""
    names = {image_list.files[i]: why for i, why in sorted(bad.items())}
    if names:
        listing = ", ".join(f"{n} ({why})" for n, why in list(names.items())[:5])
        summary = (f"{len(names)} of {len(image_list)} images in {image_list.path} cannot be "
                   f"used: {listing}{', ...' if len(names) > 5 else ''}")
        if strict:
            raise Coco4Error(summary + "; fix or remove them, or drop --strict to leave them out")
        if len(names) == len(image_list):
            raise Coco4Error(summary + "; no image is left to train on: check --coco-root")
        warn(f"warning: {summary}; they are left out of this run")
    return {"listed_images": len(image_list), "left_out": names}


def _place(images, device):
    """Keep the whole uint8 cache on the GPU when it fits easily (4,600 images at 256 px are
    0.9 GB): then a batch is one on-device gather, no host copy at all."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() < 0.25 * free:
            return images.to(device)
    return images
