"""scripts/gpu_check.sh, the check a lent GPU machine runs once, in its smoke mode on the CPU:
the harness itself must work before the only GPU minutes are spent on it. The GPU machine has
no pycocotools, so here it cannot be imported either."""
import csv
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from conftest import REPO

STAGES = ("cuda tests", "generate images", "benchmark", "timed run")
RESULTS = {"gpu.txt", "cuda_tests.txt", "bench.json", "bench.txt", "train.txt", "metrics.csv",
           "summary.txt"}


def smoke(tmp_path, python=sys.executable):
    blocked = tmp_path / "blocked" / "pycocotools"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no pycocotools on this machine')\n")
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(python),
           "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(tmp_path / "blocked")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "smoke"], env=env,
                          capture_output=True, text=True, timeout=600)
    return proc, tmp_path / "out"


@pytest.mark.slow
def test_smoke_mode_runs_every_stage_and_returns_a_few_small_files(tmp_path):
    proc, out = smoke(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # what comes back from a device machine: at most 8 files, each under 16 MiB
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} == RESULTS and len(files) <= 8
    assert all(p.parent == out and p.stat().st_size < 2**24 for p in files)
    assert list((tmp_path / "tmp").iterdir()) == []  # images, caches, checkpoints: gone
    summary = (out / "summary.txt").read_text()
    for name in STAGES:
        assert f"{name}: ok" in summary, summary
    assert "all stages passed" in summary and "70 epochs: about" in summary
    assert re.search(r"later epochs [\d.]+ s apart, [\d.]+ s of it training", summary), summary
    figures = json.loads((out / "bench.json").read_text())
    assert figures["pipeline"]["original_img_s"] > 0 and figures["pipeline"]["pil_fair_img_s"] > 0
    epochs = [line for line in (out / "train.txt").read_text().splitlines() if " epoch " in line]
    assert len(epochs) == 2 and all(float(line.split()[0]) > 0 for line in epochs)
    with open(out / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert "skipped" in (out / "cuda_tests.txt").read_text()  # no GPU here: skipped, not failed
    assert "torch" in (out / "gpu.txt").read_text()


@pytest.mark.slow
def test_a_failed_stage_does_not_hide_the_later_ones(tmp_path):
    """The benchmark fails (its Python exits 3); the timed run still runs and the whole check
    says that a stage failed."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$*" in *coco4.bench*) exit 3;; esac\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    proc, out = smoke(tmp_path, python)
    assert proc.returncode == 1
    summary = (out / "summary.txt").read_text()
    assert "benchmark: FAILED (exit 3)" in summary and "timed run: ok" in summary, summary
    assert "some stage failed" in summary


def test_without_nvidia_smi_it_stops_at_once_with_a_clear_message(tmp_path):
    """A machine without NVIDIA's driver: one line saying so, exit 2, no results folder."""
    bin_dir = tmp_path / "bin"  # a PATH holding only what the script needs before its check
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(subprocess.run(
        ["bash", "-c", "command -v dirname"], capture_output=True, text=True).stdout.strip())
    env = {**os.environ, "PATH": str(bin_dir), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["/bin/bash", str(REPO / "scripts" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "nvidia-smi not found" in proc.stderr and "smoke" in proc.stderr
    assert not (tmp_path / "out").exists()
