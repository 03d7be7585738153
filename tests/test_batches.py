"""How an epoch is cut into batches, on both data paths: equal training batches (no tiny last
batch to skew a third of the updates and give cuDNN and torch.compile a new shape), every
evaluation image exactly once, and torchrun ranks that share the work without overlap."""
import pytest
import torch

from coco4.data import cache
from coco4.data.lists import read_list
from coco4.data.loaders import BatchPlan, CachedBatches, PilBatches

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def val_source(demo_data, tmp_path_factory):
    image_list = read_list(demo_data / "data" / "annotation_val.txt")
    images = demo_data / "coco" / "images" / "val2017"
    built = cache.load_or_build(image_list, images, 32, tmp_path_factory.mktemp("c"),
                                progress=False)
    return image_list, images, built.tensor()


def make(val_source, path, indices, plan):
    image_list, images, tensor = val_source
    if path == "fast":
        return CachedBatches(tensor, image_list.labels, indices, plan)
    return PilBatches(image_list, images, indices, plan)


@pytest.mark.parametrize("path", ["fast", "pil"])
def test_training_batches_are_equal_and_drop_fewer_images_than_steps(val_source, path):
    # 11 images at batch 4: 3 steps of 3 images, not 4, 4, 3; 2 images dropped this epoch
    batches = make(val_source, path, range(11), BatchPlan(4, CPU, 32, train=True, seed=3))
    assert len(batches) == 3
    for epoch in (0, 1):
        sizes = [len(y) for _, y in batches.iterate(epoch)]
        assert sizes == [3, 3, 3]
        order = batches.order(epoch)[:9]
        assert len(set(order.tolist())) == 9  # no image twice in one epoch
    # the dropped images change with the shuffle: over a few epochs every image is seen
    seen = set()
    for epoch in range(6):
        seen |= set(batches.order(epoch)[:9].tolist())
    assert seen == set(range(11))


@pytest.mark.parametrize("path", ["fast", "pil"])
def test_a_resumed_epoch_continues_with_the_same_images(val_source, path):
    batches = make(val_source, path, range(11), BatchPlan(4, CPU, 32, train=True, seed=3))
    whole = list(batches.iterate(2))
    rest = list(batches.iterate(2, start_step=1))
    assert len(rest) == 2
    for (xa, ya), (xb, yb) in zip(whole[1:], rest):
        assert torch.equal(ya, yb)
        # the same crops too on the fast path, drawn per step; PIL's come from its workers' RNG
        assert torch.equal(xa, xb) or path == "pil"


@pytest.mark.parametrize("path", ["fast", "pil"])
def test_evaluation_sees_every_image_once_in_list_order(val_source, path):
    image_list = val_source[0]
    n = 11
    batches = make(val_source, path, range(n), BatchPlan(4, CPU, 32, train=False))
    got = list(batches.iterate(0))
    assert [len(y) for _, y in got] == [3, 4, 4]  # nearly equal, nothing dropped
    assert torch.cat([y for _, y in got]).tolist() == list(image_list.labels[:n])
    # and the pixels are those of the list's images in order: the same as one batch of all
    (x_all, _), = list(make(val_source, path, range(n),
                            BatchPlan(64, CPU, 32, train=False)).iterate(0))
    assert torch.equal(torch.cat([x for x, _ in got]), x_all)


def test_torchrun_ranks_split_an_epoch_without_overlap_in_equal_steps():
    images = torch.zeros(11, 3, 37, 37, dtype=torch.uint8)
    plans = [BatchPlan(2, CPU, 32, train=True, seed=1, rank=r, world=2) for r in range(2)]
    ranks = [CachedBatches(images, [0] * 11, range(11), p) for p in plans]
    # 11 images padded to 12 (6 per rank), 3 steps of 2 on each rank: the same step count
    assert [len(b) for b in ranks] == [3, 3]
    assert [[len(y) for _, y in b.iterate(0)] for b in ranks] == [[2, 2, 2], [2, 2, 2]]
    a, b = (set(r.order(0).tolist()) for r in ranks)
    assert a | b == set(range(11)) and len(a & b) <= 1  # only the padding repeats an image
    # validation: each image on exactly one rank, none repeated to even the shares (the
    # ranks' sums are added up); every pixel of image i is i, so a batch says which it holds
    numbered = torch.arange(11, dtype=torch.uint8)[:, None, None, None].expand(11, 3, 37, 37)
    evals = [CachedBatches(numbered, [0] * 11, range(11),
                           BatchPlan(2, CPU, 32, train=False, rank=r, world=2)) for r in range(2)]
    seen = [x[:, 0, 0, 0].tolist() for e in evals for x, _ in e.iterate(0)]
    assert sorted(i for batch in seen for i in batch) == list(range(11))
