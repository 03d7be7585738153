"""The one metrics path: the accumulator against scikit-learn and numbers worked by hand, sums
added up across torchrun ranks, and validation during training agreeing with evaluate.py."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from coco4.data.lists import read_list, write_list
from coco4.data.prepare import stratified_split
from coco4.distributed import DistEnv
from coco4.metrics import CSV_COLUMNS, ECE_BINS, MetricAccumulator, csv_row

import evaluate
from conftest import eval_argv, read_csv

CLASSES = ("bird", "airplane", "train", "boat")


def random_batches(seed, sizes=(7, 16, 1, 9), classes=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, classes, generator=g) * 2, torch.randint(0, classes, (n,), generator=g))
            for n in sizes]


def accumulate(batches, classes=4):
    acc = MetricAccumulator(classes)
    for logits, labels in batches:
        acc.update(logits, labels)
    return acc


def ece_by_hand(probs, labels, bins=15):
    """Guo et al. 2017: sum over bins of |accuracy - confidence| weighted by the bin's share,
    with bin m holding confidences in (m/M, (m+1)/M]."""
    confidence, preds = probs.max(1), probs.argmax(1)
    total = 0.0
    for m in range(bins):
        inside = (confidence > m / bins) & (confidence <= (m + 1) / bins)
        if inside.any():
            gap = abs((preds[inside] == labels[inside]).mean() - confidence[inside].mean())
            total += inside.mean() * gap
    return total


def test_summary_equals_scikit_learn_and_the_ece_by_hand():
    batches = random_batches(0)
    logits = torch.cat([b[0] for b in batches]).double()
    labels = torch.cat([b[1] for b in batches]).numpy()
    probs = logits.softmax(1).numpy()
    preds = probs.argmax(1)
    got = accumulate(batches).summary(CLASSES)
    assert got["num_images"] == len(labels) == 33
    assert got["confusion_matrix"] == confusion_matrix(labels, preds, labels=range(4)).tolist()
    assert got["accuracy"] == pytest.approx((labels == preds).mean())
    assert got["nll"] == pytest.approx(log_loss(labels, probs, labels=range(4)), rel=1e-5)
    assert got["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    recall = precision_recall_fscore_support(labels, preds, labels=range(4))[1]
    assert got["min_class_accuracy"] == pytest.approx(recall.min())
    assert list(got["per_class_accuracy"].values()) == pytest.approx(list(recall))
    assert got["ece"] == pytest.approx(ece_by_hand(probs, labels, ECE_BINS), abs=1e-6)
    assert got["per_class"]["boat"]["support"] == int((labels == 3).sum())


def test_worked_example():
    """Three images, two classes, logits chosen so every number is worked by hand."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    got = accumulate([(logits, labels)], 2).summary(("a", "b"))
    p = lambda z: 1 / (1 + np.exp(-z))  # a two-class softmax is a logistic
    assert got["confusion_matrix"] == [[1, 1], [1, 0]]
    assert got["accuracy"] == pytest.approx(1 / 3)
    assert got["per_class_accuracy"] == {"a": 0.5, "b": 0.0}
    assert got["min_class_accuracy"] == 0.0 and got["balanced_accuracy"] == 0.25
    # F1: class a precision 1/2 recall 1/2 -> 1/2; class b 0 -> macro 1/4
    assert got["macro_f1"] == pytest.approx(0.25)
    # the true class's probabilities: p(2), p(-1) and p(-3)
    assert got["nll"] == pytest.approx(-(np.log(p(2)) + np.log(p(-1)) + np.log(p(-3))) / 3)
    # confidences p(2)=0.881 (right), p(1)=0.731 (wrong), p(3)=0.953 (wrong): three bins
    assert got["ece"] == pytest.approx((abs(1 - p(2)) + p(1) + p(3)) / 3)


def test_a_class_without_images_and_no_images_at_all():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    got = accumulate([(logits, torch.tensor([0, 1]))], 3).summary(("a", "b", "c"))
    assert got["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": None}
    assert got["balanced_accuracy"] == 1.0 and got["min_class_accuracy"] == 1.0
    empty = MetricAccumulator(3).summary(("a", "b", "c"))
    assert empty["num_images"] == 0
    assert all(empty[k] is None for k in ("accuracy", "nll", "macro_f1", "ece"))


def test_csv_row_names_every_scalar_metric():
    got = accumulate(random_batches(1)).summary(CLASSES)
    row = csv_row(got)
    assert set(row) == set(CSV_COLUMNS.values())
    assert row["val_acc"] == got["accuracy"] and row["val_loss"] == got["nll"]


def _rank(rank, path, batches, out):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        acc = accumulate(batches[rank::2]).all_reduce(DistEnv(rank, 2))
        if rank == 0:
            torch.save(acc.sums, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sums_are_added_up_across_ranks(tmp_path):
    """Two gloo processes, each with half the batches: the reduced metrics are the whole
    set's, not rank 0's half (which a missing all-reduce would report)."""
    batches = random_batches(2, sizes=(5, 8, 3, 6))
    mp.spawn(_rank, args=(tmp_path / "rendezvous", batches, tmp_path / "sums.pt"), nprocs=2)
    reduced = MetricAccumulator(4)
    reduced.sums = torch.load(tmp_path / "sums.pt")
    whole, got = accumulate(batches).summary(CLASSES), reduced.summary(CLASSES)
    assert got["confusion_matrix"] == whole["confusion_matrix"]
    for name in CSV_COLUMNS:
        assert got[name] == pytest.approx(whole[name], rel=1e-12), name
    assert whole["num_images"] == 22
    assert accumulate(batches[0::2]).summary(CLASSES)["num_images"] == 5 + 3  # rank 0 alone


def test_validation_during_training_equals_evaluate_on_the_same_images(demo_data, trained_run,
                                                                        tmp_path):
    """train.py's validation metrics for the best epoch and evaluate.py's on a list of exactly
    the held-out images, with the best checkpoint: one code path, so the same numbers."""
    assert_validation_equals_evaluate(demo_data, trained_run, tmp_path, 0.2)


def assert_validation_equals_evaluate(demo_data, out, tmp_path, val_fraction):
    """The best epoch's metrics.csv row of the run in ``out`` equals evaluate.py's metrics of
    its best.pt on a list of exactly the images that run held out (in one process)."""
    train_list = read_list(demo_data / "data" / "annotation_train.txt")
    _, val_pos = stratified_split(train_list.labels, CLASSES, val_fraction, 0)  # all usable
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(demo_data / "data" / "classes.txt", data)
    write_list(data / "held_out.txt", [train_list.files[i] for i in val_pos],
               [train_list.labels[i] for i in val_pos])
    argv = eval_argv(demo_data, out / "best.pt", tmp_path / "eval", "--list",
                     data / "held_out.txt", "--images", demo_data / "coco/images/train2017",
                     "--batch-size", "3",  # other batches than training's validation used
                     "--no-calibration")  # training validates before a temperature is fitted
    evaluate.main(evaluate.get_args_parser().parse_args(argv))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    best_epoch = torch.load(out / "best.pt", weights_only=True)["run"]["best_epoch"]
    row = read_csv(out / "metrics.csv")[best_epoch - 1]
    assert metrics["num_images"] == len(val_pos)
    for name, column in CSV_COLUMNS.items():
        assert float(row[column]) == pytest.approx(metrics[name], abs=1e-6), name
    return len(val_pos)


def test_the_pictures_draw_the_numbers_of_their_data():
    """#35's blind spot: the confusion matrix's cells and the reliability diagram's points,
    read back from the figures, against numbers worked by hand."""
    from coco4.metrics import MetricAccumulator
    from coco4.plots import confusion_matrix_figure, reliability_figure

    cm = [[3, 1, 0], [0, 4, 0], [2, 0, 2]]
    ax = confusion_matrix_figure(cm, ["a", "b", "c"]).axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
             for t in ax.texts}
    assert cells[(0, 0)] == "3\n75%" and cells[(0, 1)] == "1\n25%" and cells[(1, 1)] == "4\n100%"
    assert cells[(2, 0)] == "2\n50%" and cells[(2, 2)] == "2\n50%" and cells[(1, 0)] == "0\n0%"
    assert np.allclose(ax.images[0].get_array(), [[0.75, 0.25, 0], [0, 1, 0], [0.5, 0, 0.5]])

    # top probabilities 0.62 (right), 0.64 (wrong), 0.91 and 0.93 (both right): two of the
    # 15 bins of width 1/15, [0.6, 0.667) and [0.867, 0.933), mean confidence 0.63 and 0.92
    probs = torch.tensor([[0.62, 0.38], [0.64, 0.36], [0.91, 0.09], [0.93, 0.07]])
    labels = torch.tensor([0, 1, 0, 0])
    acc = MetricAccumulator(2)
    acc.update(probs.log(), labels)
    metrics = acc.summary(["x", "y"])
    metrics.update(reliability_uncalibrated=metrics["reliability"], temperature=1.0,
                   ece_uncalibrated=metrics["ece"])
    ax = reliability_figure(metrics).axes[0]
    line = ax.lines[1]  # after the diagonal: the raw probabilities' points
    assert np.allclose(line.get_xdata(), [0.63, 0.92]) and np.allclose(line.get_ydata(),
                                                                        [0.5, 1.0])
    assert metrics["ece"] == pytest.approx((2 * abs(0.63 - 0.5) + 2 * abs(0.92 - 1.0)) / 4)
