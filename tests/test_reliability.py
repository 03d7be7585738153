"""Bad files, bad lists, interrupted runs, full disks and untrusted checkpoints."""
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from coco4.checkpoint import read_file, save_checkpoint
from coco4.data.lists import read_list, write_list
from coco4.errors import Coco4Error
from coco4.trainer import fit

from conftest import (
    REPO,
    CreatesFile,
    eval_argv,
    read_csv,
    run_script,
    tmpfs,
    train_args,
    train_argv,
    train_cli,
)


def bad_image_data(demo_data, tmp_path):
    """The demo train list plus one image of every awkward kind, good and bad."""
    images = tmp_path / "images"
    shutil.copytree(demo_data / "coco" / "images" / "train2017", images)
    good = read_list(demo_data / "data" / "annotation_train.txt")
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(images / "cmyk.jpg")
    Image.new("P", (40, 30)).save(images / "palette.png")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / "png_named.jpg", format="PNG")
    jpeg = (images / good.files[0]).read_bytes()
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (images / "empty.jpg").write_bytes(b"")
    (images / "garbage.jpg").write_bytes(b"this is not an image\n" * 20)
    extra = ["cmyk.jpg", "palette.png", "png_named.jpg", "truncated.jpg", "empty.jpg",
             "garbage.jpg", "missing.jpg"]
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(demo_data / "data" / "classes.txt", data)
    write_list(data / "annotation_train.txt", list(good.files) + extra,
               list(good.labels) + [0] * len(extra))
    return images, data


BAD = {"truncated.jpg", "empty.jpg", "garbage.jpg", "missing.jpg"}


@pytest.mark.parametrize("data_path", ["fast", "pil"])
def test_unreadable_images_are_left_out_and_reported(demo_data, tmp_path, data_path, capsys):
    images, data = bad_image_data(demo_data, tmp_path)
    cfg = train_args(demo_data, tmp_path / "out", data_dir=str(data), train_images=str(images),
                     data_path=data_path, cache_dir=str(tmp_path / "cache"))
    fit(cfg, progress=False)
    report = read_file(tmp_path / "out" / "last.pt")["data"]
    assert set(report["left_out"]) == BAD
    assert report["left_out"]["missing.jpg"] == "missing"
    assert all(why.startswith("unreadable") for n, why in report["left_out"].items()
               if n != "missing.jpg")
    assert report["train_images"] + report["val_images"] == report["listed_images"] - len(BAD)
    assert "4 of" in capsys.readouterr().out  # reported once, with the count


def test_strict_makes_an_unreadable_image_an_error(demo_data, tmp_path):
    images, data = bad_image_data(demo_data, tmp_path)
    with pytest.raises(Coco4Error, match=r"4 of \d+ images.*(truncated|empty|garbage|missing)"):
        fit(train_args(demo_data, tmp_path / "out", data_dir=str(data), strict=True,
                       train_images=str(images), cache_dir=str(tmp_path / "cache")),
            progress=False)
    assert not (tmp_path / "out" / "last.pt").exists()


def one_line_error(ran):
    assert ran.status == 2, ran.err
    return ran.error


def write_data(tmp_path, demo_data, lines):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    shutil.copy(demo_data / "data" / "classes.txt", data)
    (data / "annotation_train.txt").write_text(lines)
    return data


@pytest.mark.parametrize("lines,fragment", [
    ("a.jpg 0\nb.jpg\n", "annotation_train.txt:2"),
    ("a.jpg zero\n", "annotation_train.txt:1"),
    ("a.jpg 0\na.jpg 7\n", "out of range for 4 classes"),
    ("a.jpg 0 extra\n", "3 fields"),
    ("", "is empty"),
])
def test_bad_list_lines_are_one_line_errors_and_write_nothing(demo_data, tmp_path, lines,
                                                               fragment):
    data = write_data(tmp_path, demo_data, lines)
    ran = run_script("train", *train_argv(demo_data, tmp_path / "out", "--data-dir", data))
    assert fragment in one_line_error(ran)
    assert not (tmp_path / "out").exists()


def test_empty_class_and_a_val_fraction_too_small(demo_data, tmp_path):
    good = read_list(demo_data / "data" / "annotation_train.txt")
    no_boat = "".join(f"{f} {y}\n" for f, y in zip(good.files, good.labels) if y != 3)
    data = write_data(tmp_path, demo_data, no_boat)
    with pytest.raises(Coco4Error, match="class 'boat' .* has no training image"):
        fit(train_args(demo_data, tmp_path / "o", data_dir=str(data)), progress=False)
    with pytest.raises(Coco4Error, match="--val-fraction 0.01 leaves class"):
        fit(train_args(demo_data, tmp_path / "o", val_fraction=0.01), progress=False)


def test_a_new_run_never_silently_replaces_an_earlier_one(demo_data, tmp_path):
    fit(train_args(demo_data, tmp_path), progress=False)
    before = {name: (tmp_path / name).read_bytes() for name in ("last.pt", "best.pt",
                                                                 "metrics.csv")}
    with pytest.raises(Coco4Error, match=r"already holds a run \(last.pt, best.pt, metrics.csv, "
                                         r"tensorboard\); continue it with --resume .*last.pt.* "
                                         r"--overwrite"):
        fit(train_args(demo_data, tmp_path, seed=1), progress=False)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    # --overwrite: the earlier run's files go first, TensorBoard events included
    fit(train_args(demo_data, tmp_path, seed=1, overwrite=True), progress=False)
    assert (tmp_path / "last.pt").read_bytes() != before["last.pt"]
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1


def test_best_pt_is_a_file_of_its_own(demo_data, tmp_path):
    fit(train_args(demo_data, tmp_path), progress=False)
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    one, other = read_file(best)["model"], read_file(last)["model"]
    assert all(torch.equal(one[k], other[k]) for k in one)  # one epoch: the best is the last
    assert best.stat().st_ino != last.stat().st_ino
    kept = best.read_bytes()
    with open(last, "r+b") as f:  # what a user's torch.save or cp over last.pt does
        f.write(b"overwritten in place")
    assert best.read_bytes() == kept and read_file(best)["epoch"] == 1


def test_resume_with_lists_for_other_classes_is_refused(demo_data, tmp_path):
    fit(train_args(demo_data, tmp_path / "run"), progress=False)
    data = tmp_path / "data"
    shutil.copytree(demo_data / "data", data, ignore=shutil.ignore_patterns("cache"))
    (data / "classes.txt").write_text("cat\ndog\ntrain\nboat\n")  # same count, other names
    with pytest.raises(Coco4Error, match=r"was trained on classes \['bird', 'airplane', "
                                         r"'train', 'boat'\], but .* is labelled for \['cat'"):
        fit(train_args(demo_data, tmp_path / "run", data_dir=str(data), epochs=2,
                       resume=str(tmp_path / "run" / "last.pt")), progress=False)


def test_an_output_folder_that_cannot_be_written_fails_before_training(demo_data, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(Coco4Error, match="cannot write to"):
        fit(train_args(demo_data, tmp_path / "file" / "out"), progress=False)


FULL_DISK = """
import resource, runpy, signal, sys
sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]
import tiny_backbone
# a real write failure: files may not grow past half a checkpoint (the cache is built already)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(demo_data, tmp_path):
    out = tmp_path / "out"
    fit(train_args(demo_data, out, epochs=1), progress=False)
    before = (out / "last.pt").read_bytes()
    argv = [str(REPO / "train.py"),
            *train_argv(demo_data, out, "--epochs", "2", "--resume", out / "last.pt")]
    proc = subprocess.run([sys.executable, "-c", FULL_DISK.format(
        repo=str(REPO), argv=argv, limit=len(before) // 2)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: could not write") and "File too large" in message
    assert "untouched" in message and "Traceback" not in proc.stderr
    assert (out / "last.pt").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_crash_between_write_and_rename_leaves_last_pt_loadable(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "last.pt", {"epoch": 1, "w": torch.ones(3)})

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies after writing the temp file

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last.pt", {"epoch": 2, "w": torch.zeros(3)})
    assert read_file(tmp_path / "last.pt")["epoch"] == 1


SAVER = """
import sys, torch
sys.path.insert(0, {repo!r})
from coco4.checkpoint import save_checkpoint
for i in range(10**6):
    save_checkpoint({path!r}, {{"epoch": i, "w": torch.full((2_000_000,), float(i))}})
    print(i, flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_last_pt_loadable(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.35, 0.6, 0.9, 1.3):
        proc = subprocess.Popen([sys.executable, "-c", SAVER.format(repo=str(REPO),
                                                                    path=str(path))],
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one checkpoint is on disk
        time.sleep(delay)
        proc.kill()
        proc.wait()
        ckpt = read_file(path)
        assert torch.all(ckpt["w"] == float(ckpt["epoch"]))


def _send_sigterm_after_first_steps(proc, seen):
    """Read the progress bar from stderr; SIGTERM once the first epoch is under way."""
    buf = ""
    while proc.poll() is None:
        ch = proc.stderr.read(1)
        if not ch:
            break
        buf += ch
        if re.search(r"epoch 1/\d+:\s+\d+%.*\| [2-9]/", buf[-200:]):
            proc.send_signal(signal.SIGTERM)
            break
    seen.append(buf + proc.stderr.read())


def test_sigterm_saves_resumes_and_matches_an_uninterrupted_run(demo_data, tmp_path):
    common = ("--epochs", "3", "--batch-size", "4", "--image-size", "48")
    fit(train_args(demo_data, tmp_path / "straight", epochs=3, batch_size=4, image_size=48),
        progress=False)
    # the tiny backbone's steps take milliseconds: a tenth of a second each, so that the
    # progress bar shows the first steps and the signal lands mid-epoch
    proc = subprocess.Popen(train_cli(demo_data, tmp_path / "cut", *common), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COCO4_TEST_STEP_SECONDS": "0.1"})
    seen = []
    reader = threading.Thread(target=_send_sigterm_after_first_steps, args=(proc, seen))
    reader.start()
    stdout = proc.stdout.read()
    proc.wait(timeout=300)
    reader.join()
    assert proc.returncode == 128 + signal.SIGTERM, seen[0][-2000:]
    message = seen[0].strip().splitlines()[-1]
    assert message.startswith("error: stopped by SIGTERM") and "Traceback" not in seen[0]
    ckpt = read_file(tmp_path / "cut" / "last.pt")
    assert (ckpt["run"]["epoch"], ckpt["run"]["step"]) < (3, 0)  # stopped before the end
    resume = shlex.split(message.split("Continue with: ", 1)[1])
    assert resume[:4] == ["python", "train.py", "--resume", str(tmp_path / "cut" / "last.pt")]
    rest = train_argv(demo_data, tmp_path / "cut", *common)
    done = run_script("train", *resume[2:], *rest)
    assert done.status == 0, done.err[-2000:]
    a = read_file(tmp_path / "straight" / "last.pt")["model"]
    b = read_file(tmp_path / "cut" / "last.pt")["model"]
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    # the interrupted epoch's figures continue the sums it had when stopped
    timing = ("seconds", "images_per_s")
    straight, cut = (read_csv(tmp_path / run / "metrics.csv") for run in ("straight", "cut"))
    for row_a, row_b in zip(straight, cut, strict=True):
        for column in set(row_a) - set(timing):
            assert float(row_a[column]) == pytest.approx(float(row_b[column]), abs=1e-5), \
                (row_a["epoch"], column)
    del stdout


@pytest.mark.parametrize("flag", ["--weights", "--resume"])
def test_untrusted_checkpoint_never_runs_code_in_train(demo_data, tmp_path, flag):
    marker = tmp_path / "pwned"
    torch.save({"model_state_dict": {}, "payload": CreatesFile(marker)}, tmp_path / "evil.pt")
    ran = run_script("train", *train_argv(demo_data, tmp_path / "out", flag, tmp_path / "evil.pt"))
    assert "refusing" in one_line_error(ran)
    assert not marker.exists()


class RunsAShellCommand:
    """Unpickling this would run ``touch``: os.system, a global torch blocks by its module."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [CreatesFile, RunsAShellCommand])
def test_a_refused_checkpoint_is_called_unsafe_not_truncated(tmp_path, payload):
    marker = tmp_path / "pwned"
    torch.save({"model_state_dict": {}, "payload": payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Coco4Error, match=r"^refusing .*evil\.pt: it holds a pickled Python "
                                         r"object \((posix\.system|getattr)\)") as e:
        read_file(tmp_path / "evil.pt")
    assert "truncated" not in str(e.value) and not marker.exists()


def test_not_a_checkpoint_and_not_a_resnet50(tmp_path):
    from coco4.predictor import load_predictor

    (tmp_path / "noise.pt").write_bytes(random.Random(0).randbytes(1000))
    with pytest.raises(Coco4Error, match="not a"):
        load_predictor(tmp_path / "noise.pt", "cpu")
    torch.save({"model_state_dict": {"conv1.weight": torch.zeros(64, 3, 3, 3)}},
               tmp_path / "small.pt")
    with pytest.raises(Coco4Error, match="does not fit a resnet50 classifier"):
        load_predictor(tmp_path / "small.pt", "cpu")


HOLD = """
import sys, time
from coco4.run_folder import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(demo_data, tmp_path):
    """Two real processes: the first holds the folder, the second is refused with its PID and
    host; once the first is killed (no chance to release anything) the folder is free again."""
    import socket

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Coco4Error, match=rf"^{re.escape(str(out))} is in use by another "
                                             rf"training run \(pid {holder.pid} on "
                                             rf"{re.escape(socket.gethostname())}, since "):
            fit(train_args(demo_data, out), progress=False)
        assert not (out / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    messages = []
    import coco4.trainer

    with pytest.MonkeyPatch.context() as m:
        m.setattr(coco4.trainer.tqdm, "write", messages.append)
        fit(train_args(demo_data, out), progress=False)
    assert (out / "last.pt").exists()
    assert any(f"took over the lock of a run that ended without releasing it (pid {holder.pid}"
               in message for message in messages), messages
    assert (out / ".coco4.lock").read_text() == ""  # released cleanly this time


def test_a_run_that_fails_at_once_leaves_no_folder_behind(tmp_path):
    from coco4.run_folder import run_lock

    inside = []
    # the error stands for a check that fails inside the lock: the lock must pass it on, not
    # swallow it, and remove the folders it made (which did exist while it was held)
    with pytest.raises(RuntimeError, match="bad input"), run_lock(tmp_path / "new" / "run"):
        inside.append(sorted(p.name for p in (tmp_path / "new" / "run").iterdir()))
        raise RuntimeError("bad input found before anything was written")
    assert inside == [[".coco4.lock"]]
    assert not (tmp_path / "new").exists()
    # a folder that was there before stays
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError, match="bad input"), run_lock(tmp_path / "kept"):
        raise RuntimeError("bad input found before anything was written")
    assert (tmp_path / "kept").is_dir()


WRITE_AND_HANG = """
import sys, time
from coco4.fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(bytes(3 * 2**20))
    print(tmp, flush=True)
    time.sleep(120)
"""


def test_a_killed_writes_temporary_file_is_removed_by_the_next_run(demo_data, tmp_path):
    """A real process killed in the middle of writing last.pt leaves its hidden temporary file;
    the next run in that folder removes it and says so, and leaves a live writer's alone."""
    out = tmp_path / "run"
    out.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITE_AND_HANG, str(out / "last.pt")],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    left = Path(writer.stdout.readline().strip())
    writer.kill()
    writer.wait()
    live = subprocess.Popen([sys.executable, "-c", WRITE_AND_HANG, str(out / "other.pt")],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        writing = Path(live.stdout.readline().strip())
        assert left.exists() and left.name.startswith(".last.pt.")
        messages = []
        import coco4.trainer

        with pytest.MonkeyPatch.context() as m:
            m.setattr(coco4.trainer.tqdm, "write", messages.append)
            fit(train_args(demo_data, out), progress=False)
        assert not left.exists() and writing.exists()
        assert f"removed 1 temporary file(s), 3 MB, that an interrupted coco4 run left in {out}" \
            in messages, messages
    finally:
        live.kill()
        live.wait()


def test_only_this_machines_dead_writers_temporaries_are_stale(tmp_path):
    from coco4.fileio import _owner, remove_stale_temporaries

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    dead = int(done.stdout)
    names = {"dead": f".last.pt.{_owner(pid=dead)}-0123abcd.tmp",
             "alive": f".last.pt.{_owner()}-0123abcd.tmp",
             "other machine": f".last.pt.{_owner('elsewhere', dead)}-0123abcd.tmp",
             "a user's file": "notes.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path, lambda message: None) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("alive", "other machine", "a user's file"))


def never_predicted(*args, **kwargs):
    raise AssertionError("the list was predicted before the arguments were checked")


@pytest.mark.parametrize("script, extra, fragment", [
    ("evaluate", ("--out-dir", "{tmp}/file"), "cannot write to {tmp}/file: "),
    ("visualize", ("--out-dir", "{tmp}/file/vis"), "cannot write to {tmp}/file/vis: "),
    ("visualize", ("--out-dir", "/proc/coco4-vis"), "cannot write to /proc/coco4-vis: "),
    ("visualize", ("--image", "{tmp}/my_brid.jpg"), "--image {tmp}/my_brid.jpg: no such file"),
    ("visualize", ("--metrics", "{tmp}/nope.csv"), "--metrics {tmp}/nope.csv: no such file"),
    ("visualize", ("--metrics", "{tmp}/file"), "{tmp}/file is not a metrics.csv written by "),
    ("visualize", ("--seed", "-1"), "--seed must be 0 or more, got -1"),
], ids=["eval-out-is-a-file", "vis-out-under-a-file", "vis-out-under-proc", "image-typo",
        "metrics-missing", "metrics-not-csv", "negative-seed"])
def test_evaluate_and_visualize_check_cheap_things_before_predicting(demo_data, tmp_path,
                                                                      monkeypatch, script,
                                                                      extra, fragment):
    import importlib

    import coco4.evaluation
    import coco4.pictures

    module = importlib.import_module(script)
    for package_module in (coco4.evaluation, coco4.pictures):
        monkeypatch.setattr(package_module, "predict_list_for", never_predicted)
    (tmp_path / "file").write_text("not a folder, not a metrics.csv\n")
    argv = eval_argv(demo_data, tmp_path / "model.pt", tmp_path / "out",
                     *(e.format(tmp=tmp_path) for e in extra))
    with pytest.raises(Coco4Error, match="^" + re.escape(fragment.format(tmp=tmp_path))):
        module.main(module.get_args_parser().parse_args(argv))


def test_annotation_prepare_checks_its_output_folder_before_reading_coco(tmp_path):
    import annotation_prepare

    (tmp_path / "file").write_text("x")
    args = annotation_prepare.get_args_parser().parse_args(
        ["--coco-root", str(tmp_path / "no-coco-needed"), "--out-dir", str(tmp_path / "file")])
    with pytest.raises(Coco4Error, match=f"^cannot write to {re.escape(str(tmp_path))}/file: "):
        annotation_prepare.main(args)


@pytest.fixture
def read_only_mount(tmp_path):
    """A real read-only file system, as a dataset mount is."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        yield mount


def test_a_read_only_cache_folder_falls_back_to_the_users_cache(demo_data, tmp_path,
                                                                 read_only_mount, monkeypatch,
                                                                 capsys):
    from coco4.data import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    image_list = read_list(demo_data / "data" / "annotation_val.txt")
    built = cache.load_or_build(image_list, demo_data / "coco" / "images" / "val2017", 32,
                                read_only_mount / "cache", progress=False)
    assert built.path.parent == tmp_path / "home-cache" / "coco4"
    assert (f"warning: cannot write the image cache to {read_only_mount / 'cache'}; using "
            f"{tmp_path / 'home-cache' / 'coco4'}") in capsys.readouterr().out
    assert list(read_only_mount.iterdir()) == []
