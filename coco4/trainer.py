"""The fine-tuning run: data, model, the epoch loop, checkpoints and logs.

Recipe (the original's, with its bugs fixed): ResNet-50, stem/layer1/layer2 frozen, Adam over
ALL trainable parameters (the original gave Adam only the head, so layer3/layer4 never moved),
CrossEntropy, ReduceLROnPlateau on the held-out validation loss, best checkpoint by held-out
validation accuracy (the original picked it on the test set).
"""
import dataclasses
import os
import shlex
import signal
from pathlib import Path

import torch
from tqdm import tqdm

from . import run_log
from .checkpoint import CheckpointWriter, load_checkpoint, load_state_into
from .config import RUNTIME_FIELDS, TrainConfig
from .distributed import (all_reduce_sum, any_rank, barrier, close_distributed, init_distributed,
                          pick_device)
from .engine import Amp, EpochState, evaluate, non_finite_loss, train_one_epoch
from .errors import Coco4Error
from .fileio import check_writable, link_or_copy
from .interrupt import Interrupted, StopRequest
from .memory import out_of_memory_advice
from .model import build_model, trainable_parameters, unwrap
from .seeding import seed_everything
from .train_data import prepare_train_data


@dataclasses.dataclass
class RunState:
    """Where the run stands; stored in every checkpoint so --resume continues exactly."""

    epoch: int = 0        # completed epochs
    step: int = 0         # steps already done in epoch ``epoch`` (mid-epoch checkpoints only)
    partial: dict = None  # that epoch's running sums, for a mid-epoch checkpoint
    best_acc: float = -1.0
    best_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)


def fit(cfg, progress=True):
    """Train as ``cfg`` says; return the summary of the run (best accuracy, paths, history)."""
    env = init_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        return _fit(cfg, env, progress)
    finally:
        close_distributed(env)


@dataclasses.dataclass
class Parts:
    """What one training step needs, built once per run."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    amp: Amp
    scaler: object


def _fit(cfg, env, progress):
    device = pick_device(cfg.device, env)
    resumed = _load_resume(cfg) if cfg.resume else None
    if resumed:
        cfg, ignored = cfg.resumed_from(resumed["config"])
        if ignored and env.is_main:
            tqdm.write(f"resuming keeps the checkpoint's settings, not {ignored}")
    log = run_log.RunLog(cfg.output_dir, env.is_main, resumed is not None)
    log.config(cfg, device, env)
    if env.is_main:
        check_writable(cfg.output_dir)
    data = prepare_train_data(cfg, env, device, progress and env.is_main, log)
    parts = _build(cfg, len(data.classes), device, env, resumed)
    run = RunState(**resumed["run"]) if resumed else RunState()
    writer = CheckpointWriter()
    try:
        with StopRequest() as stop:
            for epoch in range(run.epoch, cfg.epochs):
                _one_epoch(cfg, epoch, run, data, parts, env, device, stop, log, progress,
                           writer)
    finally:
        log.close()
        writer.wait()  # the last checkpoint is on disk before fit returns or raises
    return {"best_val_acc": run.best_acc, "best_epoch": run.best_epoch, "history": run.history,
            "output_dir": str(cfg.output_dir), "classes": list(data.classes)}


def _one_epoch(cfg, epoch, run, data, parts, env, device, stop, log, progress, writer):
    """Train, validate, checkpoint and log one epoch; on a stop request, save and raise."""
    state = _start_epoch(epoch, run, device)
    out_of_memory = False
    try:
        next_step = train_one_epoch(
            parts.model, data.train, parts.optimizer, parts.scaler, parts.amp, cfg.accum_steps,
            epoch, state, seed=(cfg.seed, env.rank),
            start_step=run.step if epoch == run.epoch else 0,
            should_stop=lambda: any_rank(stop.requested, env, device),
            desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=progress and env.is_main)
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True  # probe below, once the failed step's tensors are released
    if out_of_memory:
        parts.optimizer.zero_grad(set_to_none=True)
        raise Coco4Error(out_of_memory_advice(cfg, unwrap(parts.model), parts.amp, device, env))
    bad_step = int(state.first_bad_step)
    if any_rank(bad_step >= 0, env, device):  # every rank stops, not just the one that saw it
        raise non_finite_loss(bad_step if bad_step >= 0 else None, epoch)
    if next_step is not None:
        run.epoch, run.step, run.partial = epoch, next_step, state.to_dict()
        _save(cfg, run, data, parts, env, writer, best=False)
        writer.wait()
        raise _interrupted(cfg, stop.signum, epoch, next_step)
    row = _end_epoch(epoch, state, data, parts, env, device)
    is_best = row["val_acc"] > run.best_acc
    if is_best:
        run.best_acc, run.best_epoch = row["val_acc"], epoch + 1
    run.epoch, run.step, run.partial = epoch + 1, 0, None
    run.history.append(row)
    _save(cfg, run, data, parts, env, writer, best=is_best)
    log.epoch(row, run)
    if any_rank(stop.requested, env, device) and epoch + 1 < cfg.epochs:
        writer.wait()
        raise _interrupted(cfg, stop.signum, epoch + 1, 0)


def _load_resume(cfg):
    ckpt = load_checkpoint(cfg.resume)
    if "run" not in ckpt:
        raise Coco4Error(f"{cfg.resume} holds no training state (optimizer, epoch) to resume; "
                         "to start a new run from its weights use --weights PATH instead")
    return ckpt


def _build(cfg, num_classes, device, env, resumed):
    seed_everything(cfg.seed, "init")  # the new head's (and a --weights none model's) init
    if not env.is_main:
        barrier(env)  # rank 0 downloads the ImageNet weights first, once
    model = build_model("none" if resumed else cfg.weights, num_classes)
    if env.is_main:
        barrier(env)
    if resumed:
        load_state_into(model, resumed["model"], cfg.resume)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    amp = Amp.for_device(device, cfg.amp)
    scaler = amp.scaler()
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        if resumed["scaler"]:  # empty when the run had no fp16 scaler (CPU, bf16)
            scaler.load_state_dict(resumed["scaler"])
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    return Parts(model, optimizer, scheduler, amp, scaler)


def _start_epoch(epoch, run, device):
    """Fresh running sums, or those of the interrupted epoch a mid-epoch checkpoint saved."""
    if run.partial and epoch == run.epoch:
        return EpochState.from_dict(run.partial, device)
    return EpochState.zeros(device)


def _end_epoch(epoch, state, data, parts, env, device):
    """Reduce the epoch's figures over ranks, validate, step the LR schedule; return the row."""
    lr = parts.optimizer.param_groups[0]["lr"]
    loss_sum, correct, count = all_reduce_sum(
        [float(state.loss_sum), float(state.correct), float(state.count)], env, device)
    # the bare model: evaluation needs no gradient sync, and DDP's forward would broadcast
    # buffers, a collective that a rank with no validation images would never join
    val = evaluate(unwrap(parts.model), data.val, parts.amp, epoch)
    v_loss, v_correct, v_count = all_reduce_sum(
        [val["loss_sum"], val["correct"], val["count"]], env, device)
    parts.scheduler.step(v_loss / v_count)
    seconds = state.seconds
    return {"epoch": epoch + 1, "train_loss": loss_sum / count, "train_acc": correct / count,
            "val_loss": v_loss / v_count, "val_acc": v_correct / v_count, "lr": lr,
            "seconds": seconds, "images_per_s": count / max(seconds, 1e-9)}


def _save(cfg, run, data, parts, env, writer, best):
    if not env.is_main:
        return
    payload = {"model": unwrap(parts.model).state_dict(),
               "optimizer": parts.optimizer.state_dict(),
               "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(),
               "epoch": run.epoch, "run": dataclasses.asdict(run),
               "best_metric": run.best_acc, "classes": list(data.classes),
               "config": cfg.to_dict(), "data": data.report}
    out = Path(cfg.output_dir)
    writer.save(out / "last.pt", payload,
                then=(lambda: link_or_copy(out / "last.pt", out / "best.pt")) if best else None)


def _interrupted(cfg, signum, epoch, step):
    # under torchrun a rank may stop because another rank was signalled: call it SIGTERM
    signum = signum or signal.SIGTERM
    last = Path(cfg.output_dir) / "last.pt"
    command = ["python", "train.py", "--resume", str(last)]
    defaults = TrainConfig()
    for field in RUNTIME_FIELDS:
        value = getattr(cfg, field)
        if field == "resume" or value == getattr(defaults, field):
            continue
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            command.append(flag if value else "--no-" + flag[2:])
        else:
            command += [flag, str(value)]
    where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
    return Interrupted(f"stopped by {signal.Signals(signum).name} at {where}; saved {last}. "
                       f"Continue with: {shlex.join(command)}"
                       + (" (under torchrun, with the same torchrun options)"
                          if "WORLD_SIZE" in os.environ else ""), signum)
