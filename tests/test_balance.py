"""train.py --balance: the class-balanced epoch (sampler) is deterministic, resumable and shared
by torchrun ranks; the class-weighted loss (loss) has the hand-computed weights and the same
gradient in micro-batches; both train end to end; the generator's --class-ratios."""
import collections

import pytest
import torch
from torch import nn

from coco4 import trainer
from coco4.balance import inverse_frequency
from coco4.checkpoint import read_file
from coco4.config import TrainConfig
from coco4.data.lists import read_list
from coco4.data.loaders import BatchPlan, CachedBatches
from coco4.distributed import DistEnv
from coco4.errors import Coco4Error
from coco4.inference import Amp
from coco4.interrupt import Interrupted, StopRequest
from coco4.preflight import Ready
from coco4.synthetic import TARGETS, make_synthetic_coco, parse_ratios
from coco4.trainer import fit
from coco4.training import TrainingParts, train_step

from conftest import read_csv, run_script, train_args, train_argv

CPU = torch.device("cpu")
# 1,000 images, the rarest class a twelfth of the commonest
IMBALANCED = [0] * 600 + [1] * 200 + [2] * 150 + [3] * 50


def balanced_batches(labels, seed=0, rank=0, world=1, batch_size=50):
    images = torch.zeros(len(labels), 3, 37, 37, dtype=torch.uint8)
    plan = BatchPlan(batch_size, CPU, 32, train=True, seed=seed, rank=rank, world=world,
                     balanced=True)
    return CachedBatches(images, labels, range(len(labels)), plan)


def test_a_balanced_epoch_draws_every_class_about_equally_often():
    """1,000 draws, each class with chance 1/4: a class's count is Binomial(1000, 1/4), mean 250,
    standard deviation sqrt(1000 * 1/4 * 3/4) = 13.7. Within 80 (5.8 standard deviations) fails
    with chance under 1e-8 per class for any seed; an unbalanced epoch has 600 and 50."""
    batches = balanced_batches(IMBALANCED)
    assert len(batches) == 20  # as many steps as an unbalanced epoch
    labels = torch.cat([y for _, y in batches.iterate(0)])
    assert len(labels) == 1000
    counts = collections.Counter(labels.tolist())
    assert all(abs(counts[c] - 250) < 80 for c in range(4)), counts
    # with replacement: the 50 images of class 3 are drawn about 250 times, so they repeat
    order = batches.order(0)
    drawn = order[torch.tensor(IMBALANCED)[order] == 3].tolist()
    assert len(drawn) - len(set(drawn)) >= 150


def test_a_balanced_epoch_depends_only_on_seed_and_epoch():
    a, b = balanced_batches(IMBALANCED, seed=4), balanced_batches(IMBALANCED, seed=4)
    assert torch.equal(a.order(3), b.order(3))  # a fresh process draws the same epoch
    assert not torch.equal(a.order(3), a.order(4))  # each epoch its own draw
    assert not torch.equal(a.order(3), balanced_batches(IMBALANCED, seed=5).order(3))


def test_a_balanced_epoch_resumed_at_step_k_gives_the_same_batch_k():
    batches = balanced_batches(IMBALANCED, batch_size=100)
    whole = list(batches.iterate(2))
    again = balanced_batches(IMBALANCED, batch_size=100)  # a new process after the resume
    rest = list(again.iterate(2, start_step=7))
    assert len(rest) == 3
    for (xa, ya), (xb, yb) in zip(whole[7:], rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)  # the same images and crops


def test_torchrun_ranks_take_complementary_shares_of_one_balanced_epoch():
    ranks = [balanced_batches(IMBALANCED, rank=r, world=2) for r in range(2)]
    one = balanced_batches(IMBALANCED).order(1)  # the whole epoch's draw, as one process has it
    r0, r1 = (r.order(1) for r in ranks)
    assert torch.equal(r0, one[0::2]) and torch.equal(r1, one[1::2])
    assert [len(r) for r in ranks] == [10, 10]  # the same steps on each rank


def test_loss_weights_are_inverse_class_frequency_averaging_one_per_image():
    # counts 6, 2, 1, 1 of N = 10 images: N / (4 n_c) = 10/24, 10/8, 10/4, 10/4
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 3])
    weights = inverse_frequency(labels, TARGETS)
    assert weights.tolist() == pytest.approx([10 / 24, 1.25, 2.5, 2.5])
    assert float(weights[labels].mean()) == pytest.approx(1.0)


def test_a_class_without_training_images_is_a_one_line_error_for_loss_weights():
    with pytest.raises(Coco4Error, match=r"--balance loss: class 'train' has no training image"):
        inverse_frequency(torch.tensor([0, 1, 3, 3]), TARGETS)


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_weighted_loss_gives_cross_entropy_weighted_mean_gradient_in_any_micro_batches(accum):
    """No BatchNorm, so micro-batches change nothing but how the gradient is summed; SGD with
    lr 1 makes the update the gradient itself. The reference is torch's weighted mean."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3])  # the micro-batches' weight sums differ
    weight = torch.tensor([0.4, 1.0, 2.0, 4.0])  # summing to 9 over the batch, not its 8
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    start = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y, weight=weight, reduction="mean")
    grads = torch.autograd.grad(loss, list(model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    amp = Amp.for_device(CPU, False)
    criterion = nn.CrossEntropyLoss(weight=weight, reduction="sum")
    parts = TrainingParts(model, opt, None, criterion, amp, amp.scaler(), accum)
    loss_sum, _ = train_step(parts, x, y)
    for p, p0, g in zip(model.parameters(), start, grads):
        assert torch.allclose(p0 - p.detach(), g, atol=1e-6)
    # the summed weighted loss: the weighted mean times the batch's weight sum (0.4 * 5 + 7)
    assert float(loss_sum) == pytest.approx(float(loss.detach()) * 9.0, rel=1e-5)


def test_balance_is_checked_stored_and_older_checkpoints_resume_unbalanced():
    with pytest.raises(Coco4Error, match=r"--balance must be one of none, sampler, loss, got 'x'"):
        TrainConfig(balance="x")
    older = TrainConfig(balance="loss").to_dict()
    del older["balance"]  # written before --balance existed
    assert TrainConfig(resume="last.pt").resumed_from(older)[0].balance == "none"
    stored = TrainConfig(balance="sampler").to_dict()
    assert TrainConfig(resume="last.pt").resumed_from(stored)[0].balance == "sampler"


@pytest.mark.parametrize("balance", ["sampler", "loss"])
def test_train_py_balance_runs_end_to_end_and_is_stored(demo_data, tmp_path, balance):
    out = tmp_path / balance
    ran = run_script("train", *train_argv(demo_data, out, "--epochs", "2", "--balance", balance))
    assert ran.status == 0, ran.err[-2000:]
    assert read_file(out / "last.pt")["config"]["balance"] == balance
    assert len(read_csv(out / "metrics.csv")) == 2


@pytest.mark.parametrize("balance", ["none", "sampler", "loss"])
def test_the_balance_flag_reaches_the_sampler_and_the_loss(demo_data, tmp_path, balance):
    """What a run builds (not a hand-made plan or criterion): the flag's own part, and only it."""
    ready = Ready(train_args(demo_data, tmp_path / "run", balance=balance), torch.device("cpu"))
    run = trainer.Training(ready, DistEnv(), False, "python train.py")
    assert run.data.train.plan.balanced == (balance == "sampler")
    assert not run.data.val.plan.balanced
    weight = run.parts.criterion.weight
    if balance != "loss":
        assert weight is None
        return
    # N / (K n_c) by hand, from the training split's own labels (the held-out ones excluded)
    labels = run.data.train.labels.tolist()
    counts = collections.Counter(labels)
    assert len(labels) < len(read_list(demo_data / "data" / "annotation_train.txt"))
    assert weight.tolist() == pytest.approx([len(labels) / (4 * counts[c]) for c in range(4)])


class StopAfter(StopRequest):
    """A SIGTERM that arrives after ``calls`` polls of the training loop."""

    calls = 3

    @property
    def requested(self) -> bool:
        StopAfter.calls -= 1
        return StopAfter.calls < 0


@pytest.mark.parametrize("balance", ["sampler", "loss"])
def test_a_balanced_run_stopped_mid_epoch_resumes_to_the_same_weights(demo_data, tmp_path,
                                                                       monkeypatch, balance):
    common = {"epochs": 2, "batch_size": 4, "balance": balance}
    fit(train_args(demo_data, tmp_path / "straight", **common), progress=False)
    monkeypatch.setattr(trainer, "StopRequest", StopAfter)
    monkeypatch.setattr(StopAfter, "calls", 3)
    with pytest.raises(Interrupted):
        fit(train_args(demo_data, tmp_path / "cut", **common), progress=False)
    assert read_file(tmp_path / "cut" / "last.pt")["run"]["step"] == 4  # mid-epoch
    monkeypatch.setattr(trainer, "StopRequest", StopRequest)
    fit(train_args(demo_data, tmp_path / "cut", resume=str(tmp_path / "cut" / "last.pt"),
                   epochs=2), progress=False)
    a = read_file(tmp_path / "straight" / "last.pt")
    b = read_file(tmp_path / "cut" / "last.pt")
    assert b["config"]["balance"] == balance  # from the checkpoint: the command line had none
    assert max((a["model"][k].double() - b["model"][k].double()).abs().max().item()
               for k in a["model"]) <= 1e-6


def kept_counts(summary, split):
    return collections.Counter(TARGETS[label] for _, label in summary[split]["kept"])


def test_class_ratios_make_the_generated_train_split_imbalanced(tmp_path):
    summary = make_synthetic_coco(tmp_path / "coco", num_train=200, num_val=40, seed=0,
                                  image_sizes=((40, 32),), progress=False,
                                  class_ratios=(1, 1, 1, 0.33))
    train = kept_counts(summary, "train")
    # 148 kept images: 130 single, 10 grayscale, 8 crowd_same_class. Of 3.33 shares boat has
    # 0.33: 148 x 0.33 / 3.33 = 14.7 boats and 44.4 of each other class, give or take one per
    # class in each of the 3 kept cases
    assert all(abs(train[c] - 44.4) <= 3 for c in ("bird", "airplane", "train")), train
    assert abs(train["boat"] - 14.7) <= 3, train
    val = kept_counts(summary, "val")  # the test set stays balanced
    assert max(val.values()) - min(val.values()) <= 3, val


@pytest.mark.parametrize("text", ["1,1,1", "1,1,1,0", "1,1,1,-2", "a,b,c,d", "1,1,1,inf"])
def test_bad_class_ratios_are_one_line_errors(text):
    with pytest.raises(Coco4Error, match=r"give 4 positive numbers separated by commas, one per "
                                         r"class in the order bird,airplane,train,boat"):
        parse_ratios(text)
