"""The original project's image protocol, and its batched on-device twin.

Train: Resize((256, 256)) -> RandomResizedCrop(224) -> horizontal flip.
Eval:  Resize((256, 256)) (no centre crop: the original evaluated at 256 px).
``image_size`` scales the whole protocol (the pre-crop size stays 256/224 of it) for CPU runs.
Every path ends in uint8 pixels (a quarter of the bytes to move); the model normalises them
itself (coco4.model), with the statistics its architecture's weights expect.
"""
import contextlib
import math

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def precrop_size(image_size: int) -> int:
    """Side of the square every image is first resized to: 256 at the default 224."""
    return int(round(image_size * 256 / 224))


def pil_train_transform(image_size: int) -> T.Compose:
    return T.Compose([T.Resize((precrop_size(image_size),) * 2), T.RandomResizedCrop(image_size),
                      T.RandomHorizontalFlip(), T.PILToTensor()])


def pil_eval_transform(image_size: int) -> T.Compose:
    return T.Compose([T.Resize((precrop_size(image_size),) * 2), T.PILToTensor()])


def pil_resize(image: Image.Image, size: int) -> Image.Image:
    """The deterministic first step of both protocols, to ``size`` x ``size``: what the cache
    stores."""
    return T.functional.resize(image, [size, size])


def random_resized_crop_boxes(n: int, height: int, width: int,
                              generator: torch.Generator) -> torch.Tensor:
    """Crop boxes (top, left, h, w) for ``n`` images, drawn as torchvision's RandomResizedCrop.

    Same distribution as ``RandomResizedCrop.get_params``: up to 10 tries of an area fraction in
    ``RRC_SCALE`` and a log-uniform aspect ratio in ``RRC_RATIO``; the first box that fits wins;
    when none fits, the centre crop clamped to the ratio range. Vectorised over images and tries.
    """
    w, h = candidate_sides(n, height * width, RRC_SCALE, RRC_RATIO, generator)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    h, w = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
    fh, fw = _fallback_size(height, width)
    found = first >= 0
    h, w = torch.where(found, h, fh), torch.where(found, w, fw)
    u = torch.rand(n, 2, generator=generator)
    # randint(0, H - h + 1) as a scaled uniform: the same uniform choice over the offsets
    top = torch.where(found, (u[:, 0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(found, (u[:, 1] * (width - w + 1)).long(), (width - w) // 2)
    return torch.stack([top, left, h, w], 1)


def candidate_sides(n: int, area: int, scale: tuple, ratio: tuple, generator: torch.Generator,
                    tries: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``tries`` candidate boxes for each of ``n`` images, drawn as torchvision's
    RandomResizedCrop and RandomErasing draw theirs: a share of ``area`` in ``scale``, a
    log-uniform aspect ratio in ``ratio``; the sides (round(sqrt(a * r)), round(sqrt(a / r))),
    each [n, tries]."""
    areas = area * torch.empty(n, tries).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                      generator=generator))
    return (torch.round(torch.sqrt(areas * aspect)).long(),
            torch.round(torch.sqrt(areas / aspect)).long())


def _fallback_size(height, width):
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        return int(round(width / RRC_RATIO[0])), width
    if in_ratio > RRC_RATIO[1]:
        return height, int(round(height * RRC_RATIO[1]))
    return height, width


def random_crops(n: int, height: int, width: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes (as ``random_resized_crop_boxes``) and horizontal-flip flags for ``n`` images."""
    boxes = random_resized_crop_boxes(n, height, width, generator)
    return boxes, torch.rand(n, generator=generator) < 0.5


def resized_crops(images_u8: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int,
                  chunk: int = 128) -> torch.Tensor:
    """Crop, resize to ``size`` and flip a uint8 NCHW batch with batched kernels (for GPUs).

    roi_align with one sample per output pixel is bilinear resampling of every crop at once.
    Crops come from the pre-crop square (256 px for 224), so they are shrunk by at most 256/224:
    antialiasing would change next to nothing. Rounded back to uint8, as PIL's output is, in
    an NCHW-shaped batch with channels_last strides.
    ``chunk`` images at a time: the float copies of a whole batch of 2048 would take about
    7 GB, more than a micro-batch's training step on a GPU small enough to need --accum-steps.
    """
    from torchvision.ops import roi_align

    n, device = len(images_u8), images_u8.device
    top, left, h, w = boxes.to(device).float().unbind(1)  # no-ops when the caller moved them
    flips = flips.to(device).view(n, 1, 1, 1)
    # channels_last, the layout the model's convolutions run in: no copy of the batch later
    out = torch.empty(n, size, size, 3, dtype=torch.uint8, device=device).permute(0, 3, 1, 2)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        rois = torch.stack([torch.arange(e - s, device=device).float(), left[s:e], top[s:e],
                            left[s:e] + w[s:e], top[s:e] + h[s:e]], 1)
        crops = roi_align(images_u8[s:e].contiguous().float(), rois, (size, size),
                          spatial_scale=1.0, sampling_ratio=1, aligned=True)
        crops = torch.where(flips[s:e], crops.flip(3), crops)
        out[s:e] = crops.round_().clamp_(0, 255)
    return out


def resized_crops_each(images_u8: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor,
                       flips: torch.Tensor, size: int) -> torch.Tensor:
    """The same crops, one image at a time straight from the (memory-mapped) cache (for CPUs).

    On a CPU, torch's antialiased uint8 resize (what torchvision's tensor transforms use) is
    several times faster than roi_align in float, and fastest on channels_last images, the
    cache's layout; slicing the cache avoids gathering whole pre-crop images first.
    Returns an NCHW-shaped batch with channels_last strides.
    """
    out = torch.empty(len(rows), size, size, 3, dtype=torch.uint8)
    with one_thread():
        for i, (row, (top, left, h, w), flip) in enumerate(zip(rows.tolist(), boxes.tolist(),
                                                               flips.tolist())):
            crop = images_u8[row:row + 1, :, top:top + h, left:left + w]
            resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
            resized = resized[0].permute(1, 2, 0)  # HWC: a plain copy from channels_last
            out[i] = resized.flip(1) if flip else resized
    return out.permute(0, 3, 1, 2)


@contextlib.contextmanager
def one_thread():
    """torch's own ops in this thread only, for the block. An op on one small image split
    over the intra-op threads ends in a barrier that waits for the slowest of them: when
    another process holds a core, that is a descheduled thread. With one busy process on a
    2-core VM the fast path ran at 720 images/s on 2 threads, 2,219 on one (coco4.bench
    --load 1); quiet, 4,671 and 5,023."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
