"""A run's disk writes (#34): the bytes a 10-epoch ResNet-50 run on small images and the demo
write, the checkpoint sizes, and the time between epochs beyond the training steps; of this
checkout or of another one (``--repo``, a worktree of an earlier commit, for the "before").

    python -m tools.io_study --out /tmp/io-after                      # this checkout
    git worktree add /tmp/before COMMIT
    python -m tools.io_study --out /tmp/io-before --repo /tmp/before  # the same, at COMMIT

Each command runs as its own process under ``/usr/bin/time -v``: its "File system outputs"
(512-byte blocks, what the kernel wrote for it) are the bytes written; the run's log lines are
stamped as they come, so the spacing of its later epochs, less their training seconds
(metrics.csv), is what validation, the checkpoints and the logs cost an epoch.
"""
import argparse
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from coco4 import cli
from coco4.options import HelpFormatter

EPOCHS = 10


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Measure a run's disk writes.",
                                formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="data, runs and io.json go here")
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                   help="the checkout whose train.py and demo run")
    p.add_argument("--no-demo", dest="demo", action="store_false", help="the 10-epoch run only")
    return p


def timed(cmd: list[str], repo: Path, log: Path) -> dict:
    """Run ``cmd`` in ``repo`` under /usr/bin/time -v: MiB written, and each stdout line's
    arrival time in ``log``."""
    full = ["/usr/bin/time", "-v", *cmd]
    proc = subprocess.Popen(full, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(repo),
                                            "PATH": "/usr/bin:/bin"})
    with open(log, "w") as f:
        for line in proc.stdout:
            f.write(f"{time.time():.3f} {line}")
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise SystemExit(f"{cmd} failed:\n{err[-2000:]}")
    blocks = int(re.search(r"File system outputs: (\d+)", err).group(1))
    return {"mib_written": blocks * 512 / 2**20}


def epoch_spacing(log: Path, metrics: Path) -> dict:
    """The later half's mean seconds between epoch lines, and their mean training seconds."""
    stamps = [float(line.split()[0]) for line in log.read_text().splitlines()
              if re.match(r"[\d.]+ epoch +\d+ \|", line)]
    with open(metrics, newline="") as f:
        trained = [float(row["seconds"]) for row in csv.DictReader(f)]
    half = len(stamps) // 2
    spacing = (stamps[-1] - stamps[half - 1]) / (len(stamps) - half)
    training = sum(trained[half:]) / (len(trained) - half)
    return {"epoch_spacing_s": spacing, "training_s": training, "rest_s": spacing - training}


def main(args: argparse.Namespace) -> dict:
    out, py = args.out.resolve(), sys.executable
    data = out / "data"
    if not (data / "data" / "annotation_train.txt").exists():
        subprocess.run([py, "-m", "coco4.synthetic", "--root", str(data / "coco"), "--lists",
                        str(data / "data"), "--num-train", "500", "--num-val", "120"],
                       cwd=args.repo, check=True, capture_output=True)
    run = out / "run"
    figures = {"repo": str(args.repo), "commit": subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=args.repo, capture_output=True,
        text=True).stdout.strip()}
    figures["run"] = timed([py, "train.py", "--coco-root", str(data / "coco"), "--data-dir",
                            str(data / "data"), "--output-dir", str(run), "--overwrite",
                            "--arch", "resnet50", "--weights", "none", "--image-size", "32",
                            "--epochs", str(EPOCHS), "--batch-size", "64", "--lr", "1e-3",
                            "--device", "cpu", "--workers", "0"], args.repo, out / "run.log")
    figures["run"].update(epoch_spacing(out / "run.log", run / "metrics.csv"),
                          last_pt_mib=(run / "last.pt").stat().st_size / 2**20,
                          best_pt_mib=(run / "best.pt").stat().st_size / 2**20)
    figures["run"]["times_last_pt"] = figures["run"]["mib_written"] / figures["run"]["last_pt_mib"]
    if args.demo:
        figures["demo"] = timed([py, "-m", "coco4.demo", "--out", str(out / "demo")], args.repo,
                                out / "demo.log")
    (out / "io.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    cli.run(main, get_args_parser())
