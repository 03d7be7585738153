"""The original project's image protocol, and its batched on-device twin.

Train: Resize((256, 256)) -> RandomResizedCrop(224) -> horizontal flip -> ImageNet normalisation.
Eval:  Resize((256, 256)) -> normalisation (no centre crop: the original evaluated at 256 px).
``image_size`` scales the whole protocol (the pre-crop size stays 256/224 of it) for CPU runs.
"""
import math

import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def precrop_size(image_size):
    """Side of the square every image is first resized to: 256 at the default 224."""
    return int(round(image_size * 256 / 224))


def pil_train_transform(image_size):
    return T.Compose([T.Resize((precrop_size(image_size),) * 2), T.RandomResizedCrop(image_size),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def pil_eval_transform(image_size):
    return T.Compose([T.Resize((precrop_size(image_size),) * 2), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def pil_resize(image, size):
    """The deterministic first step of both protocols, to ``size`` x ``size``; the cache stores it."""
    return T.functional.resize(image, [size, size])


def normalize_uint8(batch, dtype=torch.float32):
    """uint8 (or 0..255 float) NCHW -> normalised float, as ToTensor + Normalize would give."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1) * 255
    return ((batch.float() - mean) / std).to(dtype)


def random_resized_crop_boxes(n, height, width, generator):
    """Crop boxes (top, left, h, w) for ``n`` images, drawn as torchvision's RandomResizedCrop.

    Same distribution as ``RandomResizedCrop.get_params``: up to 10 tries of an area fraction in
    ``RRC_SCALE`` and a log-uniform aspect ratio in ``RRC_RATIO``; the first box that fits wins;
    when none fits, the centre crop clamped to the ratio range. Vectorised over images and tries.
    """
    tries = 10
    area = height * width * torch.empty(n, tries).uniform_(*RRC_SCALE, generator=generator)
    log_ratio = torch.empty(n, tries).uniform_(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]),
                                               generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
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


def _fallback_size(height, width):
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        return int(round(width / RRC_RATIO[0])), width
    if in_ratio > RRC_RATIO[1]:
        return height, int(round(height * RRC_RATIO[1]))
    return height, width


def augment_batch(images_u8, image_size, generator, dtype=torch.float32):
    """Random-resized-crop, flip and normalise a uint8 NCHW batch in one go on its device.

    roi_align with one sample per output pixel is bilinear resampling of every crop in a single
    batched kernel. Crops come from the pre-crop square (256 px for 224), so they are shrunk by
    at most 256/224 and PIL's antialiasing would change next to nothing. Normalising after the
    crop is exact (bilinear weights sum to 1) and touches fewer pixels.
    """
    from torchvision.ops import roi_align

    n, _, height, width = images_u8.shape
    boxes = random_resized_crop_boxes(n, height, width, generator).float()
    flip = torch.rand(n, generator=generator) < 0.5
    top, left, h, w = boxes.unbind(1)
    rois = torch.stack([torch.arange(n).float(), left, top, left + w, top + h], 1)
    x = images_u8.float()
    out = roi_align(x, rois.to(x.device), (image_size, image_size), spatial_scale=1.0,
                    sampling_ratio=1, aligned=True)
    out = torch.where(flip.to(x.device).view(n, 1, 1, 1), out.flip(3), out)
    return normalize_uint8(out, dtype)
