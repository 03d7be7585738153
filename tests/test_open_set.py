"""Open-set figures (evaluate.py --negatives): the arithmetic against scikit-learn and numbers
worked by hand, and evaluate.py's figures against scikit-learn on probabilities predict.py
gives for the same images, for a 4-class model and one with an ``other`` class."""
import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from coco4.open_set import (
    auroc,
    open_set_figures,
    rejected,
    scores,
    tradeoff,
    unknown_rejected_at,
)

from conftest import eval_argv, read_csv, run_script

FOUR = ["bird", "airplane", "train", "boat"]
FIVE = [*FOUR, "other"]


def sklearn_figures(known: np.ndarray, unknown: np.ndarray) -> dict:
    """AUROC and the FPR at 95% TPR by scikit-learn, known images the positives."""
    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    s = np.r_[known, unknown]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auroc": roc_auc_score(y, s), "fpr_at_95_tpr": fpr[np.argmax(tpr >= 0.95)]}


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_fpr_at_95_tpr_equal_scikit_learns_ties_included(seed):
    rng = np.random.default_rng(seed)
    known = rng.integers(0, 12, 57) / 12  # coarse scores: many ties, within and across sets
    unknown = rng.integers(0, 9, 41) / 12
    want = sklearn_figures(known, unknown)
    assert auroc(known, unknown) == pytest.approx(want["auroc"], abs=1e-12)
    assert 1 - unknown_rejected_at(known, unknown, 0.05) == pytest.approx(want["fpr_at_95_tpr"])


def test_the_figures_worked_by_hand():
    known = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    unknown = np.array([0.75, 0.35, 0.25, 0.15])
    # pairs where the known image scores higher: 0.9, 0.8 beat all 4; 0.7, 0.6, 0.5, 0.4 beat
    # 3; 0.3 beats 2; 0.2 beats 1; 0.1, 0.05 none: (8 + 12 + 2 + 1) / 40
    assert auroc(known, unknown) == pytest.approx(23 / 40)
    # rejecting at most 10% of 10 known images: the threshold is the second lowest, 0.1;
    # no unknown image is below it. At most 30%: the threshold 0.3, below it 0.25 and 0.15
    assert unknown_rejected_at(known, unknown, 0.10) == 0
    assert unknown_rejected_at(known, unknown, 0.30) == pytest.approx(2 / 4)
    known_rejected, unknown_rejected = tradeoff(known, unknown)
    assert (known_rejected[0], unknown_rejected[0]) == (0, 0)  # the lowest threshold: none
    assert (known_rejected[-1], unknown_rejected[-1]) == (1, 1)  # above every score: all


def test_the_scores_and_what_is_rejected():
    probs = np.array([[0.5, 0.2, 0.1, 0.1, 0.1],    # bird, sure enough
                      [0.2, 0.1, 0.1, 0.1, 0.5],    # other
                      [0.3, 0.25, 0.2, 0.15, 0.1]])  # bird, unsure
    found = scores(probs, FIVE)
    assert found["max_known_prob"] == pytest.approx([0.5, 0.2, 0.3])
    assert found["not_other"] == pytest.approx([0.9, 0.5, 0.9])
    assert rejected(probs, FIVE, 0.0).tolist() == [False, True, False]
    assert rejected(probs, FIVE, 0.4).tolist() == [False, True, True]
    four = probs[:, :4] / probs[:, :4].sum(1, keepdims=True)
    assert set(scores(four, FOUR)) == {"max_known_prob"}  # no other class, one score
    # a top probability equal to --min-prob is kept, as predict.py keeps its class (exact
    # in binary: 0.5)
    assert rejected(np.array([[0.5, 0.25, 0.125, 0.0625, 0.0625]]), FIVE, 0.5).tolist() == [False]
    figures = open_set_figures(probs[[0, 2]], np.array([0, 0]), probs[[1]], FIVE, 0.4)
    # known, both birds: the first right and kept, the second right but rejected (0.3 < 0.4),
    # which counts wrong: half right
    assert figures["known_accuracy"] == 0.5
    assert figures["operating_point"] == {"min_prob": 0.4, "known_rejected": 0.5,
                                          "unknown_rejected": 1.0}


def predicted(trained, image_paths, tmp_path, name):
    """predict.py's probabilities (raw by the checkpoint's temperature, as evaluate.py's)
    for the images, in their order: a path independent of evaluate.py's."""
    listing = tmp_path / f"{name}.txt"
    listing.write_text("".join(f"{p}\n" for p in image_paths))
    out = tmp_path / f"{name}.csv"
    assert run_script("predict", "--checkpoint", trained, "--list", listing, "--out", out,
                      "--device", "cpu", "--workers", "0").status == 0
    rows = read_csv(out)
    assert [r["path"] for r in rows] == list(map(str, image_paths))
    return rows


def check_against_sklearn(metrics, lists_dir, trained, tmp_path, classes, min_prob=0.0):
    """Every open-set figure of metrics.json recomputed here: known images and their
    probabilities from predictions.csv, unknown ones from predict.py on each negatives list
    (in ``lists_dir``)."""
    eval_rows = read_csv(tmp_path / "eval" / "predictions.csv")
    known_rows = [r for r in eval_rows if r["true_label"] != "other"]
    assert len(known_rows) < len(eval_rows) or "other" not in classes
    known_probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in known_rows])
    labels = np.array([classes.index(r["true_label"]) for r in known_rows])
    images = lists_dir.parent / "coco" / "images" / "val2017"
    for name, figures in metrics["open_set"].items():
        names = (lists_dir / name).read_text().split()
        rows = predicted(trained, [images / n for n in names], tmp_path, name)
        unknown_probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
        assert figures["num_known"] == len(known_rows)
        assert figures["num_unknown"] == len(rows) == len(names)
        for score, found in figures["scores"].items():
            known = (1 - known_probs[:, -1] if score == "not_other"
                     else known_probs[:, :4].max(1))
            unknown = (1 - unknown_probs[:, -1] if score == "not_other"
                       else unknown_probs[:, :4].max(1))
            want = sklearn_figures(known, unknown)
            assert found["auroc"] == pytest.approx(want["auroc"], abs=2e-3), (name, score)
            assert found["fpr_at_95_tpr"] == pytest.approx(want["fpr_at_95_tpr"], abs=0.03)
        # right, and kept at the operating point: an other answer, or a top probability below
        # --min-prob, is wrong
        right = (known_probs.argmax(1) == labels) & (known_probs.max(1) >= min_prob)
        assert figures["known_accuracy"] == pytest.approx(right.mean())
    return known_rows


def test_evaluate_reports_how_a_model_with_an_other_class_rejects_negatives(
        other_data, other_run, tmp_path):
    lists = [other_data / "data" / n for n in ("negatives_val_seen_kinds.txt",
                                               "negatives_val_held_out_kinds.txt")]
    ran = run_script("evaluate", *eval_argv(other_data, other_run, tmp_path / "eval",
                                            "--negatives", *lists))
    assert ran.status == 0, ran.err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["open_set"]) == {p.name for p in lists}
    assert all(set(f["scores"]) == {"max_known_prob", "not_other"}
               for f in metrics["open_set"].values())
    check_against_sklearn(metrics, other_data / "data", other_run, tmp_path, FIVE)
    assert (tmp_path / "eval" / "open_set.png").stat().st_size > 10_000
    assert "open set, negatives_val_seen_kinds.txt (" in ran.out


def test_evaluate_reports_how_a_4_class_model_rejects_negatives(other_data, trained, tmp_path):
    """Any checkpoint: the 4-class one by its top probability, on 4-class lists."""
    argv = eval_argv(other_data, trained, tmp_path / "eval", "--data-dir", other_data / "data4",
                     "--negatives", other_data / "data4" / "negatives_val_seen_kinds.txt",
                     "--min-prob", "0.6")
    assert run_script("evaluate", *argv).status == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    (figures,) = metrics["open_set"].values()
    assert set(figures["scores"]) == {"max_known_prob"}
    known_rows = check_against_sklearn(metrics, other_data / "data4", trained, tmp_path, FOUR,
                                       min_prob=0.6)
    tops = [max(float(r[f"prob_{c}"]) for c in FOUR) for r in known_rows]
    assert figures["operating_point"]["known_rejected"] == pytest.approx(
        np.mean(np.array(tops) < 0.6))


def test_a_negatives_list_that_is_not_there_is_one_line_before_any_work(demo_data, tmp_path):
    ran = run_script("evaluate", *eval_argv(demo_data, tmp_path / "never-read.pt", tmp_path,
                                            "--negatives", tmp_path / "nope.txt"))
    assert ran.status == 2 and ran.error.startswith(f"--negatives {tmp_path / 'nope.txt'}: "
                                                    "no such file")


def negatives_argv(other_data, tmp_path, *lists, extra=()):
    return eval_argv(other_data, tmp_path / "never-read.pt", tmp_path / "eval",
                     "--data-dir", other_data / "data4", "--negatives", *lists, *extra)


def listed(tmp_path, name, *lines):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.mark.parametrize("line, problem", [
    ("../train2017/a.jpg", "it climbs out of the image folder (..)"),
    ("/etc/passwd", "it is an absolute path, outside the image folder"),
    ("./a.jpg", "it is not written plainly (as 'a.jpg')")])
def test_a_negatives_name_outside_the_image_folder_is_one_line_before_any_work(
        other_data, tmp_path, line, problem):
    bad = listed(tmp_path, "bad.txt", "a.jpg", line)
    ran = run_script("evaluate", *negatives_argv(other_data, tmp_path, bad))
    assert ran.status == 2 and ran.error == (f"{bad}:2: the file name {line!r} cannot be "
                                             f"used: {problem}")


def test_negatives_that_would_count_twice_or_are_test_images_are_refused(other_data,
                                                                         tmp_path):
    """An image counted twice weighs twice in every rate; a test image among the negatives
    is both known and unknown: each is one line before any work."""
    twice = listed(tmp_path, "twice.txt", "a.jpg", "b.jpg", "a.jpg")
    ran = run_script("evaluate", *negatives_argv(other_data, tmp_path, twice))
    assert ran.status == 2 and ran.error == (f"{twice}:3: a.jpg is listed again (first on line "
                                             "1); list each image once")
    test_list = other_data / "data4" / "annotation_val.txt"
    known = test_list.read_text().split("\n", 1)[0].split()[0]
    mixed = listed(tmp_path, "mixed.txt", "n.jpg", known)
    ran = run_script("evaluate", *negatives_argv(other_data, tmp_path, mixed))
    assert ran.status == 2 and ran.error == (
        f"--negatives {mixed} lists 1 of the images of the test list {test_list} (such as "
        f"{known}): "
        "negatives are images of none of the classes (annotation_prepare.py --other writes two)")
    ran = run_script("evaluate", *negatives_argv(other_data, tmp_path, mixed, mixed))
    assert ran.status == 2 and ran.error == f"--negatives {mixed} is given twice"
    ran = run_script("evaluate", *negatives_argv(other_data, tmp_path, tmp_path))
    assert ran.status == 2 and ran.error.startswith(f"--negatives {tmp_path} is a folder")


def test_lists_of_one_name_are_both_reported_and_an_empty_one_is_a_warning(
        other_data, trained, tmp_path):
    seen = (other_data / "data4" / "negatives_val_seen_kinds.txt").read_text().split()
    first = listed(tmp_path, "a/negatives.txt", *seen[:5])
    second = listed(tmp_path, "b/negatives.txt", *seen[5:12], "missing.jpg")
    empty = listed(tmp_path, "empty.txt")
    argv = eval_argv(other_data, trained, tmp_path / "eval", "--data-dir", other_data / "data4",
                     "--negatives", first, second, empty)
    ran = run_script("evaluate", *argv)
    assert ran.status == 0, ran.error
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())["open_set"]
    assert {name: f["num_unknown"] for name, f in figures.items()} == {str(first): 5,
                                                                      str(second): 7}
    assert figures[str(second)]["left_out"] == {"missing.jpg": "missing"}
    assert f"warning: --negatives {empty} names no image: no open-set figures for it" in ran.err


def test_the_open_set_figures_need_images_of_the_known_classes(other_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(other_data / "data" / "classes.txt", data)
    others = [line for line in (other_data / "data" / "annotation_val.txt").read_text()
              .splitlines() if line.endswith(" 4")]
    listed(data, "annotation_val.txt", *others)
    argv = negatives_argv(other_data, tmp_path, other_data / "data" /
                          "negatives_val_seen_kinds.txt", extra=("--data-dir", data))
    ran = run_script("evaluate", *argv)
    assert ran.status == 2 and ran.error == (
        f"--negatives: {data / 'annotation_val.txt'} holds no image of the known classes, so "
        "there is nothing to tell the negatives from; give the test list")


def test_min_prob_without_negatives_is_one_line(demo_data, tmp_path):
    ran = run_script("evaluate", *eval_argv(demo_data, tmp_path / "never-read.pt", tmp_path,
                                            "--min-prob", "0.5"))
    assert ran.status == 2 and ran.error.startswith("--min-prob is the operating point of the "
                                                    "open-set figures: it needs --negatives")


def test_an_eval_folder_holds_one_checkpoints_results(other_data, trained, tmp_path):
    """Evaluating again replaces the checkpoint's own results (an open_set.png of earlier
    negatives included); another checkpoint's need --overwrite."""
    out = tmp_path / "eval"
    argv = eval_argv(other_data, trained, out, "--data-dir", other_data / "data4")
    negatives = other_data / "data4" / "negatives_val_seen_kinds.txt"
    assert run_script("evaluate", *argv, "--negatives", negatives).status == 0
    assert (out / "open_set.png").exists()
    assert run_script("evaluate", *argv).status == 0
    assert not (out / "open_set.png").exists()
    assert "open_set" not in json.loads((out / "metrics.json").read_text())
    # another checkpoint: other weights (a byte-identical copy is the same model, whose
    # results it may replace: a run folder moved or copied, #35)
    other = tmp_path / "other.pt"
    ckpt = torch.load(trained, weights_only=True)
    first = next(iter(ckpt["model"]))
    ckpt["model"][first] = ckpt["model"][first] + 0.01
    torch.save(ckpt, other)
    before = (out / "metrics.json").read_bytes()
    ran = run_script("evaluate", *argv, "--checkpoint", other)
    assert ran.status == 2 and ran.error == (f"{out} holds the results of {trained}; choose "
                                             "another --out-dir, or pass --overwrite to replace "
                                             "them")
    assert (out / "metrics.json").read_bytes() == before
    assert run_script("evaluate", *argv, "--checkpoint", other, "--overwrite").status == 0
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] == str(other)


def test_each_checkpoint_of_a_run_has_its_own_eval_folder_and_a_path_means_its_file(
        demo_data, run_copy, tmp_path, monkeypatch):
    """best.pt's results go to eval/, last.pt's to eval-last/ (one folder would refuse the
    second); a checkpoint named by another relative path is the same file."""
    for name in ("best.pt", "last.pt"):
        argv = eval_argv(demo_data, run_copy / name, "unused")[:-2]  # no --out-dir
        assert run_script("evaluate", *argv).status == 0
    assert (run_copy / "eval" / "metrics.json").is_file()
    assert (run_copy / "eval-last" / "metrics.json").is_file()
    monkeypatch.chdir(run_copy)
    argv = eval_argv(demo_data, "best.pt", "unused")[:-2]
    assert run_script("evaluate", *argv).status == 0
    monkeypatch.chdir(run_copy / "eval")
    argv = eval_argv(demo_data, "../best.pt", "unused")[:-2]
    assert run_script("evaluate", *argv).status == 0
