"""train.py: the recipe (what trains, what stays frozen), outputs, resume, seeds, accumulation,
torchrun, and the errors a user gets instead of a traceback."""
import os
import re
import subprocess
import sys

import pytest
import torch
import torchvision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from coco4.checkpoint import read_file
from coco4.config import Recipe
from coco4.errors import Coco4Error
from coco4.inference import Amp
from coco4.model import build_model
from coco4.trainer import fit
from coco4.training import (
    EpochState,
    TrainingParts,
    build_criterion,
    non_finite_loss,
    train_one_epoch,
    train_step,
)

from conftest import out_of_memory, read_csv, run_script, train_args, train_argv, train_cli

FROZEN = ("conv1", "bn1", "layer1", "layer2")  # the original recipe's frozen part


def weights(path):
    return read_file(path)["model"]


def max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A torchvision-layout resnet50 state dict standing in for the ImageNet download."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def test_cli_run_writes_checkpoints_metrics_and_events(demo_data, tmp_path):
    out = tmp_path / "run"
    ran = run_script("train", *train_argv(demo_data, out, "--epochs", "2"))
    assert ran.status == 0, ran.err
    assert "epoch   2 |" in ran.err + ran.out
    rows = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # the columns earlier versions wrote keep their places, for scripts that read by position
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                             "seconds", "images_per_s", "val_macro_f1", "val_balanced_acc",
                             "val_min_class_acc", "val_ece"]
    # TensorBoard holds every metrics.csv column, each epoch's value at its step
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    columns = [c for c in rows[0] if c != "epoch"]
    assert sorted(events.Tags()["scalars"]) == sorted(columns)
    for column in columns:
        logged = [(e.step, e.value) for e in events.Scalars(column)]
        assert logged == [(int(r["epoch"]), pytest.approx(float(r[column]), rel=1e-6))
                          for r in rows], column
    ckpt = read_file(out / "last.pt")  # weights_only=True: plain data only
    assert ckpt["epoch"] == 2 and ckpt["classes"] == ["bird", "airplane", "train", "boat"]
    assert ckpt["config"]["image_size"] == 32 and ckpt["config"]["batch_size"] == 8
    assert ckpt["config"]["arch"] == "tiny" and ckpt["format_version"] == 3
    assert {"model", "optimizer", "scheduler", "scaler", "versions"} <= set(ckpt)
    best = read_file(out / "best.pt")
    assert best["run"]["best_epoch"] == best["epoch"]
    assert best["best_metric"] == max(float(r["val_acc"]) for r in rows)
    # each epoch trains on every training image but fewer than one per step (batches of 8
    # images, all equal): the throughput and the accuracy count images, not steps
    n_train = ckpt["data"]["train_images"]
    steps = -(-n_train // 8)
    for r in rows:
        trained = float(r["images_per_s"]) * float(r["seconds"])
        assert n_train - steps < round(trained) <= n_train, (trained, n_train)
        assert float(r["train_acc"]) * round(trained) == pytest.approx(
            round(float(r["train_acc"]) * round(trained)), abs=1e-6)


def test_frozen_layers_and_bn_stats_stay_put_while_layer3_layer4_train(demo_data, tmp_path,
                                                                        imagenet_like):
    """The recipe is the subject: ResNet-50 from (stand-in) ImageNet weights."""
    fit(train_args(demo_data, tmp_path, weights=str(imagenet_like), arch="resnet50"),
        progress=False)
    start, end = torch.load(imagenet_like, weights_only=True), weights(tmp_path / "last.pt")
    for key, value in start.items():
        if key.split(".")[0] in FROZEN:  # weights AND BatchNorm running statistics
            assert torch.equal(end[key], value), f"frozen {key} changed"
    for prefix in ("layer3.", "layer4."):
        changed = [k for k in start if k.startswith(prefix) and k.endswith("conv1.weight")
                   and not torch.equal(end[k], start[k])]
        assert changed, f"{prefix} did not train (the original's optimizer bug)"
    # Adam holds state for every trainable tensor: layer3, layer4 and the head
    trainable = [p for p in build_model("resnet50", 4).parameters() if p.requires_grad]
    assert len(read_file(tmp_path / "last.pt")["optimizer"]["state"]) == len(trainable)


def test_label_smoothing_is_the_smoothed_cross_entropy_worked_by_hand():
    """Target 1 - S on the true class plus S spread evenly over all K classes: the loss of an
    image is (1 - S) * -log p_y + S * mean_k(-log p_k), summed over the batch."""
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.1, 0.2, 0.3, 0.4], [-3.0, 1.0, 0.0, 2.0]])
    labels = torch.tensor([0, 3, 1])
    log_p = logits.log_softmax(1)
    by_hand = sum(0.9 * -log_p[i, y] + 0.1 * -log_p[i].mean() for i, y in enumerate(labels))
    smoothed = build_criterion(Recipe(label_smoothing=0.1))(logits, labels)
    assert float(smoothed) == pytest.approx(float(by_hand), rel=1e-6)
    plain = build_criterion(Recipe())(logits, labels)  # the default: no smoothing
    assert float(plain) == pytest.approx(float(-log_p[range(3), labels].sum()), rel=1e-6)


def test_label_smoothing_trains_is_stored_and_resumed(demo_data, tmp_path):
    """--label-smoothing changes what a run learns, is stored with the recipe, and a resume
    that does not repeat the flag keeps it: stopped after one epoch and resumed to two, the
    weights are a straight two-epoch run's."""
    fit(train_args(demo_data, tmp_path / "plain", epochs=2), progress=False)
    fit(train_args(demo_data, tmp_path / "smooth", epochs=2, label_smoothing=0.1),
        progress=False)
    plain, smooth = (read_file(tmp_path / r / "last.pt") for r in ("plain", "smooth"))
    assert plain["config"]["label_smoothing"] == 0.0
    assert smooth["config"]["label_smoothing"] == 0.1
    assert max_diff(plain["model"], smooth["model"]) > 1e-4
    out = tmp_path / "cut"
    fit(train_args(demo_data, out, epochs=1, label_smoothing=0.1), progress=False)
    ran = run_script("train", *train_argv(demo_data, out, "--resume", out / "last.pt",
                                          "--epochs", "2"))
    assert ran.status == 0, ran.err[-2000:]
    resumed = read_file(out / "last.pt")
    assert resumed["config"]["label_smoothing"] == 0.1
    assert max_diff(resumed["model"], smooth["model"]) <= 1e-6


def test_a_per_step_schedule_steps_after_each_optimizer_step_and_resumes_there(
        demo_data, tmp_path, monkeypatch):
    """The schedule seam: a schedule built per step (as warmup and cosine are) steps once per
    optimizer step, metrics.csv's lr is each epoch's first step's, and a resumed run continues
    the count. Here the LR halves every step: 5 steps an epoch (36 images in batches of 8)."""
    import coco4.training

    def halving(recipe, optimizer, steps_per_epoch):
        assert steps_per_epoch == 5
        return coco4.training.LrSchedule(
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 ** k), per_step=True)

    monkeypatch.setattr(coco4.training, "build_scheduler", halving)
    fit(train_args(demo_data, tmp_path / "straight", epochs=3, lr=1e-3), progress=False)
    rows = read_csv(tmp_path / "straight" / "metrics.csv")
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 1e-3 / 32, 1e-3 / 1024])
    fit(train_args(demo_data, tmp_path / "cut", epochs=1, lr=1e-3), progress=False)
    fit(train_args(demo_data, tmp_path / "cut", epochs=3, lr=1e-3,
                   resume=str(tmp_path / "cut" / "last.pt")), progress=False)
    assert read_csv(tmp_path / "cut" / "metrics.csv")[2]["lr"] == rows[2]["lr"]
    assert max_diff(weights(tmp_path / "cut" / "last.pt"),
                    weights(tmp_path / "straight" / "last.pt")) <= 1e-6


def test_resume_gives_the_same_weights_and_same_seed_the_same_run(demo_data, tmp_path):
    fit(train_args(demo_data, tmp_path / "full", epochs=2), progress=False)
    fit(train_args(demo_data, tmp_path / "half", epochs=1), progress=False)
    one_epoch = weights(tmp_path / "half" / "last.pt")
    fit(train_args(demo_data, tmp_path / "half", epochs=2,
                   resume=str(tmp_path / "half" / "last.pt")), progress=False)
    assert max_diff(weights(tmp_path / "full" / "last.pt"),
                    weights(tmp_path / "half" / "last.pt")) <= 1e-6
    full_rows = read_csv(tmp_path / "full" / "metrics.csv")
    half_rows = read_csv(tmp_path / "half" / "metrics.csv")
    assert [r["val_loss"] for r in full_rows] == [r["val_loss"] for r in half_rows]
    # the LR schedule continues where it stopped (its best loss, its patience count, its
    # epoch), not from scratch: a resumed ReduceLROnPlateau would drop the LR at another epoch
    full_sched = read_file(tmp_path / "full" / "last.pt")["scheduler"]
    half_sched = read_file(tmp_path / "half" / "last.pt")["scheduler"]
    assert full_sched == half_sched and full_sched["last_epoch"] == 2
    with pytest.raises(Coco4Error, match=r"has already trained 2 epochs, and --epochs 2 is the "
                                         r"total: pass a larger --epochs to train on"):
        fit(train_args(demo_data, tmp_path / "half", epochs=2,
                       resume=str(tmp_path / "half" / "last.pt")), progress=False)
    # the same seed gives the same run: the 1-epoch run equals a fresh 1-epoch run
    fit(train_args(demo_data, tmp_path / "again", epochs=1), progress=False)
    assert max_diff(one_epoch, weights(tmp_path / "again" / "last.pt")) == 0
    fit(train_args(demo_data, tmp_path / "other", epochs=1, seed=1), progress=False)
    assert max_diff(one_epoch, weights(tmp_path / "other" / "last.pt")) > 1e-4


def test_accumulated_micro_batches_give_the_full_batch_update():
    """BatchNorm aside: both models run in eval mode (BN uses running stats, no dropout), so
    the only difference left is how the 16-image gradient is summed. SGD with lr 1 makes the
    update the gradient itself; Adam's first step divides by |gradient| and would magnify the
    float rounding of near-zero gradients into lr-sized differences."""
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 4, (16,))
    results = []
    for accum in (1, 4):
        torch.manual_seed(1)
        model = build_model("tiny", 4).eval()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        amp = Amp.for_device(torch.device("cpu"), False)
        criterion = torch.nn.CrossEntropyLoss(reduction="sum")
        parts = TrainingParts(model, opt, None, criterion, amp, amp.scaler(), accum)
        loss, correct = train_step(parts, x, y)
        results.append((model.state_dict(), float(loss), int(correct)))
    assert max_diff(results[0][0], results[1][0]) < 1e-6
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)
    assert results[0][2] == results[1][2]
    assert max_diff(results[0][0], start) > 1e-4  # the step did move the weights


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
def test_torchrun_two_processes_on_cpu(demo_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2"] + train_cli(demo_data, out, "--epochs", "1")[1:]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2 processes" in proc.stdout
    assert (proc.stderr + proc.stdout).count("epoch   1 |") == 1  # only rank 0 reports
    ckpt = read_file(out / "last.pt")
    assert ckpt["epoch"] == 1
    # validation counts reduced over both ranks: accuracy is a multiple of 1/len(val split)
    n_val = ckpt["data"]["val_images"]
    row = read_csv(out / "metrics.csv")[0]
    assert abs(float(row["val_acc"]) * n_val - round(float(row["val_acc"]) * n_val)) < 1e-9


def run_cli(demo_data, out, *extra):
    return run_script("train", *train_argv(demo_data, out, *extra))


def assert_one_line_error(ran, *fragments):
    assert ran.status == 2, ran.err
    for fragment in fragments:
        assert fragment in ran.error


def test_missing_lists_and_image_folder_are_one_line_errors(demo_data, tmp_path):
    proc = run_cli(demo_data, tmp_path / "o", "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_error(proc, "annotation_train.txt", "annotation_prepare.py")
    proc = run_cli(demo_data, tmp_path / "o", "--coco-root", str(tmp_path / "nococo"))
    assert_one_line_error(proc, "nococo", "--coco-root")
    assert not (tmp_path / "o" / "last.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(demo_data, tmp_path):
    assert_one_line_error(run_cli(demo_data, tmp_path, "--device", "cuda"), "CUDA", "--device cpu")


@pytest.mark.parametrize("flag,value,fragment", [
    ("--batch-size", "0", "--batch-size"), ("--epochs", "0", "--epochs"),
    ("--val-fraction", "1.5", "--val-fraction"), ("--accum-steps", "16", "--accum-steps"),
    ("--accum-steps", "5", "BatchNorm cannot train on one"),
    ("--batch-size", "1", "BatchNorm cannot train on one"), ("--lr", "inf", "--lr"),
    ("--lr", "nan", "--lr"), ("--seed", "-1", "--seed must be 0 or more"),
    ("--image-size", "5000", "--image-size must be at most 1024"),
    ("--workers", "100000", "--workers must be between 0 and "),
    ("--plateau-factor", "1.5", "--plateau-factor must be between 0 and 1"),
    ("--plateau-factor", "0", "--plateau-factor must be between 0 and 1"),
    ("--plateau-factor", "nan", "--plateau-factor must be between 0 and 1"),
    ("--plateau-patience", "-3", "--plateau-patience must be 0 or more")])
def test_bad_arguments_are_one_line_errors(demo_data, tmp_path, flag, value, fragment):
    assert_one_line_error(run_cli(demo_data, tmp_path, flag, value), fragment)


class NanModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return torch.full((len(x), 4), float("nan")) * self.w


class ListBatches:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def iterate(self, epoch, start_step=0):
        return iter(self.batches[start_step:])


def test_non_finite_loss_stops_naming_epoch_and_step():
    model = NanModel()
    amp = Amp.for_device(torch.device("cpu"), False)
    parts = TrainingParts(model, torch.optim.Adam(model.parameters()), None,
                          torch.nn.CrossEntropyLoss(reduction="sum"), amp, amp.scaler())
    batches = ListBatches([(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))] * 3)
    state = EpochState.start(3, torch.device("cpu"))
    assert train_one_epoch(parts, batches, state, seed=(0, 0))
    assert int(state.first_bad_step) == 0  # noted on the device, read once per epoch
    message = str(non_finite_loss(int(state.first_bad_step), 3))
    assert "non-finite at epoch 4, step 1; stopped without saving it (last.pt holds the run " \
           "as last saved (--save-every))" in message


def test_non_finite_loss_stops_a_run_before_saving(demo_data, tmp_path, monkeypatch):
    import coco4.training

    real = coco4.training.train_step

    def diverging(*args, **kwargs):
        loss, correct = real(*args, **kwargs)
        return loss * float("nan"), correct

    monkeypatch.setattr(coco4.training, "train_step", diverging)
    with pytest.raises(Coco4Error, match=r"non-finite at epoch 1, step 1; stopped without "
                                         r"saving it \(no last.pt of this run was saved\)"):
        fit(train_args(demo_data, tmp_path), progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_a_run_ending_in_an_error_keeps_its_best_model(demo_data, tmp_path, monkeypatch):
    """Between saves (--save-every) best.pt waits in memory: a loss that turns NaN in
    epoch 3 still leaves the best of epochs 1 and 2 on disk, and no last.pt of epoch 3."""
    import coco4.training

    real, calls = coco4.training.train_step, []

    def diverging(*args, **kwargs):
        loss, correct = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 10 else loss), correct  # 5 steps an epoch

    monkeypatch.setattr(coco4.training, "train_step", diverging)
    with pytest.raises(Coco4Error, match="non-finite at epoch 3, step 1"):
        fit(train_args(demo_data, tmp_path, epochs=4), progress=False)
    best = read_file(tmp_path / "best.pt")
    assert best["kind"] == "best" and best["epoch"] in (1, 2)
    assert not (tmp_path / "last.pt").exists()


def test_cuda_out_of_memory_names_the_accum_steps_to_use(demo_data, tmp_path, monkeypatch):
    import coco4.training

    monkeypatch.setattr(coco4.training, "train_step", out_of_memory)
    with pytest.raises(Coco4Error, match=r"--accum-steps 2\b"):
        fit(train_args(demo_data, tmp_path), progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_out_of_memory_in_validation_names_the_accum_steps_too(demo_data, tmp_path,
                                                               monkeypatch):
    import coco4.trainer

    monkeypatch.setattr(coco4.trainer, "validate", out_of_memory)
    # about 36 training images at batch 8: 5 steps of 7, in 2 micro-batches of up to 4; 3
    # micro-batches is the most that keeps 2 images in each
    with pytest.raises(Coco4Error, match=r"^CUDA out of memory in validation with micro-batches "
                                         r"of 4 images at 32px; rerun with --accum-steps 3 "):
        fit(train_args(demo_data, tmp_path, accum_steps=2), progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_batchnorm_never_trains_on_a_micro_batch_of_one_image():
    """13 images in 4 micro-batches are 4, 3, 3, 3, not 4, 4, 4, 1: at 32 px layer4's
    BatchNorm sees one value per channel from a lone image and cannot train on it."""
    sizes = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            sizes.append(len(x))
            return torch.zeros(len(x), 4, requires_grad=True)

    amp = Amp.for_device(torch.device("cpu"), False)
    parts = TrainingParts(Recorder(), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1),
                          None, torch.nn.CrossEntropyLoss(reduction="sum"), amp, amp.scaler(), 4)
    train_step(parts, torch.zeros(13, 3, 32, 32), torch.zeros(13, dtype=torch.long))
    assert sizes == [4, 3, 3, 3]


def test_too_few_images_for_the_micro_batches_is_a_one_line_error(demo_data, tmp_path):
    """The flags pass their own checks, but the data is too small: about 36 training images at
    --batch-size 40 are one step of 36, which 20 micro-batches cannot split into pairs."""
    with pytest.raises(Coco4Error, match=r"BatchNorm cannot train on one image: raise "
                                         r"--batch-size or lower --accum-steps"):
        fit(train_args(demo_data, tmp_path, batch_size=40, accum_steps=20), progress=False)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("env, fragment", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT is not"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "RANK=5 is outside 0..1 (WORLD_SIZE=2)"),
], ids=["half-set", "not-a-number", "rank-out-of-range"])
def test_torchrun_variables_set_wrongly_are_one_line_errors(monkeypatch, env, fragment):
    from coco4.distributed import init_distributed

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(Coco4Error, match=re.escape(fragment)):
        init_distributed("cpu")


@pytest.mark.parametrize("change, fragment", [
    (lambda c: c["run"].update(ema_decay=0.999), "'run' has fields ['ema_decay'] that a newer"),
    (lambda c: c["run"].update(epoch="1"), "run.epoch is '1'"),
    (lambda c: c.update(run=[1]), "'run' is a list"),
    (lambda c: c.pop("optimizer"), "no optimizer state"),
], ids=["newer-field", "wrong-type", "not-a-dict", "no-optimizer"])
def test_a_checkpoint_whose_run_state_cannot_be_resumed_is_refused(demo_data, run_copy, tmp_path,
                                                                    change, fragment):
    ckpt = torch.load(run_copy / "last.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, tmp_path / "odd.pt")
    with pytest.raises(Coco4Error, match=r"odd\.pt holds a training state this coco4 cannot "
                                         r"resume \(" + re.escape(fragment)):
        fit(train_args(demo_data, run_copy, epochs=3, resume=str(tmp_path / "odd.pt")),
            progress=False)


def test_out_of_memory_when_micro_batches_cannot_shrink_says_what_else_to_do(demo_data, tmp_path,
                                                                             monkeypatch):
    import coco4.training

    monkeypatch.setattr(coco4.training, "train_step", out_of_memory)
    # 7 images a step in 3 micro-batches: 4 would leave one image alone
    with pytest.raises(Coco4Error, match=r"micro-batches of 3 images at 32px, and they cannot "
                                         r"shrink below 2 images; lower --batch-size or "):
        fit(train_args(demo_data, tmp_path, accum_steps=3), progress=False)


def test_compile_without_a_cpp_compiler_is_refused_before_the_data_is_prepared(demo_data,
                                                                              tmp_path,
                                                                              monkeypatch):
    cache = tmp_path / "cache"
    earlier = tmp_path / "run" / "best.pt"  # an earlier run that --overwrite would replace
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier run's checkpoint")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    ran = run_cli(demo_data, tmp_path / "run", "--compile", "--cache-dir", cache, "--overwrite")
    assert_one_line_error(ran, f"--compile needs a C++ compiler, and "
                          f"'{tmp_path / 'no-such-g++'}' was not found", "without --compile")
    assert not list(cache.glob("*.u8")), "the cache was built before the check"
    assert earlier.read_bytes() == b"an earlier run's checkpoint", "removed before the check"


@pytest.mark.slow
def test_a_cpp_compiler_that_fails_is_one_line_not_a_page_of_traceback(demo_data, tmp_path):
    """The compiler is found (it answers --version) but cannot compile: torch.compile fails at
    the first step, deep inside inductor."""
    fake = tmp_path / "fake-g++"
    fake.write_text('#!/bin/sh\ncase "$*" in *--version*) echo "fake 1.0";;\n'
                    '*) echo "fake: cannot compile" >&2; exit 1;; esac\n')
    fake.chmod(0o755)
    env = {**os.environ, "CXX": str(fake), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    proc = subprocess.run(train_cli(demo_data, tmp_path / "run", "--compile", "--epochs", "1"),
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --compile failed: ") and "without --compile" in last


def test_a_cache_dir_given_by_name_that_cannot_be_written_stops_the_run(demo_data, tmp_path):
    """Not the quiet fallback to ~/.cache a default cache folder gets, and before any work."""
    (tmp_path / "a-file").write_text("in the way\n")
    cfg = train_args(demo_data, tmp_path / "run", cache_dir=str(tmp_path / "a-file" / "cache"))
    with pytest.raises(Coco4Error, match=r"^cannot write to .*a-file/cache: .*a-file is not a "
                                         r"folder; choose another folder"):
        fit(cfg, progress=False)
    assert not (tmp_path / "run").exists()
