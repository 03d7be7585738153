"""Hostile and careless inputs (#25): no flag combination destroys a user's file, no checkpoint
field takes the machine down, every failure is one line, and the outputs are whole or clearly
marked partial. Each test names the case of the issue it pins."""
import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from coco4.data.lists import read_list

from conftest import REPO, eval_argv, read_csv, run_script, tmpfs, train_argv

WITH_TINY = REPO / "tests" / "scripts" / "with_tiny.py"


def images_of(demo_data, n):
    return sorted((demo_data / "coco" / "images" / "val2017").iterdir())[:n]


def predict(*argv):
    return run_script("predict", "--device", "cpu", "--workers", "0", *argv)


# ---------------------------------------------------------------- a user's file destroyed


def test_1_predict_never_writes_over_an_input_image(demo_data, trained, tmp_path):
    image = tmp_path / "a.png"
    shutil.copy(images_of(demo_data, 1)[0], image)
    before = image.read_bytes()
    ran = predict(image, "--checkpoint", trained, "--out", image, "--overwrite")
    assert ran.status == 2 and ran.error == (f"--out {image} is also an input image: writing "
                                             "it would destroy it; choose another output path")
    assert image.read_bytes() == before


def test_2_predict_never_writes_over_the_checkpoint(demo_data, trained, tmp_path):
    ckpt = tmp_path / "model.pt"
    shutil.copy(trained, ckpt)
    ran = predict(*images_of(demo_data, 25), "--checkpoint", ckpt, "--out", ckpt, "--overwrite")
    assert ran.status == 2 and ran.error.startswith(f"--out {ckpt} is also --checkpoint")
    assert ckpt.read_bytes() == trained.read_bytes()


def test_3_export_never_writes_over_the_checkpoint(trained, tmp_path):
    ckpt = tmp_path / "model.pt"
    shutil.copy(trained, ckpt)
    link = tmp_path / "link.onnx"
    link.symlink_to(ckpt)  # the same file under another name
    for out in (ckpt, link):
        ran = run_script("export", "--checkpoint", ckpt, "--out", out, "--overwrite")
        assert ran.status == 2 and ran.error.startswith(f"--out {out} is also --checkpoint")
    assert ckpt.read_bytes() == trained.read_bytes()


def test_4_overwrite_deletes_nothing_when_the_new_run_fails_its_checks(demo_data, run_copy,
                                                                         tmp_path):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    ran = run_script("train", *train_argv(demo_data, run_copy, "--overwrite", "--weights",
                                          tmp_path / "typo.pth"))
    assert ran.status == 2 and "typo.pth not found" in ran.error
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before
    assert (run_copy / "tensorboard").is_dir()
    # and the earlier run's own best.pt as --weights: loaded, then deleted: refused
    ran = run_script("train", *train_argv(demo_data, run_copy, "--overwrite", "--weights",
                                          run_copy / "best.pt"))
    assert ran.status == 2 and ran.error.startswith(f"--weights {run_copy / 'best.pt'} is the "
                                                    "earlier run's best.pt")
    assert (run_copy / "best.pt").read_bytes() == before["best.pt"]


def test_4b_a_resumed_run_never_mixes_with_another_run(demo_data, trained_run, run_copy,
                                                        tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    (run_copy / "last.pt").unlink()  # its best.pt and metrics.csv are still another run's
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    resume = ("--resume", other / "last.pt", "--epochs", "12")
    ran = run_script("train", *train_argv(demo_data, run_copy, *resume))
    assert ran.status == 2 and ran.error == (
        f"{run_copy} holds another run (best.pt, metrics.csv, tensorboard), which resuming "
        f"{other / 'last.pt'} there would mix with it; resume into the folder of --resume, "
        "choose another --output-dir, or pass --overwrite to replace that run")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before
    # --overwrite: the other run's files go before the resumed run writes its own
    ran = run_script("train", *train_argv(demo_data, run_copy, *resume, "--overwrite"))
    assert ran.status == 0, ran.error
    best = run_copy / "best.pt"  # written only if the resumed epochs beat the resumed best
    assert not best.exists() or best.read_bytes() != before["best.pt"]
    rows = (run_copy / "metrics.csv").read_text().splitlines()
    assert rows[1:] == (other / "metrics.csv").read_text().splitlines()[1:] + rows[-2:]
    assert (other / "last.pt").exists()  # the file resumed is never among those deleted


def test_4c_a_run_resumed_from_another_file_in_its_folder_is_checked_too(demo_data, run_copy):
    """An older copy of last.pt resumed into its own folder would replace the newer last.pt
    without a word (best.pt is refused before: it holds no training state)."""
    before = (run_copy / "last.pt").read_bytes()
    (run_copy / "older.pt").write_bytes(before)
    ran = run_script("train", *train_argv(demo_data, run_copy, "--resume", run_copy / "older.pt",
                                          "--epochs", "12"))
    assert ran.status == 2 and ran.error == (
        f"{run_copy} holds another run (last.pt, best.pt, metrics.csv, tensorboard), which "
        f"resuming {run_copy / 'older.pt'} there would mix with it; resume "
        f"{run_copy / 'last.pt'}, choose another --output-dir, or pass --overwrite to replace "
        "that run")
    assert (run_copy / "last.pt").read_bytes() == before


# ---------------------------------------------------------------- checkpoint fields


def edited(trained, tmp_path, change, name="edited.pt"):
    ckpt = torch.load(trained, weights_only=True)
    change(ckpt)
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


FIELDS = [
    ("zero-image-size", lambda c: c["config"].update(image_size=0), "config.image_size is 0,"),
    ("negative-image-size", lambda c: c["config"].update(image_size=-32),
     "config.image_size is -32,"),
    ("text-image-size", lambda c: c["config"].update(image_size="224"),
     "config.image_size is '224',"),
    ("no-config", lambda c: c.pop("config"), "it has no config"),
    ("no-classes", lambda c: c.pop("classes"), "it has no classes"),
    ("no-model", lambda c: c.pop("model"), "it has no model"),
    ("classes-a-string", lambda c: c.update(classes="bird"), "classes is 'bird', not a list"),
    ("classes-repeated", lambda c: c.update(classes=["bird", "bird", "train", "boat"]),
     "classes ['bird', 'bird', 'train', 'boat'] are not two or more distinct names"),
    ("format-version-text", lambda c: c.update(format_version="3"), "format_version is '3'"),
    ("arch-unknown", lambda c: c["config"].update(arch=7), "config.arch is 7"),
]


@pytest.mark.parametrize("change, fragment", [f[1:] for f in FIELDS], ids=[f[0] for f in FIELDS])
def test_5_and_10_to_12_and_20_a_checkpoint_field_that_cannot_be_used_is_one_line(
        demo_data, trained, tmp_path, change, fragment):
    bad = edited(trained, tmp_path, change)
    for ran in (predict(*images_of(demo_data, 1), "--checkpoint", bad),
                run_script("evaluate", *eval_argv(demo_data, bad, tmp_path / "eval")),
                run_script("train", *train_argv(demo_data, tmp_path / "run", "--weights", bad)),
                run_script("train", *train_argv(demo_data, tmp_path / "run", "--resume", bad))):
        assert ran.status == 2 and fragment in ran.error, ran.err


def test_5_a_checkpoint_asking_for_a_huge_image_is_refused_before_any_allocation(
        demo_data, trained, tmp_path):
    """In a process of its own with 4 GB of memory at most: without the check, resizing an
    image to 114,286 pixels square (39 GB) fails there, not on this machine."""
    bad = edited(trained, tmp_path, lambda c: c["config"].update(image_size=100000))
    cap = ("import resource; resource.setrlimit(resource.RLIMIT_DATA, (4 * 2**30, 4 * 2**30)); "
           f"import runpy; runpy.run_path({str(WITH_TINY)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", cap, str(REPO / "predict.py"),
                           str(images_of(demo_data, 1)[0]), "--checkpoint", str(bad),
                           "--device", "cpu", "--workers", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().endswith(f"error: {bad} is not a usable coco4 checkpoint: "
                                        "config.image_size is 100000, not a whole number from "
                                        "32 to 1024; the file is damaged or edited: use another "
                                        "checkpoint")


def test_10_a_stored_setting_of_the_wrong_type_cannot_be_resumed(demo_data, run_copy, tmp_path):
    bad = edited(run_copy / "last.pt", tmp_path, lambda c: c["config"].update(lr="fast"))
    ran = run_script("train", *train_argv(demo_data, run_copy, "--resume", bad, "--epochs", "12",
                                          "--overwrite"))
    assert ran.status == 2 and ran.error == (f"{bad} holds a training config this coco4 cannot "
                                             "resume (--lr must be a number, got 'fast'); start "
                                             "a new run from its weights with --weights PATH")


def test_19_nan_weights_are_refused_not_predicted(demo_data, trained, tmp_path):
    def poison(ckpt):
        ckpt["model"]["fc.3.weight"][0, 0] = float("nan")

    bad = edited(trained, tmp_path, poison)
    ran = predict(*images_of(demo_data, 2), "--checkpoint", bad, "--min-prob", "0")
    assert ran.status == 2 and ran.error.startswith(f"{bad} holds 1 weights that are not finite "
                                                    "numbers (NaN or inf) in fc.3.weight")


def test_20_a_class_file_naming_a_class_twice_is_refused(demo_data, trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data / "data", data, ignore=shutil.ignore_patterns("cache"))
    (data / "classes.txt").write_text("bird\nairplane\nbird\nboat\n")
    ran = run_script("train", *train_argv(demo_data, tmp_path / "run", "--data-dir", data))
    assert ran.status == 2 and ran.error == (f"{data / 'classes.txt'} names the class 'bird' "
                                             "twice; each class once")
    # nor a class predict.py could not tell from the images --min-prob rejects
    (data / "classes.txt").write_text("bird\nairplane\nunknown\nboat\n")
    ran = run_script("train", *train_argv(demo_data, tmp_path / "run", "--data-dir", data))
    assert ran.status == 2 and ran.error == (f"{data / 'classes.txt'} names a class 'unknown', "
                                             "the label predict.py --min-prob gives the images "
                                             "it rejects: rename the class")
    # and a checkpoint that has one (made before) is refused --min-prob
    ckpt = torch.load(trained, weights_only=True)
    ckpt["classes"] = ["bird", "airplane", "unknown", "boat"]
    torch.save(ckpt, tmp_path / "unknown.pt")
    ran = predict(*images_of(demo_data, 2), "--checkpoint", tmp_path / "unknown.pt",
                  "--min-prob", "0.5")
    assert ran.status == 2 and ran.error == (
        f"--min-prob labels the images it rejects 'unknown', but {tmp_path / 'unknown.pt'} has "
        "a class of that name; run without --min-prob")


# ---------------------------------------------------------------- one line, whole files


def fill(folder: Path, leave: int) -> None:
    stat = os.statvfs(folder)
    room = stat.f_bavail * stat.f_frsize - leave
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(room, 0))


def test_6_predict_on_a_full_disk_is_one_line_and_nothing_under_the_final_name(
        demo_data, trained, tmp_path):
    with tmpfs(tmp_path / "small", "size=256k") as mount:
        fill(mount, 0)
        out = mount / "p.csv"
        ran = predict(*images_of(demo_data, 30), "--checkpoint", trained, "--out", out,
                      "--batch-size", "8")
        assert ran.status == 2 and ran.error.startswith(
            f"could not write {out}.partial: No space left on device; it holds the rows so far")
        assert not out.exists()
    ran = predict(images_of(demo_data, 1)[0], "--checkpoint", trained, "--out", "/dev/full",
                  "--overwrite")
    assert ran.status == 2 and ran.error == "--out /dev/full is not a regular file; give a " \
                                            "file name"


def test_6b_a_run_beside_writing_the_same_partial_keeps_its_rows(demo_data, trained, tmp_path,
                                                                  monkeypatch):
    """Two predict.py runs that chose one name between the check and the write: the second
    stops with one line; the first one's rows are never mixed with its own."""
    from coco4 import file_predictions
    out, checked = tmp_path / "p.csv", file_predictions.output_paths

    def check_then_the_other_run_starts(*args):
        paths = checked(*args)
        Path(f"{out}.partial").write_text("the other run's rows\n")
        return paths
    monkeypatch.setattr(file_predictions, "output_paths", check_then_the_other_run_starts)
    ran = predict(*images_of(demo_data, 20), "--checkpoint", trained, "--out", out)
    assert ran.status == 2 and ran.error == (f"{out}.partial appeared since the check: another "
                                             f"run is writing to {out}; wait for it or choose "
                                             "another --out")
    assert Path(f"{out}.partial").read_text() == "the other run's rows\n" and not out.exists()
    # with --overwrite, a partial another run holds (locked) is not taken over either
    monkeypatch.undo()
    with open(f"{out}.partial", "a") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)
        ran = predict(*images_of(demo_data, 20), "--checkpoint", trained, "--out", out,
                      "--overwrite")
    assert ran.status == 2 and ran.error == (f"another run is writing {out}.partial; wait for "
                                             "it or choose another --out")
    assert Path(f"{out}.partial").read_text() == "the other run's rows\n" and not out.exists()
    # an interrupted run's partial, which no run holds, is what --overwrite takes over
    ran = predict(*images_of(demo_data, 20), "--checkpoint", trained, "--out", out,
                  "--overwrite")
    assert ran.status == 0 and len(read_csv(out)) == 20 and not Path(f"{out}.partial").exists()


def test_7_training_into_a_full_disk_is_one_line(demo_data, tmp_path):
    with tmpfs(tmp_path / "small", "size=256k") as mount:
        (mount / "run").mkdir()
        fill(mount, 0)
        ran = run_script("train", *train_argv(demo_data, mount / "run"))
        assert ran.status == 2 and ran.error.startswith(
            f"could not write {mount / 'run' / '.coco4.lock'}: No space left on device")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_8_a_signal_stops_predict_with_one_line_and_its_rows_marked_partial(
        demo_data, trained, tmp_path, monkeypatch, signum):
    """The signal arrives while the second batch is predicted, as a user's Ctrl-C would."""
    import coco4.file_predictions as fp

    real, seen = fp.predict_stream, []

    def stream(*args, **kwargs):
        for batch in real(*args, **kwargs):
            seen.append(1)
            if len(seen) == 2:
                os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(fp, "predict_stream", stream)
    out = tmp_path / "p.csv"
    ran = predict(*images_of(demo_data, 40), "--checkpoint", trained, "--out", out,
                  "--batch-size", "8")
    assert ran.status == 128 + signum
    name = signal.Signals(signum).name
    assert ran.error == (f"stopped by {name} after 16 of 40 images; the rows so far are in "
                         f"{out}.partial")
    assert not out.exists() and len(read_csv(Path(f"{out}.partial"))) == 16


def test_9_ctrl_c_while_the_cache_is_built_is_one_line_and_leaves_no_partial_cache(
        demo_data, trained, tmp_path, monkeypatch):
    from coco4.data import cache

    real = cache._DecodeDataset.__getitem__

    def interrupted(self, i):
        if i == 5:
            os.kill(os.getpid(), signal.SIGINT)  # Python's handler: KeyboardInterrupt here
        return real(self, i)

    monkeypatch.setattr(cache._DecodeDataset, "__getitem__", interrupted)
    try:
        ran = run_script("evaluate", *eval_argv(demo_data, trained, tmp_path / "eval",
                                                "--cache-dir", tmp_path / "cache"))
    except KeyboardInterrupt:  # a traceback for the user, and pytest's own stop here
        pytest.fail("Ctrl-C escaped the command as a KeyboardInterrupt")
    assert ran.status == 130
    assert ran.error == "stopped by SIGINT; no file was left half-written under its final name"
    assert list((tmp_path / "cache").iterdir()) == [] and not (tmp_path / "eval").exists()


def coco_file(tmp_path, text):
    ann = tmp_path / "coco" / "annotations"
    ann.mkdir(parents=True)
    for split in ("train", "val"):
        (ann / f"instances_{split}2017.json").write_text(text)
    return tmp_path / "coco"


def test_13_a_coco_json_nested_without_end_is_one_line(tmp_path):
    root = coco_file(tmp_path, "[" * 100_000 + "]" * 100_000)
    ran = run_script("annotation_prepare", "--coco-root", root, "--out-dir", tmp_path / "data")
    assert ran.status == 2 and ran.error.endswith("is not a COCO instances file (JSON nested "
                                                  "too deep to read)")


@pytest.mark.parametrize("name, why", [
    ('"\\ud800.jpg"', "it is not valid UTF-8 text"),  # valid JSON: a lone surrogate's escape
    ('"../../../etc/passwd"', "it climbs out of the image folder (..)"),
    ('"/etc/passwd"', "it is an absolute path, outside the image folder"),
    ('"."', "it is not written plainly"),
    ('"./a.jpg"', "it is not written plainly (as 'a.jpg')"),
], ids=["lone-surrogate", "dot-dot", "absolute", "dot", "dot-slash"])
def test_14_and_16_a_coco_file_name_outside_the_image_folder_is_one_line(tmp_path, name, why):
    from test_coco_filter import make_coco

    data = make_coco({1: [("bird", 0)], 2: [("boat", 0)]})
    data["images"][1]["file_name"] = "PLACEHOLDER"
    root = coco_file(tmp_path, json.dumps(data).replace('"PLACEHOLDER"', name))
    ran = run_script("annotation_prepare", "--coco-root", root, "--out-dir", tmp_path / "data")
    assert ran.status == 2 and "images[1] (id 2) has the file name" in ran.error
    assert why in ran.error
    assert not (tmp_path / "data" / "annotation_train.txt").exists()


def test_15_an_image_whose_name_is_not_utf8_is_skipped_and_the_csv_stays_whole(
        demo_data, trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = images_of(demo_data, 2)
    for image in good:
        shutil.copy(image, folder)
    shutil.copy(good[0], os.fsencode(folder) + b"/caf\xe9.jpg")  # Latin-1, not UTF-8
    ran = predict(folder, "--checkpoint", trained, "--out", tmp_path / "p.csv")
    assert ran.status == 0, ran.err
    assert [Path(r["path"]).name for r in read_csv(tmp_path / "p.csv")] == [g.name for g in good]
    assert "caf\\xe9.jpg (its name is not valid UTF-8; rename it)" in ran.err
    skipped = (tmp_path / "p.csv.skipped.tsv").read_text(encoding="utf-8")
    assert "caf\\xe9.jpg\tits name is not valid UTF-8" in skipped


@pytest.mark.parametrize("lines, fragment", [
    ("a.jpg 0\n./a.jpg 0\n", "./a.jpg' cannot be used: it is not written plainly (as 'a.jpg')"),
    ("../x.jpg 0\n", "'../x.jpg' cannot be used: it climbs out of the image folder"),
    ("a.jpg 0_1\n", "label '0_1' is not an integer"),
    ("a.jpg \u0663\n", "label '\u0663' is not an integer"),
], ids=["same-image-twice", "dot-dot", "underscore-digits", "arabic-digit"])
def test_17_and_18_list_lines_that_would_count_an_image_twice_or_read_a_label_wrongly(
        tmp_path, lines, fragment):
    from coco4.errors import Coco4Error

    (tmp_path / "l.txt").write_text(lines, encoding="utf-8")
    with pytest.raises(Coco4Error) as e:
        read_list(tmp_path / "l.txt")
    assert str(e.value).startswith(f"{tmp_path / 'l.txt'}:") and fragment in str(e.value)


def test_21_a_run_that_stopped_before_its_first_checkpoint_is_not_offered_a_resume(
        demo_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch\n")
    ran = run_script("train", *train_argv(demo_data, run))
    assert ran.status == 2 and ran.error == (
        f"{run} already holds a run (metrics.csv); it stopped before its first checkpoint, so "
        "there is nothing to resume: choose another --output-dir, or pass --overwrite to "
        "replace it")


def test_22_paths_that_exist_but_are_no_files_are_named_as_such(demo_data, trained, tmp_path):
    ran = predict(images_of(demo_data, 1)[0], "--checkpoint", tmp_path)
    assert ran.status == 2 and ran.error == f"{tmp_path} is a folder, not a checkpoint file; " \
                                            "give the .pt file"
    ran = run_script("train", *train_argv(demo_data, tmp_path / "run", "--weights", "/dev/zero"))
    assert ran.status == 2 and ran.error.startswith("/dev/zero is not a regular file (a device")
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    ran = run_script("visualize", *eval_argv(demo_data, trained, tmp_path / "vis", "--image",
                                             fifo))
    assert ran.status == 2 and ran.error == f"--image {fifo}: not a regular file; give an " \
                                            "image file"


def test_23_a_cell_a_spreadsheet_would_run_as_a_formula_is_quoted(demo_data, trained, tmp_path,
                                                                   monkeypatch):
    name = '=HYPERLINK("x.example","click").png'
    Image.open(images_of(demo_data, 1)[0]).save(tmp_path / name, format="PNG")
    monkeypatch.chdir(tmp_path)  # the path as given, relative: the cell starts with =
    assert predict(name, "--checkpoint", trained, "--out", tmp_path / "p.csv").status == 0
    with open(tmp_path / "p.csv", newline="") as f:
        row = list(csv.reader(f))[1]
    assert row[0] == "'" + name  # the path cell starts with ', not =
    from coco4.fileio import spreadsheet_safe

    assert [spreadsheet_safe(t) for t in ("=1+2", "+1", "-1", "@x", "bird", "0.5")] == \
        ["'=1+2", "'+1", "'-1", "'@x", "bird", "0.5"]


# ---------------------------------------------------------------- the second pass


def test_a_dollar_in_a_file_name_is_text_in_the_pictures_not_tex(demo_data, trained, tmp_path):
    """matplotlib reads $...$ as TeX: a checkpoint named best$\\bad$.pt stopped evaluate.py
    with a 65-line traceback after metrics.json, before its pictures."""
    checkpoint = Path(shutil.copy(trained, tmp_path / "best$\\bad$.pt"))
    ran = run_script("evaluate", *eval_argv(demo_data, checkpoint, tmp_path / "eval"))
    assert ran.status == 0, ran.error
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 5_000


def test_skipped_names_with_a_tab_or_a_newline_keep_their_rows(demo_data, trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(images_of(demo_data, 1)[0], folder / "ok.jpg")
    names = ["=bad\ttab.jpg", "bad\nline.jpg"]
    for name in names:
        (folder / name).write_bytes(b"not an image")
    ran = predict(folder, "--checkpoint", trained, "--out", tmp_path / "p.csv")
    assert ran.status == 0, ran.err
    with open(tmp_path / "p.csv.skipped.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["path", "reason"]
    assert [r[0] for r in rows[1:]] == [f"{folder}/{name}" for name in names]
    warning = [line for line in ran.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "bad\\ttab.jpg" in warning[0] and "bad\\nline.jpg" in warning[0]


def test_annotation_prepare_never_writes_over_its_coco_json(demo_data, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    train_json = Path(shutil.copy(demo_data / "coco" / "annotations" /
                                  "instances_train2017.json", out / "report.json"))
    before = train_json.read_bytes()
    ran = run_script("annotation_prepare", "--train-json", train_json, "--val-json",
                     demo_data / "coco" / "annotations" / "instances_val2017.json",
                     "--out-dir", out)
    assert ran.status == 2 and ran.error == (f"--out-dir's {train_json} is also --train-json: "
                                             "writing it would destroy it; choose another "
                                             "output path")
    assert train_json.read_bytes() == before and sorted(out.iterdir()) == [train_json]


def test_lists_made_again_without_other_lose_the_earlier_negatives(other_data, tmp_path):
    out = Path(shutil.copytree(other_data / "data4", tmp_path / "data"))
    coco = ("--coco-root", other_data / "coco", "--out-dir", out)
    ran = run_script("annotation_prepare", *coco, "--other", "24", "--other-holdout", "bird")
    assert ran.status == 2 and ran.error.startswith("--other-holdout names bird, one of the "
                                                    "classes")
    ran = run_script("annotation_prepare", *coco)
    assert ran.status == 0, ran.error
    assert not list(out.glob("negatives_*")) and "removed the earlier lists of negatives" in ran.out


def test_overwrite_names_what_later_steps_wrote_of_the_old_model(demo_data, run_copy):
    (run_copy / "eval").mkdir()
    (run_copy / "best.onnx").write_bytes(b"the old model")
    ran = run_script("train", *train_argv(demo_data, run_copy, "--overwrite", "--epochs", "1"))
    assert ran.status == 0, ran.error
    assert (f"warning: --overwrite replaced the earlier run in {run_copy} but kept best.onnx, "
            "eval, written of its model by later steps") in ran.err
    assert (run_copy / "best.onnx").read_bytes() == b"the old model"
    assert (run_copy / "eval").is_dir()


def test_a_link_named_as_an_image_whose_file_is_gone_is_reported(demo_data, trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(images_of(demo_data, 1)[0], folder / "ok.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")
    ran = predict(folder, "--checkpoint", trained, "--out", tmp_path / "p.csv")
    assert ran.status == 0, ran.err
    assert [Path(r["path"]).name for r in read_csv(tmp_path / "p.csv")] == ["ok.jpg"]
    assert f"warning: 1 image skipped: {folder / 'gone.jpg'} (" in ran.err


def test_an_eval_folder_is_locked_and_never_takes_files_it_did_not_write(demo_data, trained,
                                                                          tmp_path):
    """Two evaluations into one folder at once would mix their files; a folder holding
    predict.py's predictions.csv (no metrics.json) is not an evaluation's to replace."""
    out = tmp_path / "eval"
    out.mkdir()
    with open(out / ".coco4.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        ran = run_script("evaluate", *eval_argv(demo_data, trained, out))
    assert ran.status == 2 and ran.error.startswith(f"{out} is in use by another evaluation (")
    assert ran.error.endswith("wait for it to end, or choose another --out-dir")
    (out / "predictions.csv").write_text("the user's predictions\n")
    ran = run_script("evaluate", *eval_argv(demo_data, trained, out))
    assert ran.status == 2 and ran.error == (f"{out} holds predictions.csv, not an evaluation's "
                                             "results (no metrics.json); choose another "
                                             "--out-dir, or pass --overwrite to replace them")
    assert (out / "predictions.csv").read_text() == "the user's predictions\n"


@pytest.mark.parametrize("script, argv", [
    ("predict", lambda long: [long / "photo.jpg", "--device", "cpu"]),
    ("evaluate", lambda long: ["--checkpoint", long / "best.pt"]),
    ("train", lambda long: ["--output-dir", long, "--device", "cpu"]),
    ("export", lambda long: ["--checkpoint", long / "best.pt"]),
])
def test_a_name_longer_than_the_file_system_allows_is_one_line(tmp_path, script, argv):
    """#35: a path component over 255 bytes gave an OSError traceback from Path.exists()."""
    long = tmp_path / ("x" * 300)
    ran = run_script(script, *argv(long))
    assert ran.status == 2, ran.err[-1500:]
    assert ran.error.endswith("a name in this path is longer than the file system allows (255 "
                              "bytes a folder or file name, 4,096 the whole path); shorten it")
