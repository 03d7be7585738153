"""The architecture registry: the original head on every backbone, frozen stems with their
BatchNorm statistics, torchvision's parameter names, and normalisation inside the model."""
import pytest
import tiny_backbone
import torch
import torchvision
from torch import nn
from torchvision import transforms as T

from coco4.errors import Coco4Error
from coco4.model import ARCHITECTURES, arch_spec, build_model, trainable_parameters

# Per architecture, written from torchvision's own module layout (not from coco4.model): the
# head's submodule, the width of the features it reads, the top-level parts that train, and
# the modules frozen. Adding an architecture to coco4.model.ARCHITECTURES means a line here.
EXPECTED = {
    "resnet50": ("fc", 2048, ("layer3", "layer4", "fc"), ("conv1", "bn1", "layer1", "layer2")),
    "resnet18": ("fc", 512, ("layer3", "layer4", "fc"), ("conv1", "bn1", "layer1", "layer2")),
    "resnet101": ("fc", 2048, ("layer3", "layer4", "fc"), ("conv1", "bn1", "layer1", "layer2")),
    "convnext_tiny": ("classifier.2", 768, ("features.4", "features.5", "features.6",
                                            "features.7", "classifier"),
                      ("features.0", "features.1", "features.2", "features.3")),
}


def test_every_registered_architecture_has_its_expectations():
    # the test suite's own backbone (tests/tiny_backbone.py) aside: it is registered by the tests
    assert set(ARCHITECTURES) - {tiny_backbone.NAME} == set(EXPECTED)
    assert "resnet50" in ARCHITECTURES  # the default, the original recipe


def under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_original_head_frozen_stem_and_torchvision_names(arch):
    head, features, trained, frozen = EXPECTED[arch]
    torch.manual_seed(0)
    model = build_model(arch, 4)
    reference = getattr(torchvision.models, arch)(weights=None)
    # the head replaces torchvision's classifier Linear, reading the same features
    assert reference.get_submodule(head).in_features == features
    fc = model.net.get_submodule(head)
    assert [type(m) for m in fc] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (fc[0].in_features, fc[0].out_features, fc[2].p, fc[3].out_features) == (
        features, 256, 0.5, 4)
    # file keys are torchvision's, with the head's four tensors in place of its Linear
    ours, theirs = model.net.state_dict(), reference.state_dict()
    head_keys = {f"{head}.{k}" for k in ("0.weight", "0.bias", "3.weight", "3.bias")}
    assert set(ours) == (set(theirs) - {f"{head}.weight", f"{head}.bias"}) | head_keys
    # what trains: everything under the trained parts, nothing under the frozen ones
    named = dict(model.net.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n in named if under(n, trained)}
    assert not any(under(n, frozen) for n in trainable)
    assert {id(p) for p in trainable_parameters(model)} == {id(named[n]) for n in trainable}
    assert model.num_classes == 4
    assert isinstance(model.net.get_submodule(model.spec.cam_layer), nn.Module)


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_train_mode_keeps_the_frozen_part_in_eval(arch):
    model = build_model(arch, 4)
    frozen = EXPECTED[arch][3]
    for _ in range(2):  # a second switch still keeps them frozen
        model.train()
        assert model.training
        for name, module in model.net.named_modules():
            if under(name, frozen):
                assert not module.training, name
            elif under(name, EXPECTED[arch][2]):
                assert module.training, name
        model.eval()
        assert not any(m.training for m in model.modules())


def test_train_forward_updates_only_unfrozen_bn_statistics():
    torch.manual_seed(0)
    m = build_model("resnet50", 4)
    m.train()
    before = {k: v.clone() for k, v in m.net.state_dict().items() if "running_mean" in k}
    out = m(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (2, 4)
    after = m.net.state_dict()
    assert not torch.equal(after["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])
    assert not torch.equal(after["layer4.2.bn3.running_mean"], before["layer4.2.bn3.running_mean"])
    for k in before:
        if under(k, EXPECTED["resnet50"][3]):
            assert torch.equal(after[k], before[k]), k
    assert int(after["layer1.0.bn1.num_batches_tracked"]) == 0
    assert int(after["layer3.0.bn1.num_batches_tracked"]) == 1


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_normalisation_is_what_the_torchvision_weights_expect(arch):
    """torchvision's weights metadata (their own eval transform) against the spec."""
    spec = arch_spec(arch)
    expected = spec.weights.transforms()
    assert spec.mean == pytest.approx(tuple(expected.mean), abs=1e-9)
    assert spec.std == pytest.approx(tuple(expected.std), abs=1e-9)


def test_the_model_normalises_pixels_itself():
    """A known pixel against numbers worked by hand: (value / 255 - mean) / std, with
    ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), in RGB order."""
    model = build_model("resnet50", 4)
    model.net = nn.Identity()  # what reaches the network
    pixel = torch.tensor([255, 0, 128], dtype=torch.uint8).view(1, 3, 1, 1)
    got = model(pixel).flatten().tolist()
    assert got == pytest.approx([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224,
                                 (128 / 255 - 0.406) / 0.225], abs=1e-5)
    assert got == pytest.approx([2.24891, -2.03571, 0.42649], abs=1e-4)
    # float pixels in [0, 255] are the same input as uint8 ones
    assert model(pixel.float()).flatten().tolist() == got


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_pixels_are_normalised_straight_to_its_dtype(dtype):
    """No full-batch fp32 copy for autocast to convert again: the network gets the autocast
    dtype, within that dtype's rounding of torchvision's Normalize."""
    model = build_model("resnet50", 4)
    model.net = nn.Identity()
    pixels = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    # ImageNet's statistics, as published with torchvision's weights
    expected = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(pixels.float() / 255)
    with torch.autocast("cpu", dtype=dtype):
        got = model(pixels)
    assert got.dtype == dtype
    assert (got.float() - expected).abs().max() < 0.04  # 2.6 at most: a few bf16 steps
    assert model(pixels).dtype == torch.float32  # no autocast: fp32, as before


def test_unknown_architecture_is_a_one_line_error():
    with pytest.raises(Coco4Error,
                       match=r"unknown architecture 'resnet5'; choose one of .*resnet50"):
        build_model("resnet5", 4)


def test_building_a_model_reads_nothing(monkeypatch):
    """No download, no file: weights are loaded by coco4.checkpoint only."""
    def refuse(*args, **kwargs):
        raise AssertionError("build_model did I/O")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    for arch in ARCHITECTURES:  # the patched loaders fail the test if anything is read
        model = build_model(arch, 3)
        assert model.num_classes == 3 and model.spec.name == arch
