"""TrivialAugment Wide, RandAugment and random erasing, per image on the device batch.

torchvision's TrivialAugmentWide and RandAugment draw one operation per call: given a batch,
every image gets the same one. Here each image draws its own operation, magnitude and sign (as
the per-image PIL transforms of torchvision's references do), from the step's generator, so a
resumed run augments what an uninterrupted one did; images drawing the same operation are then
transformed together, with their own magnitudes: about fifteen batched kernels a step, whatever
the batch size. Every draw is made on the host and reaches a GPU through pinned memory, so
the host never waits for the GPU here. Each operation gives what
torchvision.transforms.v2.functional gives for that
image and magnitude (tests/test_image_augment.py compares them), with torchvision's references'
bilinear interpolation and black fill.

Random erasing follows torchvision's RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3),
value=0). The references erase after normalising, so 0 there is the mean colour: here, before
the model normalises, the box is filled with that mean as uint8 pixels.
"""
import math

import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from .data.loaders import to_device
from .data.transforms import candidate_sides

AUTO_AUGMENT_POLICIES = ("none", "ta_wide", "ra")
NUM_BINS = 31  # torchvision's num_magnitude_bins
RA_NUM_OPS, RA_MAGNITUDE = 2, 9  # torchvision's RandAugment defaults (the references' too)
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)
CHUNK = 256  # images transformed at once: bounds the float copies of a 2048-image batch


def _linspace(end: float) -> torch.Tensor:
    return torch.linspace(0.0, end, NUM_BINS)


def _posterize_bits(levels: int) -> torch.Tensor:
    return (8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / levels))).round()


def magnitude_table(policy: str, size: int) -> dict[str, tuple[torch.Tensor | None, bool]]:
    """Each operation's NUM_BINS magnitudes and whether it takes a random sign: torchvision's
    ``_AUGMENTATION_SPACE`` of the policy, for square images of side ``size``."""
    wide = policy == "ta_wide"
    strength, shear = (0.99, 0.99) if wide else (0.9, 0.3)
    shift = 32.0 if wide else 150.0 / 331.0 * size
    return {
        "Identity": (None, False),
        "ShearX": (_linspace(shear), True),
        "ShearY": (_linspace(shear), True),
        "TranslateX": (_linspace(shift), True),
        "TranslateY": (_linspace(shift), True),
        "Rotate": (_linspace(135.0 if wide else 30.0), True),
        "Brightness": (_linspace(strength), True),
        "Color": (_linspace(strength), True),
        "Contrast": (_linspace(strength), True),
        "Sharpness": (_linspace(strength), True),
        "Posterize": (_posterize_bits(6 if wide else 4), False),
        "Solarize": (torch.linspace(1.0, 0.0, NUM_BINS), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


class ImageAugment:
    """A batch transform: (uint8 NCHW images, labels, generator) -> (augmented images, labels).

    ``policy``: "ta_wide" (one operation an image, a random magnitude), "ra" (two an image, at
    magnitude 9 of 31) or "none"; ``erase``: each image's chance of a random erasing box;
    ``fill``: the box's colour (the normalisation mean, uint8).
    """

    def __init__(self, policy: str, erase: float = 0.0, fill: tuple[int, int, int] = (0, 0, 0)):
        if policy not in AUTO_AUGMENT_POLICIES:
            raise ValueError(f"unknown auto-augment policy {policy!r}")
        self.policy, self.erase, self.fill = policy, erase, fill

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.clone()  # transformed in place; the caller's batch stays as it was
        rounds = {"none": 0, "ta_wide": 1, "ra": RA_NUM_OPS}[self.policy]
        table = magnitude_table(self.policy, images.shape[-1])
        for _ in range(rounds):
            ops, magnitudes = draw_operations(table, len(images), self.policy, generator)
            apply_operations(images, ops, magnitudes, list(table))
        if self.erase > 0:
            erase_boxes(images, self.erase, self.fill, generator)
        return images, labels


def draw_operations(table: dict, n: int, policy: str,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each of ``n`` images' operation (an index into ``table``) and signed magnitude, drawn as
    torchvision draws them for one image: the operation, the magnitude's bin (TrivialAugment;
    RandAugment's is fixed), the sign (half the time negative, for the signed operations)."""
    ops = torch.randint(len(table), (n,), generator=generator)
    bins = (torch.randint(NUM_BINS, (n,), generator=generator) if policy == "ta_wide"
            else torch.full((n,), RA_MAGNITUDE))
    negative = torch.rand(n, generator=generator) <= 0.5
    values = torch.stack([m.double() if m is not None else torch.zeros(NUM_BINS, dtype=torch.double)
                          for m, _ in table.values()])
    signed = torch.tensor([s for _, s in table.values()])
    magnitudes = values[ops, bins]
    return ops, torch.where(signed[ops] & negative, -magnitudes, magnitudes)


def apply_operations(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor,
                     names: list[str]) -> None:
    """Transform ``images`` in place: image i by operation ``names[ops[i]]`` at
    ``magnitudes[i]``; the images of one operation together, CHUNK at a time."""
    for k, name in enumerate(names):
        if name == "Identity":
            continue
        rows = torch.nonzero(ops == k).flatten()
        for chunk in rows.split(CHUNK):
            index = to_device(chunk, images.device)
            images[index] = OPERATIONS[name](images[index], magnitudes[chunk])


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image float32 factors (drawn on the host), shaped to broadcast over a batch of
    images on ``like``'s device."""
    return to_device(values.float(), like.device).view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``, with one ratio per image (its complement taken in double, as
    torchvision's Python float is); truncated to uint8 as it does."""
    mixed = images * _per_image(ratio, images)
    # one fused multiply-add, as add_'s alpha is: a separate product rounds differently
    mixed.addcmul_(other, _per_image(1.0 - ratio, images))
    return mixed.clamp_(0, 255).to(torch.uint8)


def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1).floor_()


def brightness(images, m):
    return (images * _per_image(1.0 + m, images)).clamp_(0, 255).to(torch.uint8)


def color(images, m):
    return _blend(images, _gray(images), 1.0 + m)


def contrast(images, m):
    return _blend(images, _gray(images).mean(dim=(1, 2, 3), keepdim=True), 1.0 + m)


def sharpness(images, m):
    """torchvision's adjust_sharpness: the image blended with a smoothed copy, borders kept."""
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = to_device(torch.tensor([[a, a, a], [a, b, a], [a, a, a]]), images.device)
    out = images.float()
    blurred = F.conv2d(out, kernel.expand(3, 1, 3, 3), groups=3).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.addcmul_(blurred.sub_(inner), _per_image(1.0 - (1.0 + m), images))
    return out.clamp_(0, 255).to(torch.uint8)


def posterize(images, m):
    bits = m.long().tolist()
    masks = torch.tensor([255 if b >= 8 else ((1 << b) - 1) << (8 - b) for b in bits],
                         dtype=torch.uint8)
    return images & to_device(masks, images.device).view(-1, 1, 1, 1)


def solarize(images, m):
    threshold = _per_image(255.0 * m, images)
    return torch.where(images >= threshold, 255 - images, images)


def autocontrast(images):
    """torchvision's autocontrast (each channel stretched to 0-255) with torch.where where it
    assigns through a boolean mask, which would make the host wait for the GPU."""
    float_images = images.float()
    low = float_images.amin(dim=(-2, -1), keepdim=True)
    high = float_images.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    scale = torch.where(flat, 1.0, (high - low) * (1.0 / 255))
    low = torch.where(flat, 0.0, low)
    return float_images.sub_(low).div_(scale).clamp_(0, 255).to(torch.uint8)


def _affine(images: torch.Tensor, matrices: list[list[float]]) -> torch.Tensor:
    """torchvision's affine_image on each image with its own inverse matrix: the same sampling
    grid (pixel centres, align_corners=False), bilinear, black outside, rounded."""
    n, _, h, w = images.shape
    theta = torch.tensor(matrices, dtype=torch.float32).view(n, 2, 3)
    # torchvision's grid: output pixel centres (x, y, 1) times theta, divided by half the size
    scaled = to_device(theta.transpose(1, 2).div(torch.tensor([0.5 * w, 0.5 * h])),
                       images.device)
    base = torch.empty(1, h, w, 3, device=images.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=images.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h,
                                      device=images.device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(scaled).view(n, h, w, 2)
    sampled = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return sampled.round_().to(torch.uint8)


def inverse_affine(center: tuple[float, float], angle: float, translate: tuple[float, float],
                   shear: tuple[float, float]) -> list[float]:
    """torchvision's ``_get_inverse_affine_matrix`` at scale 1, in the same double arithmetic:
    the matrix taking each output pixel to where it samples the input."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += cx - matrix[0] * (cx + tx) - matrix[1] * (cy + ty)
    matrix[5] += cy - matrix[3] * (cx + tx) - matrix[4] * (cy + ty)
    return matrix


def _shear(images, m, axis):
    corner = (-images.shape[-1] * 0.5, -images.shape[-2] * 0.5)  # torchvision's center=[0, 0]
    angles = [math.degrees(math.atan(v)) for v in m.tolist()]
    return _affine(images, [inverse_affine(corner, 0.0, (0.0, 0.0),
                                           (s, 0.0) if axis == 0 else (0.0, s)) for s in angles])


def _translate(images, m, axis):
    shifts = [float(int(v)) for v in m.tolist()]
    return _affine(images, [inverse_affine((0.0, 0.0), 0.0, (s, 0.0) if axis == 0 else (0.0, s),
                                           (0.0, 0.0)) for s in shifts])


def rotate(images, m):
    """torchvision's rotate: quarter turns exactly (rot90), other angles by the affine grid."""
    angles = [v % 360 for v in m.tolist()]
    out = _affine(images, [inverse_affine((0.0, 0.0), -a, (0.0, 0.0), (0.0, 0.0))
                           for a in angles])
    for i, a in enumerate(angles):
        if a in (0, 90, 180, 270):
            out[i] = torch.rot90(images[i], k=int(a) // 90, dims=(-2, -1))
    return out


OPERATIONS = {
    "ShearX": lambda x, m: _shear(x, m, 0), "ShearY": lambda x, m: _shear(x, m, 1),
    "TranslateX": lambda x, m: _translate(x, m, 0),
    "TranslateY": lambda x, m: _translate(x, m, 1),
    "Rotate": rotate, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Sharpness": sharpness, "Posterize": posterize, "Solarize": solarize,
    "AutoContrast": lambda x, m: autocontrast(x), "Equalize": lambda x, m: TF.equalize(x),
}


def erase_boxes(images: torch.Tensor, p: float, fill: tuple[int, int, int],
                generator: torch.Generator) -> None:
    """RandomErasing per image: with chance ``p``, a box of 2-33% of the area and an aspect
    ratio in (0.3, 3.3), drawn as torchvision's get_params (the first of 10 tries that fits;
    none: no box), filled with ``fill``, in place."""
    n, _, height, width = images.shape
    erased = torch.rand(n, generator=generator) < p
    h, w = candidate_sides(n, height * width, ERASE_SCALE, ERASE_RATIO, generator)
    fits = (h < height) & (w < width)
    first = fits.float().argmax(1)
    rows = torch.arange(n)
    h, w = h[rows, first], w[rows, first]
    erased &= fits.any(1)
    u = torch.rand(n, 2, generator=generator)
    top = (u[:, 0] * (height - h + 1)).long()
    left = (u[:, 1] * (width - w + 1)).long()
    device = images.device
    # one host-to-device copy: (top, bottom, left, right), and no box where none is drawn
    box = to_device(torch.stack([top, top + h, left, left + w]) * erased, device).view(4, -1, 1, 1)
    y = torch.arange(height, device=device).view(1, height, 1)
    x = torch.arange(width, device=device).view(1, 1, width)
    inside = (y >= box[0]) & (y < box[1]) & (x >= box[2]) & (x < box[3])
    for channel, value in enumerate(fill):  # in place: the batch keeps its memory layout
        images[:, channel].masked_fill_(inside, value)
