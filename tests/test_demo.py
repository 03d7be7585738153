"""The demo command and the notebook, run as a user runs them."""
import json
import subprocess
import sys

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from PIL import Image

from coco4.data.lists import read_list

from conftest import REPO, read_csv


def test_demo_command_runs_the_whole_workflow(tmp_path):
    """The shortened demo: same steps as `python -m coco4.demo`, in a process of its own, with
    fewer images and epochs and the tiny test backbone (what is checked is the workflow)."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "with_tiny.py"),
                           "-m", "coco4.demo", "--out", str(out), "--epochs", "2",
                           "--num-train", "60", "--num-val", "40", "--workers", "0", "--arch",
                           "tiny"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # two epochs learn little: what must hold is that every output is the run's own, and
    # that each agrees with the others
    classes = ["bird", "airplane", "train", "boat"]
    assert (out / "data" / "classes.txt").read_text().split() == classes
    test_list = read_list(out / "data" / "annotation_val.txt")
    assert len(read_list(out / "data" / "annotation_train.txt")) > len(test_list) > 0
    history = read_csv(out / "checkpoint" / "metrics.csv")
    assert [r["epoch"] for r in history] == ["1", "2"]
    best = torch.load(out / "checkpoint" / "best.pt", weights_only=True)
    assert best["classes"] == classes and best["config"]["epochs"] == 2
    assert best["best_metric"] == max(float(r["val_acc"]) for r in history)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    rows = read_csv(out / "eval" / "predictions.csv")
    assert [r["file"] for r in rows] == list(test_list.files)
    assert [classes.index(r["true_label"]) for r in rows] == list(test_list.labels)
    for r in rows:  # the predicted class is the most probable one, the probabilities sum to 1
        probs = [float(r[f"prob_{c}"]) for c in classes]
        assert r["predicted_label"] == classes[max(range(4), key=probs.__getitem__)]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
    right = sum(r["predicted_label"] == r["true_label"] for r in rows)
    assert metrics["num_images"] == len(rows)
    assert metrics["accuracy"] == pytest.approx(right / len(rows))
    cm = metrics["confusion_matrix"]
    assert sum(map(sum, cm)) == len(rows) and sum(cm[i][i] for i in range(4)) == right
    for path in ("eval/confusion_matrix.png", "vis/samples.png", "vis/predictions.png",
                 "vis/errors.png", "vis/training_curves.png"):
        with Image.open(out / path) as im:  # decoded whole: a truncated file fails here
            assert im.format == "PNG" and im.width >= 300 and im.height >= 200, (path, im.size)
            im.load()
    assert f"test accuracy {metrics['accuracy']:.1%} on {len(rows)} val images" in proc.stdout
    assert str(out / "eval") in proc.stdout


@pytest.mark.slow
def test_full_demo_learns(tmp_path):
    """python -m coco4.demo as a new user runs it (about 3 minutes on 2 cores): it learns."""
    proc = subprocess.run([sys.executable, "-m", "coco4.demo", "--out", str(tmp_path / "d")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "d" / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.8  # chance is 0.25


def run_notebook(out, monkeypatch, **settings):
    """Execute demo/classification.ipynb top to bottom in a kernel of its own, writing under
    ``out``; ``settings``: its COCO4_NOTEBOOK_* variables (unset: a reader's run). Returns the
    executed notebook and the metrics.json it wrote."""
    nb = nbformat.read(REPO / "demo" / "classification.ipynb", as_version=4)
    monkeypatch.setenv("COCO4_NOTEBOOK_OUT", str(out))  # the kernel inherits the environment
    for name, value in settings.items():
        monkeypatch.setenv(f"COCO4_NOTEBOOK_{name.upper()}", value)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "demo")}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # samples, curves, confusion matrix, predictions, errors
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == len(read_list(out / "data" / "annotation_val.txt"))
    shown = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
    assert f"test accuracy {metrics['accuracy']:.1%}" in shown  # what the reader is told
    return nb, metrics


def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    """Every cell, with every picture, on fewer images for one epoch: the code a reader runs,
    in seconds. How well it learns at the reader's settings is the slow tier's test below."""
    run_notebook(tmp_path / "nb", monkeypatch, epochs="1",
                 demo_args="--num-train 80 --num-val 40")


@pytest.mark.slow
def test_the_notebook_runs_with_an_other_class(tmp_path, monkeypatch):
    """python -m coco4.demo --other's settings: a fifth class, everywhere the notebook shows
    the classes."""
    _, metrics = run_notebook(tmp_path / "nb", monkeypatch, epochs="1",
                              demo_args="--other 30 --num-train 80 --num-val 40")
    assert metrics["classes"] == ["bird", "airplane", "train", "boat", "other"]
    assert (tmp_path / "nb" / "data" / "negatives_val_seen_kinds.txt").is_file()


@pytest.mark.slow
def test_the_notebook_learns_at_the_readers_settings(tmp_path, monkeypatch):
    """At the settings a reader runs (not shortened: a shortened run could not be held to an
    accuracy), in about a minute on an idle 2-core CPU."""
    _, metrics = run_notebook(tmp_path / "nb", monkeypatch)
    # python -m coco4.demo reached 86.5%; chance is 25%, and no class may be left unlearned
    assert metrics["accuracy"] >= 0.80, metrics["per_class_accuracy"]
    assert min(metrics["per_class_accuracy"].values()) >= 0.5, metrics["per_class_accuracy"]


def test_the_summary_lists_only_the_folders_the_demo_wrote(tmp_path, capsys):
    """With --no-visualize there is no vis/ folder to point the user to."""
    from coco4.demo import _summary

    for name in ("coco", "data", "checkpoint", "eval"):
        (tmp_path / name).mkdir()
    metrics = {"accuracy": 0.5, "num_images": 2, "classes": ["a", "b"],
               "per_class_accuracy": {"a": 1.0, "b": 0.0}}
    _summary(tmp_path, metrics, 1.0)
    shown = capsys.readouterr().out
    assert "test accuracy 50.0% on 2 val images (a 100%, b 0%); chance is 50%" in shown
    assert str(tmp_path / "eval") in shown and str(tmp_path / "vis") not in shown
    (tmp_path / "vis").mkdir()
    _summary(tmp_path, metrics, 1.0)
    assert str(tmp_path / "vis") in capsys.readouterr().out


def test_the_demo_with_an_other_class_evaluates_both_lists_of_negatives(tmp_path, capsys):
    """python -m coco4.demo --other N: five classes, and evaluate.py --negatives on the two
    lists annotation_prepare.py wrote (in-process, on the tiny test backbone)."""
    from coco4 import demo

    out = tmp_path / "demo"
    metrics = demo.main(demo.get_args_parser().parse_args(
        ["--out", str(out), "--other", "20", "--epochs", "1", "--num-train", "60",
         "--num-val", "40", "--workers", "0", "--arch", "tiny", "--no-visualize"]))
    assert metrics["classes"] == ["bird", "airplane", "train", "boat", "other"]
    assert set(metrics["open_set"]) == {"negatives_val_seen_kinds.txt",
                                        "negatives_val_held_out_kinds.txt"}
    assert "--other 20" in capsys.readouterr().out  # the command line shown for the step
    listed = read_list(out / "data" / "annotation_train.txt")
    assert listed.labels.count(4) == 20
