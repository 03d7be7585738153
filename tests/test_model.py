"""ResNet-50 with the original head: frozen low layers, torchvision names, local weight files."""
import pytest
import torch
import torchvision
from torch import nn

from coco4.errors import Coco4Error
from coco4.model import build_model, trainable_parameters

FROZEN = ("conv1", "bn1", "layer1", "layer2")
TRAINED = ("layer3", "layer4", "fc")
HEAD_KEYS = {"fc.0.weight", "fc.0.bias", "fc.3.weight", "fc.3.bias"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("none", 4)


@pytest.fixture(scope="module")
def imagenet_layout_state():
    """torchvision's resnet50 state dict, with every value distinct from a fresh init."""
    torch.manual_seed(123)
    state = torchvision.models.resnet50(weights=None).state_dict()
    for k, v in state.items():
        if v.is_floating_point() and "running_var" not in k:
            v.copy_(torch.randn_like(v) * 0.01)  # BN weights, biases, running means included
    return state


def test_only_layer3_layer4_fc_train(model):
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {name for name, _ in model.named_parameters() if name.split(".")[0] in TRAINED}
    assert trainable == expected
    assert any(n.startswith("layer3.") for n in trainable) and "fc.3.weight" in trainable
    for name in FROZEN:
        assert all(not p.requires_grad for p in getattr(model, name).parameters()), name
    ids = {id(p) for p in trainable_parameters(model)}
    assert ids == {id(p) for n, p in model.named_parameters() if n in expected}


def test_head_is_the_original_one(model):
    fc = model.fc
    assert isinstance(fc, nn.Sequential) and len(fc) == 4
    assert [type(m) for m in fc] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (fc[0].in_features, fc[0].out_features) == (2048, 256)
    assert (fc[3].in_features, fc[3].out_features) == (256, 4)
    assert fc[2].p == 0.5
    assert fc[0].weight.shape == (256, 2048) and fc[3].weight.shape == (4, 256)


def test_train_mode_keeps_frozen_part_in_eval(model):
    try:
        model.train()
        assert model.training
        for name in FROZEN:
            mods = list(getattr(model, name).modules())
            assert all(not m.training for m in mods), name
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.layer1.modules())
        for name in TRAINED:
            assert all(m.training for m in getattr(model, name).modules()), name
        model.eval()
        assert not any(m.training for m in model.modules())
        model.train()  # a second switch still keeps them frozen
        assert not model.layer2.training and not model.bn1.training and model.layer4.training
    finally:
        model.eval()


def test_train_forward_updates_only_unfrozen_bn_statistics():
    torch.manual_seed(0)
    m = build_model("none", 4)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items() if "running_mean" in k}
    out = m(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert out.shape == (2, 4)
    after = m.state_dict()
    assert not torch.equal(after["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])
    assert not torch.equal(after["layer4.2.bn3.running_mean"], before["layer4.2.bn3.running_mean"])
    for k in before:
        if k.split(".")[0] in FROZEN:
            assert torch.equal(after[k], before[k]), k
    assert int(after["layer1.0.bn1.num_batches_tracked"]) == 0
    assert int(after["layer3.0.bn1.num_batches_tracked"]) == 1


def test_state_dict_keys_are_torchvision_ones(model, imagenet_layout_state):
    tv = imagenet_layout_state
    ours = model.state_dict()
    assert set(ours) == (set(tv) - {"fc.weight", "fc.bias"}) | HEAD_KEYS
    for k, v in tv.items():
        if not k.startswith("fc."):
            assert ours[k].shape == v.shape, k


def test_load_imagenet_layout_pth(tmp_path, model, imagenet_layout_state):
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(imagenet_layout_state, path)
    torch.manual_seed(0)  # same seed as the fixture: the same fresh head
    loaded = build_model(str(path), 4)
    state = loaded.state_dict()
    for k, v in imagenet_layout_state.items():
        if not k.startswith("fc."):
            assert torch.equal(state[k], v), k
    assert torch.equal(state["layer4.2.conv3.weight"], imagenet_layout_state["layer4.2.conv3.weight"])
    assert not torch.equal(state["layer4.2.conv3.weight"], model.state_dict()["layer4.2.conv3.weight"])
    # the head is not taken from the 1000-class fc: it keeps its fresh initialisation
    assert state["fc.3.weight"].shape == (4, 256)
    for k in HEAD_KEYS:
        assert torch.equal(state[k], model.state_dict()[k]), k
    # loading keeps the frozen part frozen
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad}


def test_wrong_architecture_pth_is_a_coco4_error(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(Coco4Error, match="resnet18.pth"):
        build_model(str(path), 4)


def test_missing_pth_is_a_coco4_error(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(Coco4Error, match="nope.pth"):
        build_model(str(path), 4)
