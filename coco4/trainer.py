"""The fine-tuning run: data, model, the epoch loop, checkpoints, logs, and what to do when a
batch does not fit on the GPU.

Recipe (the original's, with its bugs fixed): a torchvision backbone (ResNet-50 by default)
with its stem and first stages frozen, Adam over ALL trainable parameters (the original gave
Adam only the head, so layer3/layer4 never moved), CrossEntropy, ReduceLROnPlateau on the
held-out validation loss, best checkpoint by a held-out validation metric (the original picked
it by accuracy on the test set).
"""
import contextlib
import dataclasses
import math
import os
import shlex
import shutil
import signal
from pathlib import Path

import torch
from tqdm import tqdm

from . import run_log
from .balance import inverse_frequency
from .calibration import fit_temperature
from .checkpoint import CheckpointWriter, LoadedModel, load_model, model_state, starting_model
from .cli import Coco4Error
from .compiling import check_compile_tools, compile_errors, compile_failed
from .config import RUNTIME_FIELDS, TrainConfig
from .data.loaders import Batches
from .data.prepare import TrainData, prepare_train_data
from .distributed import (
    DistEnv,
    StopVote,
    all_gather_cat,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_buffers,
    close_distributed,
    init_distributed,
    pick_device,
)
from .fileio import check_writable, remove_stale_temporaries
from .interrupt import Interrupted, StopRequest
from .loop import (
    Amp,
    EpochState,
    Learner,
    evaluate,
    non_finite_loss,
    train_one_epoch,
    train_step,
)
from .metrics import csv_row
from .model import trainable_parameters, unwrap
from .runlock import run_lock
from .seeding import seed_everything


@dataclasses.dataclass
class RunState:
    """Where the run stands; stored in every checkpoint so --resume continues exactly."""

    epoch: int = 0        # completed epochs
    step: int = 0         # steps already done in epoch ``epoch`` (mid-epoch checkpoints only)
    partial: dict = None  # that epoch's running sums, for a mid-epoch checkpoint
    best_metric: float = -1.0  # the best validation score by the config's ``select_by``
    best_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)


def fit(cfg: TrainConfig, progress: bool = True, program: str = "python train.py") -> dict:
    """Train as ``cfg`` says; return the summary of the run (best score, paths, history).
    ``program`` starts the resume command that an interrupted run prints."""
    env = init_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        # rank 0 writes the run's files: it holds the folder for the run's lifetime
        with run_lock(cfg.output_dir, tqdm.write) if env.is_main else contextlib.nullcontext():
            return Training(cfg, env, progress and env.is_main, program).run()
    finally:
        close_distributed(env)


class Training:
    """One run: everything is built in the constructor, ``run()`` goes through the epochs."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, progress: bool, program: str):
        self.env, self.progress, self.program = env, progress, program
        self.device = pick_device(cfg.device, env)
        resumed = _load_resume(cfg.resume) if cfg.resume else None
        if resumed:
            cfg, ignored = cfg.resumed_from(resumed.checkpoint["config"])
            if ignored and env.is_main:
                tqdm.write(f"resuming keeps the checkpoint's settings, not {ignored}")
        self.cfg = cfg
        done = resumed.checkpoint["run"].get("epoch", 0) if resumed else 0
        if done >= cfg.epochs:  # checked before any work, not a silent exit 0
            raise Coco4Error(f"{cfg.resume} has already trained {done} epoch"
                             f"{'' if done == 1 else 's'}, and --epochs "
                             f"{cfg.epochs} is the total: pass a larger --epochs to train on")
        if cfg.cache_dir:  # asked for by name: an error, not the fallback a default folder gets
            check_writable(cfg.cache_dir)
        self.log = run_log.RunLog(cfg.output_dir, env.is_main, resumed is not None)
        self.log.config(cfg, self.device, env)
        if cfg.compile:  # before an earlier run's files are removed to make room
            check_compile_tools(self.device)
        if env.is_main:  # the folder is checked and locked (fit) by now
            remove_stale_temporaries(cfg.output_dir, self.log.info)
            if not resumed:
                make_room_for_a_new_run(cfg)
        self.data = prepare_train_data(cfg, env, self.device, progress, self.log.info)
        if resumed and resumed.classes != list(self.data.classes):
            raise Coco4Error(f"{cfg.resume} was trained on classes {resumed.classes}, but "
                             f"{cfg.train_list_path} is labelled for {list(self.data.classes)};"
                             " resume with the lists it was trained on")
        self.learner = build_learner(cfg, self.data, self.device, env, resumed)
        self.state = RunState(**resumed.checkpoint["run"]) if resumed else RunState()
        # fitted on each validation's logits, stored with the checkpoint written after it
        self.temperature = resumed.checkpoint.get("temperature") if resumed else None
        self.writer = CheckpointWriter()
        self.stop_vote = StopVote(env)

    def run(self) -> dict:
        failed_compile = compile_errors() if self.cfg.compile else ()
        try:
            with StopRequest() as stop:
                for epoch in range(self.state.epoch, self.cfg.epochs):
                    self._one_epoch(epoch, stop)
        except failed_compile as e:  # a compiler that is there but fails, at its first use
            raise compile_failed(e) from None
        finally:
            self.log.close()
            self.writer.wait()  # the last checkpoint is on disk before fit returns or raises
        run = self.state
        return {"best_metric": run.best_metric, "select_by": self.cfg.select_by,
                "best_epoch": run.best_epoch, "history": run.history,
                "output_dir": str(self.cfg.output_dir), "classes": list(self.data.classes)}

    def _one_epoch(self, epoch: int, stop: StopRequest) -> None:
        """Train, validate, checkpoint and log one epoch; on a stop request, save and raise."""
        cfg, env, device, run, learner = self.cfg, self.env, self.device, self.state, self.learner
        stopped_here = epoch == run.epoch  # where a mid-epoch checkpoint (if any) stopped
        state = EpochState.start(epoch, device, run.partial if stopped_here else None,
                                 run.step if stopped_here else 0)
        try:
            completed = train_one_epoch(
                learner, self.data.train, state, seed=(cfg.seed, env.rank),
                should_stop=lambda: self.stop_vote(stop.requested),
                desc=f"epoch {epoch + 1}/{cfg.epochs}" if self.progress else None)
        except torch.cuda.OutOfMemoryError:
            completed = None  # advice below, once the failed step's tensors are released
        if completed is None:
            raise self._out_of_memory("training")
        bad_step = int(state.first_bad_step)
        if any_rank(bad_step >= 0, env, device):  # every rank stops, not just the one that saw it
            raise non_finite_loss(bad_step if bad_step >= 0 else None, epoch,
                                  (Path(cfg.output_dir) / "last.pt").exists())
        if not completed:
            run.epoch, run.step, run.partial = epoch, state.step, state.to_dict()
            self._save(best=False)
            self.writer.wait()
            raise self._interrupted(stop.signum, epoch, state.step)
        row, score = self._end_epoch(state)
        is_best = score > run.best_metric
        if is_best:
            run.best_metric, run.best_epoch = score, epoch + 1
        run.epoch, run.step, run.partial = epoch + 1, 0, None
        run.history.append(row)
        self._save(best=is_best)
        self.log.epoch(run.history, run.best_epoch)
        voted = self.stop_vote.result()  # the last step's vote, in flight until now
        if (any_rank(stop.requested, env, device) or voted) and epoch + 1 < cfg.epochs:
            self.writer.wait()
            raise self._interrupted(stop.signum, epoch + 1, 0)

    def _end_epoch(self, state: EpochState) -> tuple[dict, float]:
        """Reduce the epoch's figures over ranks, validate, step the LR schedule; the row for
        metrics.csv, and the score the best checkpoint is chosen by."""
        env, device, learner = self.env, self.device, self.learner
        lr = learner.optimizer.param_groups[0]["lr"]
        loss_sum, correct, count = all_reduce_sum(
            [float(state.loss_sum), float(state.correct), float(state.count)], env, device)
        # the bare model: evaluation needs no gradient sync, and DDP's forward would broadcast
        # buffers, a collective that a rank with no validation images would never join; so
        # every rank takes rank 0's buffers here, and scores the weights rank 0 saves
        model = unwrap(learner.model)
        broadcast_buffers(model, env)
        try:
            metrics, logits, labels = evaluate(model, self.data.val, learner.amp,
                                               len(self.data.classes))
        except torch.cuda.OutOfMemoryError:
            metrics = None
        if metrics is None:
            raise self._out_of_memory("validation")
        val = metrics.all_reduce(env).summary(self.data.classes)
        self.temperature = fit_temperature(all_gather_cat(logits, env),
                                           all_gather_cat(labels, env))
        learner.scheduler.step(val["nll"])
        row = {"epoch": state.epoch + 1, "train_loss": loss_sum / count,
               "train_acc": correct / count, **csv_row(val), "lr": lr,
               "seconds": state.seconds, "images_per_s": count / max(state.seconds, 1e-9)}
        return row, val[self.cfg.select_by]

    def _out_of_memory(self, during: str) -> Coco4Error:
        """The one-line advice for a CUDA out-of-memory error ``during`` training or
        validation. Under torchrun this process then exits at once: the other ranks' next
        stop vote fails on the lost peer, and torchrun ends them, instead of all waiting for
        the NCCL timeout."""
        self.learner.optimizer.zero_grad(set_to_none=True)
        return Coco4Error(out_of_memory_advice(self.cfg, self.learner, self.data.train,
                                               self.env, during))

    def _save(self, best: bool) -> None:
        if not self.env.is_main:
            return
        run, learner = self.state, self.learner
        payload = {"model": model_state(learner.model),
                   "optimizer": learner.optimizer.state_dict(),
                   "scheduler": learner.scheduler.state_dict(),
                   "scaler": learner.scaler.state_dict(),
                   "epoch": run.epoch, "run": dataclasses.asdict(run),
                   "best_metric": run.best_metric, "classes": list(self.data.classes),
                   "config": self.cfg.to_dict(), "data": self.data.report,
                   "temperature": self.temperature}
        out = Path(self.cfg.output_dir)
        # best.pt a file of its own, not a link: changing last.pt in place must not change it
        self.writer.save([out / "last.pt", out / "best.pt"] if best else [out / "last.pt"],
                         payload)

    def _interrupted(self, signum: int | None, epoch: int, step: int) -> Interrupted:
        # under torchrun a rank may stop because another rank was signalled: call it SIGTERM
        signum = signum or signal.SIGTERM
        last = Path(self.cfg.output_dir) / "last.pt"
        command = [*shlex.split(self.program), "--resume", str(last)]
        defaults = TrainConfig()
        for field in RUNTIME_FIELDS:
            value = getattr(self.cfg, field)
            if field in ("resume", "overwrite") or value == getattr(defaults, field):
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


RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "tensorboard")


def make_room_for_a_new_run(cfg: TrainConfig) -> None:
    """A new run never silently replaces another run's files: it is refused, or, with
    ``overwrite``, the earlier run's files go first, so none of them (best.pt, TensorBoard
    events) is left to mix with the new run's."""
    out = Path(cfg.output_dir)
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not cfg.overwrite:
        raise Coco4Error(f"{out} already holds a run ({', '.join(found)}); continue it with "
                         f"--resume {out / 'last.pt'}, choose another --output-dir, or pass "
                         "--overwrite to replace it")
    for name in found:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()


def _load_resume(path: str) -> LoadedModel:
    loaded = load_model(path, "cpu")
    ckpt = loaded.checkpoint
    if "run" not in ckpt:
        raise Coco4Error(f"{path} holds no training state (optimizer, epoch) to resume; "
                         "to start a new run from its weights use --weights PATH instead")
    problem = _run_state_problem(ckpt)
    if problem:
        raise Coco4Error(f"{path} holds a training state this coco4 cannot resume ({problem}); "
                         "start a new run from its weights with --weights PATH")
    return loaded


def _run_state_problem(ckpt: dict) -> str | None:
    """What is wrong with a checkpoint's resumable state, or None: every field RunState and
    build_learner read, of the type they need."""
    run, fields = ckpt["run"], {f.name: f for f in dataclasses.fields(RunState)}
    if not isinstance(run, dict):
        return f"'run' is a {type(run).__name__}"
    unknown = sorted(set(run) - set(fields))
    if unknown:
        return f"'run' has fields {unknown} that a newer coco4 wrote"
    numbers = {"epoch": int, "step": int, "best_metric": (int, float), "best_epoch": int}
    for name, kind in numbers.items():
        if name in run and (not isinstance(run[name], kind) or isinstance(run[name], bool)):
            return f"run.{name} is {run[name]!r}"
    if run.get("epoch", 0) < 0:
        return f"run.epoch is {run['epoch']!r}"
    for name in ("optimizer", "scheduler", "scaler"):
        if not isinstance(ckpt.get(name), dict):
            return f"no {name} state"
    return None


def build_learner(cfg: TrainConfig, data: TrainData, device: torch.device, env: DistEnv,
                  resumed: LoadedModel | None = None) -> Learner:
    """The model (from ``cfg.weights``, or the resumed checkpoint), optimizer, scheduler,
    criterion and AMP parts of a run, on ``device``."""
    if resumed:
        model = resumed.model
    else:
        seed_everything(cfg.seed, "init")  # the new head's (and a --weights none model's) init
        if not env.is_main:
            barrier(env)  # rank 0 downloads the ImageNet weights first, once
        model = starting_model(cfg.arch, len(data.classes), cfg.weights)
        if env.is_main:
            barrier(env)
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
        ckpt = resumed.checkpoint
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty when the run had no fp16 scaler (CPU, bf16)
            scaler.load_state_dict(ckpt["scaler"])
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    # --balance loss: weights from the training split alone (not the held-out validation
    # images, whose loss and the LR schedule on it stay unweighted)
    weight = (inverse_frequency(data.train.labels, data.classes).to(device)
              if cfg.balance == "loss" else None)
    return Learner(model, optimizer, scheduler,
                   torch.nn.CrossEntropyLoss(weight=weight, reduction="sum"), amp, scaler,
                   cfg.accum_steps)


def out_of_memory_advice(cfg: TrainConfig, learner: Learner, batches: Batches, env: DistEnv,
                         during: str = "training") -> str:
    """A one-line message naming an --accum-steps that fits ``batches``' steps. On one GPU,
    for ``training``, it is found by running real training steps (the optimizer's state, the
    uint8 batch and its crops included) with more and more micro-batches, then a quarter more
    for a margin; under torchrun (a lone rank cannot step a DDP model), on other devices, or
    for ``validation`` (which runs in micro-batches of the same size), it is doubled."""
    local = batches.smallest_batch()  # this rank's images per step: every step has as many
    micro = math.ceil(local / cfg.accum_steps)
    most = max(1, local // 2)  # micro-batches of at least 2 images: BatchNorm needs them
    what = (f"CUDA out of memory in {during} with micro-batches of {micro} images at "
            f"{cfg.image_size}px")
    if cfg.accum_steps >= most:
        return (f"{what}, and they cannot shrink below 2 images; lower --batch-size or "
                "--image-size, or use a GPU with more memory")
    fits = None
    if during == "training" and not env.enabled:
        fits = _accum_steps_that_fit(learner, batches, cfg.accum_steps * 2, most)
    accum = fits or min(cfg.accum_steps * 2, most)
    return (f"{what}; rerun with --accum-steps {accum} (micro-batches of "
            f"{math.ceil(local / accum)}, the same effective batch; BatchNorm sees each "
            "micro-batch alone)")


def _accum_steps_that_fit(learner, batches, start, most):
    if batches.plan.device.type != "cuda":
        return None
    accum = start
    while accum <= most:
        if _a_step_fits(learner, batches, accum):
            return min(most, math.ceil(accum * 4 / 3))  # room for fragmentation
        accum *= 2
    return None


def _a_step_fits(learner, batches, accum):
    """Whether one real step (this run's next batch, its crops, the optimizer's update) fits
    with ``accum`` micro-batches. The weights it changes are never saved: the run ends here."""
    learner.accum_steps = accum
    try:
        torch.cuda.empty_cache()
        x, y = next(iter(batches.iterate(0)))
        train_step(learner, x, y)
        torch.cuda.synchronize(batches.plan.device)
        return True
    except torch.cuda.OutOfMemoryError:
        learner.optimizer.zero_grad(set_to_none=True)
        return False
