"""ResNet-50 with the original project's head; stem, layer1 and layer2 frozen."""
import torch
from torch import nn
from torchvision.models import ResNet, ResNet50_Weights
from torchvision.models.resnet import Bottleneck

from .errors import Coco4Error

FROZEN = ("conv1", "bn1", "layer1", "layer2")
TRAINED = ("layer3", "layer4", "fc")


class ResNet50Classifier(ResNet):
    """torchvision's ResNet-50 (same parameter names, so its weights load) with frozen low layers.

    ``train()`` keeps the frozen part in eval mode: their BatchNorm running statistics are part of
    the pre-trained features and must not drift towards a 4-class dataset.
    """

    def __init__(self, num_classes):
        super().__init__(Bottleneck, [3, 4, 6, 3])
        # the original head, layer for layer, so its published checkpoints load (fc.0.*, fc.3.*)
        self.fc = nn.Sequential(nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(0.5),
                                nn.Linear(256, num_classes))
        for name in FROZEN:
            getattr(self, name).requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        for name in FROZEN:
            getattr(self, name).eval()
        return self


def build_model(weights, num_classes):
    """ResNet-50 for ``num_classes``; ``weights`` is "imagenet", "none" or a local .pth path.

    A path holds torchvision's ImageNet resnet50 state dict as torchvision saves it (for offline
    machines; its 1000-class fc is dropped), or any coco4 or original checkpoint to start from.
    """
    model = ResNet50Classifier(num_classes)
    if weights == "imagenet":
        try:
            state = ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=True)
        except (OSError, RuntimeError) as e:  # no network, proxy, or a corrupt download
            raise Coco4Error(f"could not download torchvision's ImageNet weights ({e}); on an "
                             "offline machine save them elsewhere and pass --weights "
                             "resnet50.pth (see README)") from None
        load_backbone(model, state, "torchvision ImageNet weights")
    elif weights not in (None, "none"):
        from .checkpoint import load_model_weights  # checkpoint imports model: import late

        load_model_weights(model, weights)
    return model


def state_mismatch(expected, state):
    """What of ``state`` does not fit the state dict ``expected`` (keys, shapes), or None."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} is {list(state[k].shape)}, expected {list(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [missing and f"{len(missing)} missing keys ({missing[0]}, ...)",
                unexpected and f"{len(unexpected)} unexpected keys ({unexpected[0]}, ...)",
                wrong and wrong[0]]
    return "; ".join(p for p in problems if p) or None


def load_backbone(model, state, source):
    """Load every parameter but the classifier head, which the new task replaces."""
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    problem = state_mismatch(expected, backbone)
    if problem:
        raise Coco4Error(f"{source} do not fit a ResNet-50: {problem}")
    model.load_state_dict(backbone, strict=False)


def trainable_parameters(model):
    return [p for p in model.parameters() if p.requires_grad]


def unwrap(model):
    """The bare model under DistributedDataParallel or torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def num_classes_of(state_dict):
    weight = state_dict.get("fc.3.weight")
    return None if weight is None else int(weight.shape[0])


def is_imagenet_state(state):
    return isinstance(state, dict) and isinstance(state.get("fc.weight"), torch.Tensor)
