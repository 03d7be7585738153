"""Behaviours a mutation pass found unprotected (#16): each test fails on the breakage named in
its docstring, against numbers worked out here rather than taken from the code under test."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coco4.checkpoint import load_model, read_file
from coco4.data.loaders import BatchPlan, CachedBatches
from coco4.data.prepare import stratified_split
from coco4.distributed import DistEnv
from coco4.errors import Coco4Error
from coco4.inference import Amp, validate
from coco4.interrupt import Interrupted, StopRequest
from coco4.metrics import MetricAccumulator
from coco4.model import build_model
from coco4.trainer import fit
from coco4.training import (
    EpochState,
    TrainingParts,
    build_training_parts,
    train_one_epoch,
    train_step,
)

from conftest import read_csv, smooth_images, train_args

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
    model = build_model("tiny", 4)
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
        _, first, labels = validate(model, batches, amp, 4)
        _, second, _ = validate(model, batches, amp, 4)
    assert torch.equal(first, second) and labels.tolist() == [0, 1, 2, 3, 0, 1]
    assert torch.allclose(first, expected, atol=1e-5)
    for k, v in model.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k]), f"evaluation moved {k}"


# per epoch, how many of each class's two held-out images are predicted right, and how sure
# the predictions are: accuracies 6/8, 6/8, 4/8 (a tie, then worse); smallest class accuracy
# 0, 1/2, 1/2 (a tie at the end); validation losses worked out with torch below
SCRIPT = [([2, 2, 2, 0], 1.0), ([2, 2, 1, 1], 0.2), ([1, 1, 1, 1], 3.0)]


def scripted_validation(monkeypatch):
    """Replace training's validation by the scripted predictions, one epoch after another,
    over the real held-out labels (two per class with ``train_args``); returns each epoch's
    logits as validated."""
    import coco4.trainer

    real, shown = coco4.trainer.validate, []

    def scripted(model, batches, amp, num_classes):
        _, _, labels = real(model, batches, amp, num_classes)
        assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
        right, scale = SCRIPT[len(shown)]
        seen = [0] * num_classes
        logits = torch.zeros(len(labels), num_classes)
        for i, y in enumerate(labels.tolist()):
            pred = y if seen[y] < right[y] else (y + 1) % num_classes
            seen[y] += 1
            logits[i, pred] = scale
        metrics = MetricAccumulator(num_classes)
        metrics.update(logits, labels)
        shown.append((logits, labels))
        return metrics, logits, labels

    monkeypatch.setattr(coco4.trainer, "validate", scripted)
    return shown


@pytest.mark.parametrize("select_by, best_epoch", [("accuracy", 1), ("min_class_accuracy", 2)])
def test_the_best_checkpoint_is_the_first_epoch_with_the_best_chosen_score(
        demo_data, tmp_path, monkeypatch, select_by, best_epoch):
    """Breakage: --select-by ignored (always accuracy), or a later epoch that only ties the
    best replacing best.pt."""
    scripted_validation(monkeypatch)
    out = tmp_path / "run"
    fit(train_args(demo_data, out, epochs=3, select_by=select_by), progress=False)
    rows = read_csv(out / "metrics.csv")
    assert [float(r["val_acc"]) for r in rows] == [0.75, 0.75, 0.5]
    assert [float(r["val_min_class_acc"]) for r in rows] == [0.0, 0.5, 0.5]
    best = read_file(out / "best.pt")
    assert best["run"]["best_epoch"] == best["epoch"] == best_epoch
    assert best["best_metric"] == [0.75, 0.5][best_epoch - 1]


def test_the_lr_drops_when_the_validation_loss_stops_improving(demo_data, tmp_path,
                                                                monkeypatch):
    """Breakage: ReduceLROnPlateau stepped on another figure than the held-out loss (the
    training loss falls epoch after epoch, and would never drop the LR here)."""
    shown = scripted_validation(monkeypatch)
    out = tmp_path / "run"
    fit(train_args(demo_data, out, epochs=3, plateau_patience=0), progress=False)
    losses = [float(F.cross_entropy(logits, labels)) for logits, labels in shown]
    assert losses[1] > losses[0]  # worse at epoch 2: patience 0 drops the LR then
    rows = read_csv(out / "metrics.csv")
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(losses, rel=1e-6)
    # the lr column is the LR each epoch trained at: a drop after epoch 2 shows at epoch 3
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 1e-3, 1e-4])


class TinyNet(torch.nn.Module):
    """Pixels -> a linear layer -> dropout -> 4 logits, recording each dropout mask."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(3 * 8 * 8, 32), torch.nn.Linear(32, 4)
        self.masks = []

    def forward(self, x):
        h = self.hidden(x.float().flatten(1) / 255)
        dropped = torch.nn.functional.dropout(h.relu() + 1, 0.5, self.training)
        self.masks.append(dropped == 0)
        return self.out(dropped)


def test_each_step_of_an_epoch_draws_its_own_dropout_and_a_resumed_step_the_same():
    """Breakage: the step dropped from the per-step dropout seed, so every step of an epoch
    reuses one dropout mask."""
    images = smooth_images(12, side=10)
    batches = CachedBatches(images, [0, 1, 2, 3] * 3, range(12), BatchPlan(4, CPU, 8, True))
    masks = []
    for start in (0, 2):
        torch.manual_seed(0)
        model = TinyNet()
        amp = Amp.for_device(CPU, False)
        parts = TrainingParts(model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                              torch.nn.CrossEntropyLoss(reduction="sum"), amp, amp.scaler())
        state = EpochState.start(1, CPU, step=start)
        assert train_one_epoch(parts, batches, state, (0,))
        assert state.count == 12 - 4 * start  # images, not steps
        masks.append(model.masks)
    full, resumed = masks
    assert len(full) == 3 and len(resumed) == 1
    assert not torch.equal(full[0], full[1]) and not torch.equal(full[1], full[2])
    assert torch.equal(resumed[0], full[2])


def test_a_run_stopped_mid_epoch_reports_the_whole_epochs_figures(demo_data, tmp_path,
                                                                  monkeypatch):
    """Breakage: a resumed epoch restarting its running sums, so metrics.csv's training loss
    and accuracy for it cover only the steps after the resume (the weights stay right)."""
    polls = []
    monkeypatch.setattr(StopRequest, "requested", property(lambda self: polls.append(1) or
                                                           len(polls) > 3))
    common = {"epochs": 1, "batch_size": 4}
    with pytest.raises(Interrupted):
        fit(train_args(demo_data, tmp_path / "cut", **common), progress=False)
    assert read_file(tmp_path / "cut" / "last.pt")["run"]["step"] == 4  # 4 of 9 steps done
    monkeypatch.setattr(StopRequest, "requested", property(lambda self: False))
    fit(train_args(demo_data, tmp_path / "cut", resume=str(tmp_path / "cut" / "last.pt"),
                   **common), progress=False)
    fit(train_args(demo_data, tmp_path / "straight", **common), progress=False)
    (cut,), (straight,) = (read_csv(tmp_path / run / "metrics.csv") for run in ("cut", "straight"))
    for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert float(cut[column]) == pytest.approx(float(straight[column]), abs=1e-6), column
    seconds = float(cut["seconds"])  # the throughput counts the epoch's images once
    assert float(cut["images_per_s"]) * seconds == pytest.approx(36)


def test_a_resumed_run_continues_the_optimizer_and_the_lr_schedule(demo_data, tmp_path):
    """Breakage: resume without the optimizer's state (Adam's moments start again) or the
    scheduler's (ReduceLROnPlateau forgets its best loss, its patience and the lowered LR)."""
    out = tmp_path / "run"
    fit(train_args(demo_data, out, epochs=2), progress=False)
    saved = read_file(out / "last.pt")
    assert saved["scheduler"]["last_epoch"] == 2 and saved["optimizer"]["state"]
    cfg = train_args(demo_data, tmp_path / "more", epochs=3, resume=str(out / "last.pt"))
    data = SimpleNamespace(classes=CLASSES, train=())  # no batches: only the states are read
    parts = build_training_parts(cfg, data, CPU, DistEnv(), load_model(out / "last.pt"))
    assert parts.schedule.state_dict() == saved["scheduler"]
    optimizer = parts.optimizer.state_dict()
    assert optimizer["param_groups"] == saved["optimizer"]["param_groups"]
    assert optimizer["state"].keys() == saved["optimizer"]["state"].keys()
    for k, state in optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(value, saved["optimizer"]["state"][k][name]), (k, name)


def test_each_step_updates_by_its_own_batchs_gradient_alone():
    """Breakage: gradients never zeroed after a step, so each step adds every earlier step's
    gradient to its own. The reference: plain SGD written out with torch.autograd."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    reference = [p.detach().clone() for p in model.parameters()]
    amp = Amp.for_device(CPU, False)
    parts = TrainingParts(model, torch.optim.SGD(model.parameters(), lr=0.5), None,
                          torch.nn.CrossEntropyLoss(reduction="sum"), amp, amp.scaler())
    for _ in range(3):
        x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
        train_step(parts, x, y)
        weight, bias = (p.requires_grad_() for p in reference)
        loss = F.cross_entropy(x @ weight.T + bias, y)  # the batch's mean loss
        grads = torch.autograd.grad(loss, [weight, bias])
        reference = [(p - 0.5 * g).detach() for p, g in zip((weight, bias), grads)]
    for got, want in zip(model.parameters(), reference):
        assert torch.allclose(got, want, atol=1e-6)


def test_the_splits_use_exactly_the_readable_images_each_once(demo_data, tmp_path):
    """With some of a list's images unreadable, the training and held-out splits together are
    every readable image, each once, and no unreadable one: what the report says is what the
    batches hold (#35's blind spot: only the report was checked)."""
    import shutil

    from coco4.data.lists import read_list
    from coco4.data.prepare import prepare_train_data

    images = tmp_path / "train2017"
    shutil.copytree(demo_data / "coco" / "images" / "train2017", images)
    listed = read_list(demo_data / "data" / "annotation_train.txt")
    broken = {listed.files[3], listed.files[10], listed.files[20]}
    for name in broken:
        (images / name).write_bytes(b"not a jpeg any more")
    cfg = train_args(demo_data, tmp_path / "run", train_images=str(images),
                     cache_dir=str(tmp_path / "cache"))
    data = prepare_train_data(cfg.data_spec, DistEnv(), torch.device("cpu"), False,
                              lambda m: None)
    used = [listed.files[i] for i in [*data.train.indices.tolist(), *data.val.indices.tolist()]]
    assert sorted(used) == sorted(set(listed.files) - broken)  # each readable one, once
    assert set(data.report["left_out"]) == broken
    assert (data.report["train_images"], data.report["val_images"]) == (
        len(data.train.indices), len(data.val.indices))
