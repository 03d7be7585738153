"""Run an entry script as ``__main__`` in a process of its own with the test suite's tiny
backbone registered: ``python tests/scripts/with_tiny.py train.py ARGS...`` (or ``-m
coco4.demo ARGS...`` for a module). For the tests that need a real process (a signal, a
resource limit, the script's own ``__main__`` block) but not ResNet-50.

COCO4_TEST_STEP_SECONDS=S makes every training step take S seconds longer: the tiny backbone's
steps take milliseconds, too few for a test to signal a run in the middle of an epoch."""
import os
import runpy
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import tiny_backbone  # noqa: E402, F401  (registers --arch tiny)

if os.environ.get("COCO4_TEST_STEP_SECONDS"):
    import coco4.training

    pause, real_step = float(os.environ["COCO4_TEST_STEP_SECONDS"]), coco4.training.train_step

    def slow_step(*args, **kwargs):
        time.sleep(pause)
        return real_step(*args, **kwargs)

    coco4.training.train_step = slow_step

if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
