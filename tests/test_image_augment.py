"""--auto-augment and --random-erase (coco4/image_augment.py): every operation against
torchvision's own at every magnitude, one draw per image (not one per batch), and random
erasing's boxes against RandomErasing's rules."""
import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode, RandAugment, TrivialAugmentWide

from coco4.checkpoint import read_file
from coco4.config import Recipe
from coco4.image_augment import (
    ERASE_RATIO,
    ERASE_SCALE,
    OPERATIONS,
    ImageAugment,
    draw_operations,
    erase_boxes,
    magnitude_table,
)
from coco4.seeding import generator
from coco4.trainer import fit
from coco4.training import build_batch_transform

from conftest import train_args

REFERENCE = {"ta_wide": TrivialAugmentWide, "ra": RandAugment}
SIZE = 24


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    images[0] = images[0] // 4 + 60  # a low-contrast one: autocontrast and equalize act
    return images


def _reference(policy: str, image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision's operation ``name`` at ``magnitude`` on one image, as the references call
    it (bilinear, black fill)."""
    ref = REFERENCE[policy](interpolation=InterpolationMode.BILINEAR)
    return ref._apply_image_or_video_transform(image, name, magnitude,
                                               interpolation=InterpolationMode.BILINEAR, fill={})


@pytest.mark.parametrize("policy", ["ta_wide", "ra"])
def test_each_operation_gives_torchvisions_pixels_at_every_magnitude(policy):
    table = magnitude_table(policy, SIZE)
    assert list(table) == list(REFERENCE[policy]._AUGMENTATION_SPACE)
    images = _images(3)
    for name, (magnitudes, signed) in table.items():
        theirs = REFERENCE[policy]._AUGMENTATION_SPACE[name][0](31, SIZE, SIZE)
        assert (magnitudes is None) == (theirs is None), name
        if name == "Identity":
            continue
        values = [0.0] if magnitudes is None else [
            float(v) * sign for v in magnitudes for sign in ((1, -1) if signed else (1,))]
        assert magnitudes is None or torch.equal(magnitudes.double(), theirs.double()), name
        for value in values:
            ours = OPERATIONS[name](images.clone(), torch.full((3,), value, dtype=torch.double))
            for i in range(3):
                assert torch.equal(ours[i], _reference(policy, images[i], name, value)), \
                    (name, value, i)


@pytest.mark.parametrize("policy", ["ta_wide", "ra"])
def test_each_image_draws_its_own_operations_from_the_step_generator(policy):
    """The batch transform applies, to each image, the operations drawn for it: torchvision's
    result for that image, in order (RandAugment: two a image)."""
    images = _images(48, seed=1)
    before = images.clone()
    out, labels = ImageAugment(policy)(images, torch.arange(48), generator(5, "batch"))
    assert torch.equal(images, before) and torch.equal(labels, torch.arange(48))
    again, _ = ImageAugment(policy)(images, torch.arange(48), generator(5, "batch"))
    assert torch.equal(out, again)  # the same step draws the same
    g, table = generator(5, "batch"), magnitude_table(policy, SIZE)
    expected = images.clone()
    drawn = set()
    for _ in range(1 if policy == "ta_wide" else 2):
        ops, magnitudes = draw_operations(table, 48, policy, g)
        drawn |= set(ops.tolist())
        for i in range(48):
            name = list(table)[ops[i]]
            if name != "Identity":
                expected[i] = _reference(policy, expected[i], name, float(magnitudes[i]))
    assert len(drawn) >= 10  # one operation an image, not one for the batch
    assert torch.equal(out, expected)


def test_trivial_augment_draws_operations_bins_and_signs_uniformly():
    table = magnitude_table("ta_wide", 224)
    ops, magnitudes = draw_operations(table, 28_000, "ta_wide", generator(0))
    counts = torch.bincount(ops, minlength=14).float()
    assert (counts - 2000).abs().max() < 200  # 14 operations, 2,000 each expected (sd 43)
    rotations = magnitudes[ops == list(table).index("Rotate")]
    assert abs((rotations < 0).float().mean() - 15 / 31) < 0.04  # a random sign, bin 0 is 0
    assert rotations.abs().max() == 135.0 and len(rotations.abs().unique()) == 31


def test_random_erasing_boxes_follow_torchvisions_rules():
    images = torch.full((400, 3, 64, 48), 7, dtype=torch.uint8)
    erase_boxes(images, 1.0, (124, 116, 104), generator(1))
    boxes = images[:, 0] == 124
    assert torch.equal(boxes, images[:, 2] == 104)  # the fill colour, on all three channels
    assert ((images == 7) | boxes.unsqueeze(1)).all()  # nothing else changed
    areas = boxes.sum((1, 2)).float()
    heights = boxes.any(2).sum(1).float()
    widths = boxes.any(1).sum(1).float()
    assert torch.equal(areas, heights * widths)  # one rectangle each
    erased = areas > 0
    assert erased.float().mean() > 0.9  # a box fits on most images within 10 tries
    share = areas[erased] / (64 * 48)
    assert share.min() > ERASE_SCALE[0] * 0.7 and share.max() < ERASE_SCALE[1] * 1.3
    aspect = heights[erased] / widths[erased]
    assert aspect.min() > ERASE_RATIO[0] * 0.7 and aspect.max() < ERASE_RATIO[1] * 1.4
    some = torch.zeros(4000, 3, 16, 16, dtype=torch.uint8)
    erase_boxes(some, 0.3, (1, 1, 1), generator(2))
    assert abs((some.flatten(1).amax(1) > 0).float().mean() - 0.3) < 0.02  # sd 0.007


def test_the_recipe_erases_to_the_normalisation_mean_before_mixing():
    """The references erase after normalising, to 0: the mean colour, here in uint8 pixels;
    then mixup mixes the augmented images."""
    transform = build_batch_transform(Recipe(random_erase=1.0), 4)
    images = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    out, targets = transform(images, torch.arange(8) % 4, generator(0))
    colours = {tuple(out[i, :, y, x].tolist()) for i, y, x in (out[:, 0] > 0).nonzero()}
    assert colours == {(124, 116, 104)}  # round(255 * ImageNet's mean)
    assert targets.dtype == torch.long
    both = build_batch_transform(Recipe(auto_augment="ta_wide", mixup_alpha=0.5), 4)
    _, soft = both(_images(8), torch.arange(8) % 4, generator(0))
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    assert build_batch_transform(Recipe(), 4) is None  # the default: the batch as it comes


def test_the_pil_path_augments_its_batches_too(demo_data, tmp_path):
    """The per-image transforms act on the batch on the device, whichever path decoded it:
    --data-path pil trains on other pixels with them, and the same ones again."""
    def weights(name, **recipe):
        fit(train_args(demo_data, tmp_path / name, data_path="pil", **recipe), progress=False)
        return read_file(tmp_path / name / "last.pt")["model"]

    plain, augmented = weights("plain"), weights("ta", auto_augment="ta_wide", random_erase=0.5)
    again = weights("again", auto_augment="ta_wide", random_erase=0.5)
    assert any(not torch.equal(plain[k], augmented[k]) for k in plain)
    assert all(torch.equal(again[k], augmented[k]) for k in again)
