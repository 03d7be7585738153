"""The CUDA path: GPU crops, the GPU-resident cache, sync-free steps, AMP, --compile and the
out-of-memory advice. Skipped without a GPU (CI has none); `scripts/gpu_check.sh` runs this
file first on a GPU machine."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch

from coco4.checkpoint import read_file
from coco4.config import RECIPES, Recipe
from coco4.data.loaders import BatchPlan, CachedBatches
from coco4.data.transforms import random_crops, resized_crops
from coco4.image_augment import ImageAugment
from coco4.inference import Amp
from coco4.model import build_model, trainable_parameters
from coco4.seeding import generator
from coco4.synthetic import make_synthetic_coco
from coco4.training import (
    EpochState,
    TrainingParts,
    _note_bad_loss,
    build_batch_transform,
    build_criterion,
    build_model_ema,
    build_optimizer,
    build_scheduler,
    train_step,
)

from conftest import REPO, eval_argv, smooth_images, train_argv, train_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
# the runs here train ResNet-50, the recipe's backbone: what the GPU path (AMP, channels_last,
# memory) is measured on; the later --arch of a command line wins over train_cli's tiny one
RECIPE = ("--arch", "resnet50")


def smooth_cache(n):
    """An NCHW-shaped view of an NHWC uint8 array, as cache.ImageCache.tensor() gives."""
    return smooth_images(n).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def test_gpu_crops_equal_the_same_kernel_on_the_cpu():
    images = smooth_cache(8)
    boxes, flips = random_crops(8, 37, 37, torch.Generator().manual_seed(0))
    gpu = resized_crops(images.to(CUDA), boxes, flips, 32)
    assert gpu.is_cuda and gpu.dtype == torch.uint8
    # the same roi_align on both devices: only float rounding before the uint8 rounding differs
    assert (gpu.cpu().int() - resized_crops(images, boxes, flips, 32).int()).abs().max() <= 1


@pytest.mark.parametrize("train", [True, False])
def test_batches_are_the_same_with_the_cache_on_the_gpu_or_on_the_host(train):
    images, labels = smooth_cache(10), [i % 4 for i in range(10)]
    make = lambda cache, device: list(CachedBatches(
        cache, labels, range(10), BatchPlan(4, device, 32, train=train, seed=7)).iterate(1))
    on_cpu, from_host, resident = make(images, CPU), make(images, CUDA), make(images.to(CUDA), CUDA)
    assert len(on_cpu) == len(from_host) == len(resident) == 3
    for (xc, yc), (xh, yh), (xr, yr) in zip(on_cpu, from_host, resident):
        assert xh.is_cuda and xr.is_cuda and yh.is_cuda
        assert torch.equal(xh, xr) and torch.equal(yh, yr) and torch.equal(yh.cpu(), yc)
        # GPU and CPU resamplers on the same boxes: within a few grey levels (test_data.py)
        diff = (xh.cpu().float() - xc.float()).abs()
        assert diff.mean() < 1.5 and diff.max() <= 12


@pytest.mark.parametrize("resident", [True, False], ids=["cache-on-gpu", "cache-on-host"])
def test_training_steps_never_make_the_host_wait_for_the_gpu(resident):
    """A step that waits for the GPU leaves it idle while Python prepares the next one. Under
    sync debug mode "error", any synchronising call in a step (a blocking copy, .item()) raises."""
    torch.manual_seed(0)
    model = build_model("resnet50", 4).to(CUDA).to(memory_format=torch.channels_last)
    amp = Amp.for_device(CUDA, True)
    parts = TrainingParts(model, torch.optim.Adam(trainable_parameters(model), lr=1e-4), None,
                          torch.nn.CrossEntropyLoss(reduction="sum"), amp, amp.scaler(), 2)
    images = torch.randint(0, 256, (48, 73, 73, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    batches = CachedBatches(images.to(CUDA) if resident else images, [i % 4 for i in range(48)],
                            range(48), BatchPlan(16, CUDA, 64, train=True))
    # warm-up with the same shapes: cudnn's algorithm search and first allocations may sync
    for x, y in batches.iterate(0):
        train_step(parts, x, y)
    state = EpochState.start(1, CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, (x, y) in enumerate(batches.iterate(1)):
            loss_sum, correct = train_step(parts, x, y)
            _note_bad_loss(state, loss_sum, step)
            state.loss_sum += loss_sum
            state.correct += correct
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # the running figures stayed on the GPU: reading one is what would have waited
    assert state.loss_sum.is_cuda and state.correct.is_cuda and state.first_bad_step.is_cuda
    assert int(state.first_bad_step) == -1 and math.isfinite(float(state.loss_sum))


def test_the_augmentation_on_the_gpu_equals_the_cpus():
    """--auto-augment and --random-erase on a GPU batch: the CPU's pixels, within the one grey
    level that float rounding before the uint8 rounding can move (#31)."""
    images, labels = smooth_images(64, side=48), torch.arange(64) % 4
    for policy in ("ta_wide", "ra"):
        augment = ImageAugment(policy, 0.5, (124, 116, 104))
        on_cpu, _ = augment(images, labels, generator(3))
        on_gpu, _ = augment(images.to(CUDA), labels.to(CUDA), generator(3))
        diff = (on_gpu.cpu().int() - on_cpu.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, policy


def test_the_modern_recipes_steps_never_make_the_host_wait_for_the_gpu():
    """--recipe modern's batch transforms, loss, per-step schedule and model EMA under sync
    debug mode "error", as the default's steps above (#31)."""
    torch.manual_seed(0)
    recipe = Recipe(arch="resnet50", batch_size=16, image_size=64, **RECIPES.sets["modern"])
    model = build_model("resnet50", 4).to(CUDA).to(memory_format=torch.channels_last)
    amp = Amp.for_device(CUDA, True)
    optimizer = build_optimizer(recipe, model)
    parts = TrainingParts(model, optimizer, build_scheduler(recipe, optimizer, 3),
                          build_criterion(recipe), amp, amp.scaler(), 1,
                          build_batch_transform(recipe, 4), build_model_ema(recipe, model))
    images = torch.randint(0, 256, (48, 73, 73, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    batches = CachedBatches(images.to(CUDA), [i % 4 for i in range(48)], range(48),
                            BatchPlan(16, CUDA, 64, train=True))

    def epoch(e):
        for step, (x, y) in enumerate(batches.iterate(e)):
            x, targets = parts.batch_transform(x, y, generator(0, "batch", e, step))
            train_step(parts, x, targets)
    for e in range(4):  # warm-up: every operation drawn, cudnn's searches done
        epoch(e)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        epoch(4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert parts.ema.updates == 9  # restarted through the 6 warmup steps, then 9 more


def run(argv, cwd, timeout=240):
    """A script run with a limit of its own: a hang fails this test, not the whole GPU check."""
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def evaluate_argv(demo_data, checkpoint, out, device):
    return [sys.executable, str(REPO / "evaluate.py"),
            *eval_argv(demo_data, checkpoint, out, "--device", device)]  # the later --device wins


def test_train_on_cuda_with_amp_then_evaluate_on_either_device(demo_data, tmp_path):
    out = tmp_path / "run"
    proc = run(train_cli(demo_data, out, "--device", "cuda", "--epochs", "2", *RECIPE), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_file(out / "last.pt")["epoch"] == 2
    metrics = {}
    for device in ("cuda", "cpu"):
        ev = run(evaluate_argv(demo_data, out / "best.pt", tmp_path / device, device), tmp_path)
        assert ev.returncode == 0, ev.stderr
        metrics[device] = json.loads((tmp_path / device / "metrics.json").read_text())
        rows = (tmp_path / device / "predictions.csv").read_text().splitlines()[1:]
        metrics[device]["probs"] = [[float(v) for v in r.split(",")[3:]] for r in rows]
    # bf16 autocast on the GPU, fp32 on the CPU: close, where a wrong input pipeline (channel
    # order, normalisation, layout) would move probabilities by tenths
    diffs = [abs(a - b) for ra, rb in zip(metrics["cuda"]["probs"], metrics["cpu"]["probs"])
             for a, b in zip(ra, rb)]
    assert len(diffs) == 4 * metrics["cpu"]["num_images"] > 0
    mean = sum(diffs) / len(diffs)
    assert mean < 0.02 and max(diffs) < 0.15, (mean, max(diffs))


def test_predict_and_export_from_a_gpu_trained_checkpoint(demo_data, tmp_path):
    """predict.py on the GPU (bf16) agrees with the CPU (fp32); the ONNX export of a checkpoint
    trained on the GPU passes its parity check, under this machine's torch and onnxruntime."""
    out = tmp_path / "run"
    assert run(train_cli(demo_data, out, "--device", "cuda", "--epochs", "1", *RECIPE), tmp_path
               ).returncode == 0
    image_dir = demo_data / "coco" / "images" / "val2017"
    probs = {}
    for device in ("cuda", "cpu"):
        proc = run([sys.executable, str(REPO / "predict.py"), "--checkpoint", str(out / "best.pt"),
                    str(image_dir), "--device", device, "--out", str(tmp_path / f"{device}.csv")],
                   tmp_path)
        assert proc.returncode == 0, proc.stderr
        rows = (tmp_path / f"{device}.csv").read_text().splitlines()[1:]
        probs[device] = [[float(v) for v in r.split(",")[3:]] for r in rows]
    diffs = [abs(a - b) for ra, rb in zip(probs["cuda"], probs["cpu"]) for a, b in zip(ra, rb)]
    assert len(diffs) == 4 * len(probs["cpu"]) > 0
    assert sum(diffs) / len(diffs) < 0.02 and max(diffs) < 0.15
    proc = run([sys.executable, str(REPO / "export.py"), "--checkpoint", str(out / "best.pt"),
                "--images", str(image_dir)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "top-1 class agrees on every image" in proc.stdout


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """Several hundred train-list images, so a batch of 512 is a real batch."""
    root = tmp_path_factory.mktemp("many")
    make_synthetic_coco(root / "coco", num_train=1000, num_val=20, seed=3,
                        image_sizes=((64, 48),), progress=False, lists_dir=root / "data")
    return root


def capped_train(data, out, cwd, *extra):
    """train.py at 224 px with this process's GPU memory capped at 2 GiB: batch 512 cannot fit."""
    cap = 2 * 2**30 / torch.cuda.get_device_properties(0).total_memory
    prelude = (f"import runpy, sys, torch; sys.path.insert(0, {str(REPO)!r}); "
               f"torch.cuda.set_per_process_memory_fraction({cap}); "
               f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')")
    argv = train_argv(data, out, "--device", "cuda", "--image-size", "224", "--batch-size", "512",
                      "--epochs", "1", *RECIPE, *extra)
    arch = argv.index("--arch")  # train_argv's tiny one: this plain train.py does not know it
    del argv[arch:arch + 2]
    return run([sys.executable, "-c", prelude, *argv], cwd)


def test_out_of_memory_names_an_accum_steps_that_then_fits(many_images, tmp_path):
    failed = capped_train(many_images, tmp_path / "oom", tmp_path)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    # N training images at batch 512 are ceil(N/512) equal steps of floor(N/steps): the step
    # that ran out is that size, not 512 (the list's length depends on the generator's draw)
    n_train = int(re.search(r"data: (\d+) train /", failed.stdout + failed.stderr).group(1))
    step = n_train // math.ceil(n_train / 512)
    found = re.fullmatch(rf"error: CUDA out of memory in training with micro-batches of {step} "
                         r"images at 224px; "
                         r"rerun with --accum-steps (\d+) .*", last)
    assert found, last
    accum = found.group(1)
    assert int(accum) > 1
    ok = capped_train(many_images, tmp_path / "fits", tmp_path, "--accum-steps", accum)
    assert ok.returncode == 0, ok.stderr


# last: compiling takes the longest, and a slow compiler must not hide the other results
def test_compiled_training_writes_a_plain_portable_checkpoint(demo_data, tmp_path):
    out = tmp_path / "run"
    proc = run(train_cli(demo_data, out, "--device", "cuda", "--compile", "--epochs", "2",
                         *RECIPE), tmp_path, timeout=150)
    assert proc.returncode == 0, proc.stderr
    ev = run(evaluate_argv(demo_data, out / "best.pt", tmp_path / "eval", "cpu"), tmp_path)
    assert ev.returncode == 0, ev.stderr  # no "_orig_mod." keys: a plain model loads it
