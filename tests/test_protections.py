"""Behaviours a mutation pass found unprotected (#16): each test fails on the breakage named in
its docstring, against numbers worked out here rather than taken from the code under test."""
import copy

import numpy as np
import pytest
import torch

from coco4.cli import Coco4Error
from coco4.data.loaders import BatchPlan, CachedBatches
from coco4.data.prepare import stratified_split
from coco4.loop import Amp
from coco4.loop import evaluate as evaluate_batches
from coco4.model import build_model

from conftest import smooth_images

CPU = torch.device("cpu")
CLASSES = ("bird", "airplane", "train", "boat")


def test_the_validation_split_is_disjoint_complete_stratified_and_seeded():
    """Breakage: a split that overlaps training, loses images, ignores the classes or the seed."""
    counts = {0: 10, 1: 7, 2: 25, 3: 4}
    labels = np.repeat(list(counts), list(counts.values()))
    np.random.default_rng(9).shuffle(labels)
    train, val = stratified_split(labels, CLASSES, 0.25, seed=4)
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(len(labels)))
    # round(n * 0.25) of each class, worked by hand: 2.5 -> 2, 1.75 -> 2, 6.25 -> 6, 1
    assert [int((labels[val] == c).sum()) for c in counts] == [2, 2, 6, 1]
    again = stratified_split(labels, CLASSES, 0.25, seed=4)
    assert np.array_equal(again[1], val) and np.array_equal(again[0], train)
    assert not np.array_equal(stratified_split(labels, CLASSES, 0.25, seed=5)[1], val)
    with pytest.raises(Coco4Error, match="leaves class 'boat' with 0 of its 4 images"):
        stratified_split(labels, CLASSES, 0.1, seed=4)


def test_two_steps_of_one_epoch_get_different_crops():
    """Breakage: the step dropped from the per-step augmentation seed, so every step of an
    epoch reuses the same crop boxes by position. With every image the same, only the crops
    can make two steps differ."""
    image = smooth_images(1, side=48)
    images = image.expand(12, -1, -1, -1).contiguous()
    batches = CachedBatches(images, [0] * 12, range(12), BatchPlan(4, CPU, 32, train=True,
                                                                   seed=0))
    steps = [x for x, _ in batches.iterate(0)]
    assert len(steps) == 3
    assert not torch.equal(steps[0], steps[1]) and not torch.equal(steps[1], steps[2])
    # and within a step, the images' crops differ too
    assert not torch.equal(steps[0][0], steps[0][1])


def test_evaluation_runs_in_eval_mode_whatever_mode_the_model_was_left_in():
    """Breakage: evaluation without model.eval(): dropout stays on, and the validation images
    move layer3/layer4's BatchNorm statistics."""
    torch.manual_seed(0)
    model = build_model("resnet18", 4)
    images = smooth_images(6, side=37)
    batches = CachedBatches(images, [0, 1, 2, 3, 0, 1], range(6), BatchPlan(4, CPU, 32,
                                                                            train=False))
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = reference(images)  # the eval protocol feeds the cached square as it is
    model.train()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    amp = Amp.for_device(CPU, False)
    with torch.no_grad():
        _, first, labels = evaluate_batches(model, batches, amp, 4)
        _, second, _ = evaluate_batches(model, batches, amp, 4)
    assert torch.equal(first, second) and labels.tolist() == [0, 1, 2, 3, 0, 1]
    assert torch.allclose(first, expected, atol=1e-5)
    for k, v in model.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k]), f"evaluation moved {k}"
