"""The test suite's own backbone, registered as ``--arch tiny``: ResNet's module names (conv1,
bn1, layer1..layer4, fc) and its 32x downsampling, at about 10k parameters with the original
head. Where the backbone is not what a test is about (resume, interrupts, balance, evaluation,
prediction, export, calibration), an epoch on the demo data costs a second and a 100 KB file
instead of ResNet-50's 35 CPU-seconds and 277 MB. The way detectron2's engine tests register a
small model; importing this module registers it (conftest.py does, and so does
``tests/scripts/with_tiny.py`` for the scripts a test runs as processes)."""
import torch
from torch import nn

from coco4.model import ARCHITECTURES, RESNET_FROZEN, ArchSpec

NAME = "tiny"


def _stage(inputs: int, outputs: int) -> nn.Sequential:
    """One stride-2 convolution with BatchNorm, as a ResNet stage halves the map."""
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU())


class TinyResNet(nn.Module):
    def __init__(self, weights=None):  # torchvision's builder signature; never pretrained
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 32)
        self.layer2 = _stage(32, 64)
        self.layer3 = _stage(64, 64)
        self.layer4 = _stage(64, 128)
        self.fc = nn.Linear(128, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


ARCHITECTURES.setdefault(NAME, ArchSpec(NAME, TinyResNet, None, 128, "fc", RESNET_FROZEN,
                                        "layer4"))
