"""Each entry script as a user runs it: a process of its own, through its ``__main__`` block.
Everything else calls the scripts in-process through the runner that block calls
(``conftest.run_script``); these tests prove the block itself, that a script's output reaches
the terminal, and that no traceback leaks out of a real process."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from coco4.checkpoint import read_file

from conftest import REPO, read_csv, train_argv

WITH_TINY = str(REPO / "tests" / "scripts" / "with_tiny.py")


def run(*argv, cwd=REPO):
    """A command's exit status and its output; a traceback anywhere fails the test."""
    proc = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def succeeds(*argv):
    proc = run(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def eval_source(data, coco, checkpoint):
    return ["--checkpoint", checkpoint, "--data-dir", data, "--coco-root", coco,
            "--device", "cpu", "--workers", "0"]


def test_each_script_runs_as_a_process(demo_data, tmp_path):
    """annotation_prepare.py as it is; the model scripts with the tiny test backbone registered
    (tests/scripts/with_tiny.py runs the script as ``__main__``), from lists to an export."""
    data, coco = tmp_path / "data", demo_data / "coco"
    proc = succeeds(REPO / "annotation_prepare.py", "--coco-root", coco, "--out-dir", data)
    assert "train: " in proc.stdout and (data / "annotation_train.txt").is_file()
    run_dir = tmp_path / "run"
    argv = train_argv(demo_data, run_dir, "--epochs", "2", "--data-dir", data)
    proc = succeeds(WITH_TINY, REPO / "train.py", *argv)
    assert "epoch   2 |" in proc.stdout + proc.stderr
    best = run_dir / "best.pt"
    assert read_file(best)["config"]["arch"] == "tiny"
    source = eval_source(data, coco, best)
    proc = succeeds(WITH_TINY, REPO / "evaluate.py", *source)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert f"accuracy {metrics['accuracy']:.2%} on {metrics['num_images']} images" in proc.stdout
    succeeds(WITH_TINY, REPO / "visualize.py", *source, "--num", "2")
    assert (run_dir / "vis" / "gradcam.png").is_file()
    images = coco / "images" / "val2017"
    succeeds(WITH_TINY, REPO / "predict.py", images, "--checkpoint", best, "--device", "cpu",
             "--workers", "0", "--out", tmp_path / "preds.csv")
    assert len(read_csv(tmp_path / "preds.csv")) == len(list(images.iterdir()))
    proc = succeeds(WITH_TINY, REPO / "export.py", "--checkpoint", best)
    assert "top-1 class agrees on every image" in proc.stdout
    assert (run_dir / "best.onnx").is_file()


def test_a_bad_input_ends_a_process_with_one_line_and_status_2(tmp_path):
    proc = run(REPO / "train.py", "--epochs", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "error: --epochs must be at least 1, got 0\n"
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_the_recipe_end_to_end_as_processes(demo_data, tmp_path):
    """The one end-to-end run of ResNet-50 (the default --arch) through every script, each
    as a user types it: ``python SCRIPT.py ...``, at 32 px for two epochs on the demo data."""
    data, coco = tmp_path / "data", demo_data / "coco"
    succeeds(REPO / "annotation_prepare.py", "--coco-root", coco, "--out-dir", data)
    run_dir = tmp_path / "run"
    argv = list(train_argv(demo_data, run_dir, "--epochs", "2", "--data-dir", data))
    arch = argv.index("--arch")
    del argv[arch:arch + 2]  # the default: ResNet-50
    succeeds(REPO / "train.py", *argv)
    best = run_dir / "best.pt"
    assert read_file(best)["config"]["arch"] == "resnet50"
    assert [r["epoch"] for r in read_csv(run_dir / "metrics.csv")] == ["1", "2"]
    source = eval_source(data, coco, best)
    succeeds(REPO / "evaluate.py", *source, "--out-dir", tmp_path / "eval")
    succeeds(REPO / "visualize.py", *source, "--out-dir", tmp_path / "vis", "--num", "2")
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == [
        "errors.png", "gradcam.png", "predictions.png", "samples.png", "training_curves.png"]
    evaluated = read_csv(tmp_path / "eval" / "predictions.csv")
    images = coco / "images" / "val2017"
    listing = tmp_path / "paths.txt"
    listing.write_text("".join(f"{images / r['file']}\n" for r in evaluated))
    succeeds(REPO / "predict.py", "--list", listing, "--checkpoint", best, "--device", "cpu",
             "--workers", "0", "--out", tmp_path / "preds.csv")
    predicted = read_csv(tmp_path / "preds.csv")
    assert [r["class"] for r in predicted] == [r["predicted_label"] for r in evaluated]
    proc = succeeds(REPO / "export.py", "--checkpoint", best, "--list",
                    data / "annotation_val.txt", "--images", images)
    assert "top-1 class agrees on every image" in proc.stdout


SLOW_IMPORT = """
import importlib.abc, os, pathlib, sys, time

class SlowImport(importlib.abc.MetaPathFinder):
    # torch's import takes seconds on a slow disk: here, until the test's Ctrl-C
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["SLOW_IMPORT"]:
            pathlib.Path(sys.argv[0]).with_name("importing").touch()
            time.sleep(60)
        return None

sys.meta_path.insert(0, SlowImport())
"""


@pytest.mark.parametrize("script", ["annotation_prepare", "train", "evaluate", "visualize",
                                    "predict", "export", "serve"])
def test_ctrl_c_while_a_script_imports_is_one_line(script, tmp_path):
    """#35: the imports take seconds, and a Ctrl-C there was a KeyboardInterrupt traceback."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SLOW_IMPORT)
    copy = tmp_path / f"{script}.py"  # beside it, the hook's marker file
    shutil.copy(REPO / f"{script}.py", copy)
    # annotation_prepare.py imports no torch: its own module is the slow one there
    slow = "coco4.annotation_lists" if script == "annotation_prepare" else "torch"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'hook'}:{REPO}", "SLOW_IMPORT": slow}
    proc = subprocess.Popen([sys.executable, str(copy), "--help"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    for _ in range(300):
        if (tmp_path / "importing").exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "error: stopped by SIGINT while starting; nothing was written\n"
