"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on the device batch: each image is
mixed with its neighbour in the batch (the batch rolled by one, as torchvision's v2 MixUp and
CutMix pair them), and its target becomes the two classes' shares, soft targets that the
recipe's cross-entropy takes. ``--mixup-alpha`` and ``--cutmix-alpha`` set the Beta(a, a) the
share is drawn from; with both, each batch gets one of the two, as torchvision's RandomChoice.

Every draw comes from the step's own generator (coco4.training), so a resumed run mixes what
an uninterrupted one mixed. Images stay uint8: mixup rounds the blend back to whole pixel
values (at most half a level off), cutmix copies a box.
"""
import math

import numpy as np
import torch


class MixupCutmix:
    """A batch transform: (uint8 NCHW images, labels, generator) -> (images, soft targets)."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("MixupCutmix needs mixup_alpha or cutmix_alpha above 0")
        self.num_classes = num_classes
        self.kinds = [(kind, alpha) for kind, alpha in (("mixup", mixup_alpha),
                                                        ("cutmix", cutmix_alpha)) if alpha > 0]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        # numpy's Beta from the step's generator: torch draws Beta samples from its global RNG
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
        kind, alpha = self.kinds[int(rng.integers(len(self.kinds)))]
        share = float(rng.beta(alpha, alpha))
        other = images.roll(1, 0)
        if kind == "mixup":
            # one float copy of the batch, blended in place: three at batch 2048 are gigabytes
            mixed = images.float().mul_(share).add_(other, alpha=1 - share).round_()
            images = mixed.to(images.dtype).contiguous(memory_format=_layout(images))
        else:
            images, share = _cut_and_paste(images, other, share, rng)
        # scatter, not F.one_hot, which checks the labels' range on the host: a GPU sync
        onehot = torch.zeros(len(labels), self.num_classes, device=labels.device)
        onehot.scatter_(1, labels.view(-1, 1), 1.0)
        return images, onehot * share + onehot.roll(1, 0) * (1 - share)


def _layout(images: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if images.is_contiguous(memory_format=torch.channels_last)
            and not images.is_contiguous() else torch.contiguous_format)


def _cut_and_paste(images: torch.Tensor, other: torch.Tensor, share: float,
                   rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """CutMix: a box of about 1 - ``share`` of the area from ``other`` pasted into every image
    (one box for the batch, as torchvision's CutMix); the share each image keeps, recomputed
    from the box clipped at the borders."""
    height, width = images.shape[-2:]
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    half_h, half_w = int(height * math.sqrt(1 - share) / 2), int(width * math.sqrt(1 - share) / 2)
    top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
    left, right = max(cx - half_w, 0), min(cx + half_w, width)
    images = images.clone()
    images[..., top:bottom, left:right] = other[..., top:bottom, left:right]
    return images, 1 - (bottom - top) * (right - left) / (height * width)
