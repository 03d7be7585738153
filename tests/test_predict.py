"""predict.py on the user's own images: what it finds, what it writes, and that its
probabilities are evaluate.py's and a direct computation's."""
import glob
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from coco4.errors import Coco4Error
from coco4.image_files import find_images

import evaluate
import predict
from conftest import (
    CreatesFile,
    direct_predictions,
    eval_argv,
    original_model,
    read_csv,
    run_script,
    stored_temperature,
)
from test_data import truncated_jpeg

CLASSES = ["bird", "airplane", "train", "boat"]


def val_images(demo_data):
    return sorted((demo_data / "coco" / "images" / "val2017").iterdir())


def run_predict(checkpoint, *argv):
    return predict.main(predict.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0", *map(str, argv)]))


def probs_of(rows):
    return np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])


def test_a_folder_with_a_truncated_jpeg_and_a_text_file_named_jpg(demo_data, trained, tmp_path,
                                                                  capsys):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    good = val_images(demo_data)[:10]
    for p in good[:9]:
        shutil.copy(p, folder / p.name)
    shutil.copy(good[9], folder / "nested" / "no_suffix")  # taken by its content
    truncated_jpeg(folder / "broken.jpg")
    (folder / "notes.jpg").write_text("not an image\n")
    (folder / "README.txt").write_text("a note beside the photos, not an image\n")
    out = tmp_path / "preds.csv"
    result = run_predict(trained, folder, "--out", out)
    rows = read_csv(out)
    assert len(rows) == 10 and result["predicted"] == 10
    assert {r["path"] for r in rows} == ({str(folder / p.name) for p in good[:9]}
                                         | {str(folder / "nested" / "no_suffix")})
    assert all(r["class"] in CLASSES for r in rows)
    np.testing.assert_allclose(probs_of(rows).sum(1), 1, atol=1e-5)
    warning = capsys.readouterr().err
    assert "warning: 2 images skipped" in warning
    assert "broken.jpg" in warning and "notes.jpg" in warning
    skipped = (tmp_path / "preds.csv.skipped.tsv").read_text().splitlines()
    assert skipped[0] == "path\treason"
    reasons = dict(line.split("\t") for line in skipped[1:])
    assert set(reasons) == {str(folder / "broken.jpg"), str(folder / "notes.jpg")}
    assert "truncated" in reasons[str(folder / "broken.jpg")]
    assert "cannot identify image file" in reasons[str(folder / "notes.jpg")]
    # again over the same file with nothing to skip: no earlier run's skipped list stays beside it
    for name in ("broken.jpg", "notes.jpg"):
        (folder / name).unlink()
    run_predict(trained, folder, "--out", out, "--overwrite")
    assert len(read_csv(out)) == 10 and not (tmp_path / "preds.csv.skipped.tsv").exists()


def test_two_outputs_of_one_name_keep_their_own_skipped_lists(demo_data, trained, tmp_path):
    """preds.csv and preds.jsonl are two files; so are their lists of skipped images."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(val_images(demo_data)[0], folder)
    (folder / "notes.jpg").write_text("not an image\n")
    for name in ("preds.csv", "preds.jsonl"):
        run_predict(trained, folder, "--out", tmp_path / name)
    for name in ("preds.csv", "preds.jsonl"):
        lines = (tmp_path / f"{name}.skipped.tsv").read_text().splitlines()
        assert lines == ["path\treason", f"{folder / 'notes.jpg'}\t" + lines[1].split("\t")[1]]


def test_only_unreadable_images_print_a_note_not_a_traceback(trained, tmp_path, capsys):
    truncated_jpeg(tmp_path / "broken.jpg")
    assert run_predict(trained, tmp_path / "broken.jpg")["predicted"] == 0
    captured = capsys.readouterr()
    assert "no image could be read" in captured.out and "1 image skipped" in captured.err


def test_probabilities_equal_evaluate_and_a_direct_computation(demo_data, trained, tmp_path):
    """The evaluation list's images through predict.py, evaluate.py (its cache path) and by
    hand (PIL, torchvision's transforms and ImageNet's constants, the bare network)."""
    run_evaluate = evaluate.main(evaluate.get_args_parser().parse_args(
        eval_argv(demo_data, trained, tmp_path / "eval")))
    assert run_evaluate["num_images"] > 20
    listed = read_csv(tmp_path / "eval" / "predictions.csv")
    image_dir = demo_data / "coco" / "images" / "val2017"
    paths = tmp_path / "paths.txt"
    paths.write_text("".join(f"{image_dir / r['file']}\n" for r in listed))
    run_predict(trained, "--list", paths, "--out", tmp_path / "preds.csv", "--batch-size", 7)
    rows = read_csv(tmp_path / "preds.csv")
    assert [r["path"] for r in rows] == [str(image_dir / r["file"]) for r in listed]
    ours = probs_of(rows)
    assert np.abs(ours - probs_of(listed)).max() < 2e-6  # both written to 6 decimals
    from coco4.predictor import load_predictor

    image_list, direct = direct_predictions(load_predictor(trained, "cpu").model.net,
                                            demo_data, 32, stored_temperature(trained))
    by_file = dict(zip(image_list.files, direct.numpy()))
    assert np.abs(ours - np.array([by_file[r["file"]] for r in listed])).max() < 1e-4
    assert [r["class"] for r in rows] == [r["predicted_label"] for r in listed]


def test_the_original_checkpoint_format_at_its_224_px_protocol(demo_data, few_val, tmp_path):
    torch.manual_seed(0)
    model = original_model()
    path = tmp_path / "original.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 69}, path)
    image_list, direct = direct_predictions(model, demo_data, 224,
                                            list_path=few_val / "annotation_val.txt")
    image_dir = demo_data / "coco" / "images" / "val2017"
    run_predict(path, *(image_dir / f for f in image_list.files), "--out", tmp_path / "p.csv")
    got = probs_of(read_csv(tmp_path / "p.csv"))
    assert len(got) == 8 and np.abs(got - direct.numpy()).max() < 1e-4


def test_top_k_min_prob_and_json_lines(demo_data, trained, tmp_path):
    images = val_images(demo_data)[:12]
    out = tmp_path / "new" / "folder" / "p.jsonl"  # made when it does not exist yet
    run_predict(trained, *images, "--out", out, "--top-k", 3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in images]
    for r in rows:
        ranked = sorted(r["probs"].items(), key=lambda kv: -kv[1])[:3]
        assert [t["class"] for t in r["top_k"]] == [c for c, _ in ranked]
        assert r["class"] == ranked[0][0] and r["prob"] == pytest.approx(ranked[0][1])
    # a threshold between the least and most confident image: the least sure become unknown
    tops = sorted(r["prob"] for r in rows)
    threshold = (tops[len(tops) // 2 - 1] + tops[len(tops) // 2]) / 2
    run_predict(trained, *images, "--out", tmp_path / "p.csv", "--min-prob", threshold,
                "--top-k", 2)
    thresholded = read_csv(tmp_path / "p.csv")
    for r, plain in zip(thresholded, rows):
        assert r["class"] == (plain["class"] if plain["prob"] >= threshold else "unknown")
        assert r["top1"].startswith(plain["class"] + ":")  # the top-k keep the model's ranking
    assert sum(r["class"] == "unknown" for r in thresholded) == len(rows) // 2


def test_a_top_probability_equal_to_min_prob_keeps_its_class():
    """--min-prob's help says an image is 'unknown' *below* it: one exactly at it keeps its
    class (0.5 and 0.25 are exact in float32, so the comparison is exact)."""
    from coco4.file_predictions import Batch, RowFormat

    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]])
    batch = Batch([Path("a.jpg"), Path("b.jpg")], probs, [])
    rows = list(RowFormat(tuple(CLASSES), min_prob=0.5).rows(batch))
    assert [r["class"] for r in rows] == ["bird", "unknown"]
    assert [r["prob"] for r in rows] == [0.5, 0.25]


def test_a_few_images_are_a_table_and_many_a_csv_beside_the_checkpoint(demo_data, trained,
                                                                       tmp_path, capsys):
    ckpt = tmp_path / "ckpt" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(trained, ckpt)
    images = val_images(demo_data)
    assert run_predict(ckpt, *images[:3])["out"] is None
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["image", "class", "prob"] and len(printed) == 4
    assert not list(ckpt.parent.glob("*.csv"))
    first = run_predict(ckpt, *images[:25])
    second = run_predict(ckpt, *images[:25])  # never over the first run's file
    assert first["out"] == str(ckpt.parent / "predictions.csv")
    assert second["out"] == str(ckpt.parent / "predictions-2.csv")
    assert read_csv(first["out"]) == read_csv(second["out"])
    with pytest.raises(Coco4Error, match=r"predictions.csv exists; choose another --out, or "
                                         r"pass --overwrite$"):
        run_predict(ckpt, *images[:25], "--out", first["out"])
    run_predict(ckpt, *images[:2], "--out", first["out"], "--overwrite")
    assert len(read_csv(first["out"])) == 2


def test_globs_and_lists_find_each_image_once(demo_data, trained, tmp_path):
    folder = demo_data / "coco" / "images" / "val2017"
    listed = tmp_path / "list.txt"
    listed.write_text(f"{val_images(demo_data)[0]}\n\n{val_images(demo_data)[1]}\n")
    run_predict(trained, str(folder / "*.jpg"), "--list", listed, "--out", tmp_path / "p.csv")
    rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == len(list(folder.glob("*.jpg"))) == len({r["path"] for r in rows})


def test_a_recursive_glob_follows_no_symlink_loop(demo_data, trained, tmp_path):
    """glob's own ** follows a link to a parent folder: each image again at every depth."""
    photos = tmp_path / "p"
    (photos / "a").mkdir(parents=True)
    for i, image in enumerate(val_images(demo_data)[:2]):
        shutil.copy(image, (photos / "a" if i else photos) / image.name)
    (photos / "a" / "up").symlink_to("..")
    found = run_predict(trained, f"{photos}/**/*.jpg", "--out", tmp_path / "p.csv")
    assert found["predicted"] == 2 and len(read_csv(tmp_path / "p.csv")) == 2


@pytest.mark.parametrize("pattern", ["{root}/**/*.jpg", "./p/**/*.jpg", "p//**/*.jpg",
                                     "{root}/./**/*.jpg", "p/**"])
def test_a_recursive_glob_finds_what_pythons_glob_finds(tmp_path, monkeypatch, pattern):
    monkeypatch.chdir(tmp_path)
    for name in ("p/1.jpg", "p/a/2.jpg", "p/a/b/3.jpg", "p/a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    pattern = pattern.format(root=tmp_path / "p")
    # the reference: the files Python's own glob matches (a non-image one is passed on, to be
    # reported as unreadable, as for any file a user names)
    want = [p for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    assert len(want) >= 3
    assert sorted(map(str, find_images([pattern]))) == sorted(str(Path(p)) for p in want)


@pytest.mark.parametrize("argv, message", [
    (["IMAGE", "--min-prob", "1.5"], "--min-prob must be between 0 and 1, got 1.5"),
    (["IMAGE", "--min-prob", "nan"], "--min-prob must be between 0 and 1, got nan"),
    (["IMAGE", "--min-prob", "80"],
     "--min-prob must be between 0 and 1, got 80.0; it is a fraction: for 80% pass 0.8"),
    (["IMAGE", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["IMAGE", "--top-k", "5"], "--top-k 5: the checkpoint has only 4 classes"),
    (["{tmp}/nope.jpg"], "{tmp}/nope.jpg: no such file or folder"),
    (["--list", "{tmp}/nope.txt"], "--list {tmp}/nope.txt: no such file"),
    (["--list", "{tmp}/empty"], "--list {tmp}/empty: no such file"),
    (["{tmp}/empty"], "no images found in {tmp}/empty; "),
    (["{tmp}/*.png"], "no images found in {tmp}/*.png; "),
    (["IMAGE", "--out", "{tmp}/file/p.csv"], "cannot write to {tmp}/file: "),
    (["IMAGE", "--out", "{tmp}/empty", "--overwrite"], "--out {tmp}/empty is a folder; "),
])
def test_bad_input_is_one_line_before_any_prediction(demo_data, trained, tmp_path, argv,
                                                     message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("a file, not a folder\n")
    argv = [str(val_images(demo_data)[0]) if a == "IMAGE" else a.format(tmp=tmp_path)
            for a in argv]
    with pytest.raises(Coco4Error, match="^" + re.escape(message.format(tmp=tmp_path))):
        run_predict(trained, *argv)


def test_strict_stops_at_an_unreadable_image_and_an_unsafe_checkpoint_is_refused(
        demo_data, trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(val_images(demo_data)[0], folder)
    (folder / "notes.jpg").write_text("not an image\n")
    common = ["--device", "cpu", "--workers", "0"]
    ran = run_script("predict", *common, "--checkpoint", trained, folder, "--strict")
    assert ran.status == 2
    assert ran.error.startswith(f"cannot use image {folder / 'notes.jpg'} (unreadable")
    marker = tmp_path / "pwned"
    payload = torch.load(trained, weights_only=True)
    payload["extra"] = CreatesFile(marker)
    torch.save(payload, tmp_path / "bad.pt")
    ran = run_script("predict", *common, "--checkpoint", tmp_path / "bad.pt", folder, "--out",
                     tmp_path / "p.csv")
    assert ran.status == 2 and ran.error.startswith("refusing")
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_the_unseen_kind_of_the_min_prob_tradeoff_is_the_generators_distractor_images(tmp_path):
    """``python -m tools.unknowns`` measures --min-prob on images that hold only
    other categories: exactly the generator's distractors-only case, in both splits."""
    from coco4.synthetic import make_synthetic_coco
    from tools.unknowns import unseen_kind

    summary = make_synthetic_coco(tmp_path / "coco", num_train=60, num_val=40, seed=2,
                                  image_sizes=((48, 48),), progress=False,
                                  lists_dir=tmp_path / "data")
    found = unseen_kind(tmp_path / "coco", CLASSES)
    assert len(found) == sum(summary[s]["cases"]["distractors_only"] for s in ("train", "val"))
    assert all(p.is_file() for p in found)
    listed = {f for s in ("train", "val") for f in
              (tmp_path / "data" / f"annotation_{s}.txt").read_text().split()}
    assert not {p.name for p in found} & listed  # training never saw them


def test_the_count_it_prints_is_of_images_predicted(demo_data, trained, tmp_path, capsys):
    image = val_images(demo_data)[0]
    run_predict(trained, image, "--out", tmp_path / "one.csv")
    run_predict(trained, image, val_images(demo_data)[1], "--out", tmp_path / "two.csv")
    printed = capsys.readouterr().out
    assert f"predicted 1 image -> {tmp_path / 'one.csv'}" in printed
    assert f"predicted 2 images -> {tmp_path / 'two.csv'}" in printed


def test_overwrite_over_a_longer_interrupted_partial_file_keeps_none_of_it(demo_data, trained,
                                                                          tmp_path):
    """An interrupted run leaves OUT.partial; --overwrite takes it over, and the new rows
    must not end in the tail of the longer old file (#35's blind spot)."""
    images = sorted((demo_data / "coco" / "images" / "val2017").iterdir())[:2]
    out = tmp_path / "rows.csv"
    (tmp_path / "rows.csv.partial").write_text("path,class\n" + "old/row.jpg,bird\n" * 500)
    ran = run_script("predict", *images, "--checkpoint", trained, "--out", out, "--device",
                     "cpu", "--workers", "0", "--overwrite")
    assert ran.status == 0, ran.err[-1500:]
    rows = read_csv(out)
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert "old/row.jpg" not in out.read_text() and not (tmp_path / "rows.csv.partial").exists()
