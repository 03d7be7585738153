"""evaluate.py and visualize.py on both checkpoint formats, against a direct computation."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coco4.errors import Coco4Error

import evaluate
import visualize
from conftest import (
    CreatesFile,
    check_against_direct,
    direct_predictions,
    eval_argv,
    original_model,
    out_of_memory,
    run_script,
    stored_temperature,
)


def run_evaluate(*argv):
    return evaluate.main(evaluate.get_args_parser().parse_args(argv))


def test_evaluate_a_coco4_checkpoint_matches_direct_computation(demo_data, trained, tmp_path):
    from coco4.predictor import load_predictor

    run_evaluate(*eval_argv(demo_data, trained, tmp_path))
    predictor = load_predictor(trained, "cpu")
    assert predictor.image_size == 32  # taken from the checkpoint, not repeated by the user
    image_list, probs = direct_predictions(predictor.model.net, demo_data, 32,
                                           stored_temperature(trained))
    metrics = check_against_direct(tmp_path, image_list, probs, predictor.classes)
    assert metrics["classes"] == ["bird", "airplane", "train", "boat"]
    assert metrics["checkpoint"] == str(trained)


def test_evaluate_the_original_checkpoint_format(demo_data, few_val, tmp_path):
    """ResNet-50 at 224 px, the original's checkpoint and protocol: on 8 images."""
    torch.manual_seed(0)
    model = original_model()
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=1e-4)
    path = tmp_path / "checkpoint" / "original.pth"
    path.parent.mkdir()
    torch.save({"model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "epoch": 69}, path)
    run_evaluate(*eval_argv(demo_data, path, tmp_path / "eval", "--batch-size", "8",
                            "--data-dir", few_val, "--cache-dir", tmp_path / "cache"))
    # the original eval transform at its 224 px protocol: resize to 256x256, normalise
    image_list, probs = direct_predictions(model, demo_data, 224,
                                           list_path=few_val / "annotation_val.txt")
    check_against_direct(tmp_path / "eval", image_list, probs,
                         ["bird", "airplane", "train", "boat"])


def test_checkpoint_carrying_a_pickled_callable_is_refused(demo_data, trained, tmp_path):
    marker = tmp_path / "pwned"
    payload = torch.load(trained, weights_only=True)
    payload["extra"] = CreatesFile(marker)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    ran = run_script("evaluate", *eval_argv(demo_data, bad, tmp_path / "eval"))
    assert ran.status == 2 and ran.error.startswith("refusing")
    assert not marker.exists(), "loading ran code from the checkpoint"
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_checkpoint_for_other_classes_is_a_clear_error(demo_data, trained, tmp_path):
    payload = torch.load(trained, weights_only=True)
    payload["model"]["fc.3.weight"] = torch.zeros(5, 256)
    payload["model"]["fc.3.bias"] = torch.zeros(5)
    payload["classes"] = ["bird", "airplane", "train", "boat", "cat"]
    torch.save(payload, tmp_path / "five.pt")
    with pytest.raises(Coco4Error, match=r"predicts 5 classes.*4 classes"):
        run_evaluate(*eval_argv(demo_data, tmp_path / "five.pt", tmp_path / "eval"))
    payload["classes"] = payload["classes"][:4]  # weights for 5, names for 4
    torch.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(Coco4Error,
                       match=r"has 5 classes \(fc.3.weight is \[5, 256\]\), expected 4"):
        run_evaluate(*eval_argv(demo_data, tmp_path / "mixed.pt", tmp_path / "eval"))


def test_min_class_acc_sets_the_exit_status(demo_data, trained, tmp_path):
    metrics = run_evaluate(*eval_argv(demo_data, trained, tmp_path))
    lowest = min(a for a in metrics["per_class_accuracy"].values())
    argv = eval_argv(demo_data, trained, tmp_path)
    ok = run_script("evaluate", *argv, "--min-class-acc", lowest)
    assert ok.status == 0, ok.err
    fail = run_script("evaluate", *argv, "--min-class-acc", lowest + 1e-3)
    assert fail.status == 1 and fail.error.startswith("below --min-class-acc")


def test_out_of_memory_names_a_batch_size_and_amp_can_be_turned_off(demo_data, trained,
                                                                       tmp_path, monkeypatch):
    import coco4.evaluation
    import coco4.predictor

    seen = []
    real_load = coco4.predictor.load_predictor
    monkeypatch.setattr(coco4.predictor, "load_predictor",
                        lambda *a: seen.append(a) or real_load(*a))

    monkeypatch.setattr(coco4.evaluation, "predict_logits", out_of_memory)
    with pytest.raises(Coco4Error, match=r"^CUDA out of memory predicting batches of 48 images "
                                         r"at 32px; rerun with --batch-size 24$"):
        run_evaluate(*eval_argv(demo_data, trained, tmp_path, "--batch-size", "48", "--no-amp"))
    assert seen[-1][2] is False  # --no-amp reached the predictor
    assert not (tmp_path / "metrics.json").exists()


def assert_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 100
        im.verify()


def test_visualize_writes_each_picture(demo_data, trained, tmp_path):
    argv = eval_argv(demo_data, trained, tmp_path / "vis", "--num", "4")
    written = visualize.main(visualize.get_args_parser().parse_args(argv))
    names = {Path(p).name for p in written}
    assert names == {"samples.png", "predictions.png", "errors.png", "gradcam.png",
                     "training_curves.png"}
    for name in names:
        assert_png(tmp_path / "vis" / name)


def test_visualize_predicts_the_users_own_images(demo_data, trained, tmp_path):
    own = tmp_path / "mine.png"
    Image.new("RGB", (50, 40), (230, 85, 30)).save(own)
    # (a --metrics file that is not there is an error now: tests/test_reliability.py)
    argv = eval_argv(demo_data, trained, tmp_path / "vis", "--image", own)
    written = visualize.main(visualize.get_args_parser().parse_args(argv))
    assert {Path(p).name for p in written} == {"samples.png", "predictions.png", "errors.png",
                                               "gradcam.png", "training_curves.png"}
    assert_png(tmp_path / "vis" / "predictions.png")


def test_visualize_refuses_an_unreadable_own_image_before_any_work(demo_data, tmp_path):
    """Decoded before the checkpoint is read (it is never read here) and any picture drawn."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    argv = eval_argv(demo_data, tmp_path / "never-read.pt", tmp_path / "vis", "--image", notes)
    with pytest.raises(Coco4Error, match=rf"^--image {notes}: cannot identify image file .*; "
                                         r"give an image file$"):
        visualize.main(visualize.get_args_parser().parse_args(argv))
    assert not (tmp_path / "vis").exists()


@pytest.mark.parametrize("value", ["-1", "1.5", "nan"])
def test_min_class_acc_out_of_range_is_refused_before_predicting(demo_data, tmp_path, value):
    with pytest.raises(Coco4Error, match=r"^--min-class-acc must be between 0 and 1, got "):
        run_evaluate(*eval_argv(demo_data, tmp_path / "never-read.pt", tmp_path),
                     "--min-class-acc", value)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--workers", "100000", "--workers must be between 0 and "),
    ("--workers", "-1", "--workers must be between 0 and "),
    ("--batch-size", "0", "--batch-size must be at least 1, got 0")])
def test_numeric_flags_are_checked_before_the_checkpoint_is_read(demo_data, tmp_path, flag,
                                                                 value, message):
    with pytest.raises(Coco4Error, match="^" + message):  # never-read.pt does not exist
        run_evaluate(*eval_argv(demo_data, tmp_path / "never-read.pt", tmp_path), flag, value)


def test_the_gate_fails_a_class_with_no_test_images(demo_data, trained, tmp_path):
    """A class never seen is not known to pass: --min-class-acc 0 fails on it."""
    lines = (demo_data / "data" / "annotation_val.txt").read_text().splitlines()
    data = tmp_path / "data"
    data.mkdir()
    (data / "annotation_val.txt").write_text("".join(f"{line}\n" for line in lines
                                                      if not line.endswith(" 3")))
    (data / "classes.txt").write_text((demo_data / "data" / "classes.txt").read_text())
    argv = eval_argv(demo_data, trained, tmp_path / "eval", "--data-dir", data,
                     "--min-class-acc", "0")
    with pytest.raises(Coco4Error, match=r"^below --min-class-acc 0\.00%: boat no test images$"):
        run_evaluate(*argv)
    # the results are still written, of the images that were there
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    kept = [line for line in lines if not line.endswith(" 3")]
    assert metrics["num_images"] == len(kept) < len(lines)
    assert metrics["per_class_accuracy"]["boat"] is None
    assert sum(metrics["confusion_matrix"][3]) == 0


def test_a_list_of_only_unreadable_images_names_the_folder_it_read(demo_data, trained,
                                                                     tmp_path):
    """Not training's words: evaluate.py says which image folder held nothing usable."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(b"not a JPEG")
    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.txt").write_text((demo_data / "data" / "classes.txt").read_text())
    (data / "mine.txt").write_text("a.jpg 0\nb.jpg 1\n")
    argv = eval_argv(demo_data, trained, tmp_path / "eval", "--list", data / "mine.txt",
                     "--images", folder)
    with pytest.raises(Coco4Error, match=rf"^2 of 2 images in .*mine\.txt cannot be used: "
                                         rf".*; no image is left: check that {folder} is the "
                                         r"folder they are in \(--coco-root, or --images / "
                                         r"--train-images\)$"):
        run_evaluate(*argv)
    assert not (tmp_path / "eval").exists()  # nothing written


def test_a_cache_dir_given_by_name_that_cannot_be_written_is_an_error(demo_data, tmp_path):
    """Not the quiet fallback to ~/.cache a default cache folder gets; before the checkpoint."""
    (tmp_path / "a-file").write_text("in the way\n")
    with pytest.raises(Coco4Error, match=r"^cannot write to .*a-file/cache: .*a-file is not a "
                                         r"folder; choose another folder"):
        run_evaluate(*eval_argv(demo_data, tmp_path / "never-read.pt", tmp_path / "eval",
                                "--cache-dir", tmp_path / "a-file" / "cache"))


def test_an_unreadable_image_in_the_middle_leaves_every_row_with_its_own_file(
        demo_data, trained, tmp_path):
    """The rows after a left-out image still name the file whose label and probabilities
    they carry: each row against its list line and a computation by hand for that file."""
    from coco4.data.lists import read_list
    from coco4.predictor import load_predictor

    from conftest import direct_predictions, read_csv, stored_temperature

    listed = read_list(demo_data / "data" / "annotation_val.txt")
    images = tmp_path / "images"
    shutil.copytree(demo_data / "coco" / "images" / "val2017", images)
    middle = listed.files[len(listed) // 2]
    (images / middle).write_bytes(b"not a JPEG any more")
    run_evaluate(*eval_argv(demo_data, trained, tmp_path / "eval", "--images", images))
    rows = read_csv(tmp_path / "eval" / "predictions.csv")
    assert [r["file"] for r in rows] == [f for f in listed.files if f != middle]
    label_of = dict(zip(listed.files, listed.labels))
    classes = ["bird", "airplane", "train", "boat"]
    _, direct = direct_predictions(load_predictor(trained, "cpu").model.net, demo_data, 32,
                                   stored_temperature(trained))
    by_file = dict(zip(listed.files, direct.numpy()))
    for r in rows:
        assert r["true_label"] == classes[label_of[r["file"]]], r["file"]
        got = np.array([float(r[f"prob_{c}"]) for c in classes])
        assert np.abs(got - by_file[r["file"]]).max() < 1e-4, r["file"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics["left_out"]) == [middle]


def test_a_moved_run_folder_evaluates_into_its_own_eval_again(run_copy, demo_data, tmp_path):
    """#35: after `mv runs/a runs/b`, eval/ was refused as holding the results of
    runs/a/best.pt, a path that no longer exists; the checkpoint's content says it is the
    same file. Another checkpoint's results stay refused."""
    first = run_script("evaluate", *eval_argv(demo_data, run_copy / "best.pt",
                                              run_copy / "eval"))
    assert first.status == 0, first.err[-1500:]
    moved = tmp_path / "moved"
    shutil.move(run_copy, moved)
    again = run_script("evaluate", *eval_argv(demo_data, moved / "best.pt", moved / "eval"))
    assert again.status == 0, again.err[-1500:]
    other = run_script("evaluate", *eval_argv(demo_data, moved / "last.pt", moved / "eval"))
    assert other.status == 2 and f"{moved / 'eval'} holds the results of " in other.error


def test_a_missing_checkpoint_beside_an_earlier_evaluation_is_one_line(run_copy, demo_data):
    """The eval folder's check hashes the checkpoint to recognise a moved run: a path that is
    no file must be the checkpoint check's one line, not a traceback (review, #35)."""
    assert run_script("evaluate", *eval_argv(demo_data, run_copy / "best.pt",
                                             run_copy / "eval")).status == 0
    ran = run_script("evaluate", *eval_argv(demo_data, run_copy / "typo.pt", run_copy / "eval"))
    assert ran.status == 2 and ran.err.count("\n") == 1, ran.err[-800:]  # one line
