"""The demo command and the notebook, run as a user runs them."""
import json
import os
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

pytestmark = pytest.mark.slow  # the whole workflow, as subprocesses and a notebook kernel


def test_demo_command_runs_the_whole_workflow(tmp_path):
    """The shortened demo: same steps as `python -m coco4.demo`, fewer images and epochs."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "coco4.demo", "--out", str(out), "--epochs",
                           "2", "--num-train", "60", "--num-val", "40", "--workers", "0"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] > 0 and 0 <= metrics["accuracy"] <= 1
    for path in ("data/annotation_train.txt", "checkpoint/best.pt", "checkpoint/metrics.csv",
                 "eval/confusion_matrix.png", "vis/samples.png", "vis/predictions.png",
                 "vis/errors.png", "vis/training_curves.png"):
        assert (out / path).is_file(), path
    assert "demo finished" in proc.stdout and str(out / "eval") in proc.stdout


@pytest.mark.skipif(os.environ.get("COCO4_FULL_DEMO") != "1",
                    reason="the full demo takes minutes; set COCO4_FULL_DEMO=1 to run it")
def test_full_demo_learns(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "coco4.demo", "--out", str(tmp_path / "d")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "d" / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.8  # chance is 0.25


def test_notebook_runs_top_to_bottom(tmp_path):
    nb = nbformat.read(REPO / "demo" / "classification.ipynb", as_version=4)
    os.environ["COCO4_NOTEBOOK_OUT"] = str(tmp_path / "nb")
    os.environ["COCO4_NOTEBOOK_EPOCHS"] = "2"
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "demo")}}).execute()
    finally:
        del os.environ["COCO4_NOTEBOOK_OUT"], os.environ["COCO4_NOTEBOOK_EPOCHS"]
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # samples, curves, confusion matrix, predictions, errors
    assert (tmp_path / "nb" / "checkpoint" / "best.pt").is_file()
