"""The classifier: a registry of torchvision backbones, each given the original project's head,
a frozen stem and first stages, and its input normalisation inside the network.

The model is the whole function from pixels to logits: it takes uint8 (or float) NCHW images in
[0, 255] and normalises them itself, so an exported model, a notebook or a user's script needs no
preprocessing constants. Building a model does no I/O; weights are loaded by coco4.checkpoint.

Adding an architecture is one ``ArchSpec`` entry in ``ARCHITECTURES`` (and a line in its test).
"""
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tv

from .errors import Coco4Error

# ImageNet statistics, which every registered torchvision weight set was trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_FROZEN = ("conv1", "bn1", "layer1", "layer2")


@dataclass(frozen=True)
class ArchSpec:
    """What coco4 needs to know about one torchvision architecture."""

    name: str
    constructor: Callable[..., nn.Module]  # torchvision's builder, called with weights=None
    weights: tv.WeightsEnum  # the ImageNet weights that ``--weights imagenet`` downloads
    features: int  # width of the pooled features the head reads
    head: str  # the submodule the original head replaces (torchvision's classifier)
    frozen: tuple[str, ...]  # stem and first stages: no gradient, BatchNorm kept in eval mode
    cam_layer: str  # the last feature map, which a class-activation map reads
    mean: tuple[float, float, float] = IMAGENET_MEAN  # what the weights expect, in [0, 1] units
    std: tuple[float, float, float] = IMAGENET_STD


ARCHITECTURES = {spec.name: spec for spec in (
    # the original recipe: stem, layer1 and layer2 frozen; layer3, layer4 and the head trained
    ArchSpec("resnet50", tv.resnet50, tv.ResNet50_Weights.IMAGENET1K_V2, 2048, "fc",
             RESNET_FROZEN, "layer4"),
    ArchSpec("resnet18", tv.resnet18, tv.ResNet18_Weights.IMAGENET1K_V1, 512, "fc",
             RESNET_FROZEN, "layer4"),
    ArchSpec("resnet101", tv.resnet101, tv.ResNet101_Weights.IMAGENET1K_V2, 2048, "fc",
             RESNET_FROZEN, "layer4"),
    # features[0] is the stem, [1] [3] [5] [7] the four stages, [2] [4] [6] the downsampling
    # between them: the stem and the first two stages frozen, as ResNet's stem, layer1, layer2
    ArchSpec("convnext_tiny", tv.convnext_tiny, tv.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, 768,
             "classifier.2", ("features.0", "features.1", "features.2", "features.3"),
             "features.7"),
)}
DEFAULT_ARCH = "resnet50"


def arch_spec(name: str) -> ArchSpec:
    if name not in ARCHITECTURES:
        raise Coco4Error(f"unknown architecture {name!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def original_head(features: int, num_classes: int) -> nn.Sequential:
    """The original project's head, layer for layer, so its checkpoints load (fc.0.*, fc.3.*)."""
    return nn.Sequential(nn.Linear(features, 256), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(256, num_classes))


class Classifier(nn.Module):
    """Normalisation, a torchvision backbone and the original head: pixels in, logits out.

    ``net`` is the torchvision network with its own parameter names; its state dict is what
    checkpoint files hold. ``train()`` keeps the frozen part in eval mode: its BatchNorm
    statistics belong to the pre-trained features and must not drift towards a 4-class set.
    """

    def __init__(self, spec: ArchSpec, num_classes: int):
        super().__init__()
        self.spec = spec
        self.net = spec.constructor(weights=None)
        self.net.set_submodule(spec.head, original_head(spec.features, num_classes))
        # (pixel - mean) / std as pixel * scale + shift, one fused pass; not persistent: they
        # come from the spec, and files keep torchvision's keys
        mean, std = _pixel_scale(spec.mean), _pixel_scale(spec.std)
        self.register_buffer("scale", 1 / std, persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)
        for name in spec.frozen:
            self.net.get_submodule(name).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # cudnn's fastest convolutions, under AMP especially, are NHWC; laid out
            x = x.contiguous(memory_format=torch.channels_last)  # while uint8: 1/4 of the bytes
        return self.net(self.normalise(x))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (uint8, or floats in [0, 255]) to the network's input, keeping the layout.

        Straight into the dtype the first convolution runs in (bf16 or fp16 under autocast):
        a uint8 batch of 2048 at 224 px is converted once and scaled in one fused pass, not
        copied to fp32, shifted, divided and then converted again by autocast.
        """
        kind = x.device.type
        dtype = (torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind)
                 else torch.float32)
        return torch.addcmul(self.shift.to(dtype), x.to(dtype), self.scale.to(dtype))

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        for name in self.spec.frozen:
            self.net.get_submodule(name).eval()
        return self

    @property
    def num_classes(self) -> int:
        return self.net.get_submodule(self.spec.head)[-1].out_features


def _pixel_scale(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1) * 255


def build_model(arch: str, num_classes: int) -> Classifier:
    """A freshly initialised classifier (no I/O): ``coco4.checkpoint`` loads weights into it."""
    return Classifier(arch_spec(arch), num_classes)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel or torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
