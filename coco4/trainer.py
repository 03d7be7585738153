"""The fine-tuning run: data, model, the epoch loop, checkpoints and logs.

Recipe (the original's, with its bugs fixed): a torchvision backbone (ResNet-50 by default)
with its stem and first stages frozen, Adam over ALL trainable parameters (the original gave
Adam only the head, so layer3/layer4 never moved), CrossEntropy, ReduceLROnPlateau on the
held-out validation loss, best checkpoint by a held-out validation metric (the original picked
it by accuracy on the test set). Where the rest lives: resume.py (what a resumed run keeps, the
command that continues one), out_of_memory.py (the advice when a batch does not fit),
run_folder.py (one run per output folder), run_log.py (what the user is told).
"""
import contextlib
import dataclasses
from pathlib import Path

import torch
from tqdm import tqdm

from . import run_log
from .balance import inverse_frequency
from .calibration import fit_temperature
from .checkpoint import CheckpointWriter, LoadedModel, model_state, starting_model
from .compiling import check_compile_tools, compile_errors, compile_failed
from .config import TrainConfig
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
from .errors import Coco4Error
from .fileio import check_writable, remove_stale_temporaries, same_file
from .interrupt import StopRequest
from .loop import Amp, EpochState, TrainingParts, non_finite_loss, train_one_epoch, validate
from .model import trainable_parameters, unwrap
from .out_of_memory import accum_steps_that_fit, training_advice
from .resume import RunState, interrupted, load_resumable, resumed_config
from .run_folder import earlier_run, remove, run_lock
from .seeding import seed_everything


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
        resumed = load_resumable(cfg.resume) if cfg.resume else None
        if resumed:
            cfg = resumed_config(cfg, resumed, tqdm.write if env.is_main else lambda m: None)
        self.cfg = cfg
        earlier = self._check_before_work(resumed)
        self.log = run_log.RunLog(cfg.output_dir, env.is_main, resumed is not None)
        self.log.config(cfg, self.device, env)
        if env.is_main:  # a killed run's half-written files, never a user's
            remove_stale_temporaries(cfg.output_dir, self.log.info)
        self.data = prepare_train_data(cfg.data_spec, env, self.device, progress, self.log.info)
        if resumed and resumed.classes != list(self.data.classes):
            raise Coco4Error(f"{cfg.resume} was trained on classes {resumed.classes}, but "
                             f"{cfg.train_list_path} is labelled for {list(self.data.classes)};"
                             " resume with the lists it was trained on")
        self.parts = build_training_parts(cfg, self.data, self.device, env, resumed)
        remove(earlier)  # --overwrite: only once every check of this run has passed
        self.state = RunState(**resumed.checkpoint["run"]) if resumed else RunState()
        # fitted on each validation's logits, stored with the checkpoint written after it
        self.temperature = resumed.checkpoint.get("temperature") if resumed else None
        self.writer = CheckpointWriter()
        self.stop_vote = StopVote(env)

    def _check_before_work(self, resumed: LoadedModel | None) -> list[Path]:
        """What can be checked before the data and the model are prepared; returns an earlier
        run's files in the output folder, which --overwrite lets this run replace."""
        cfg = self.cfg
        if cfg.cache_dir:  # asked for by name: an error, not the fallback a default folder gets
            check_writable(cfg.cache_dir)
        if cfg.compile:
            check_compile_tools(self.device)
        if not self.env.is_main:  # the folder is checked and locked (fit) by now
            return []
        if resumed:
            return _check_resume_folder(cfg)
        earlier = earlier_run(cfg.output_dir, cfg.overwrite)
        weights = [p for p in earlier if cfg.weights not in ("imagenet", "none")
                   and same_file(p, cfg.weights)]
        if weights:  # loaded first, then deleted with the earlier run: the user's file gone
            raise Coco4Error(f"--weights {cfg.weights} is the earlier run's {weights[0].name} in "
                             f"{cfg.output_dir}, which --overwrite deletes; copy it elsewhere "
                             "first, or choose another --output-dir")
        return earlier

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
        cfg, env, device, run = self.cfg, self.env, self.device, self.state
        stopped_here = epoch == run.epoch  # where a mid-epoch checkpoint (if any) stopped
        state = EpochState.start(epoch, device, run.epoch_sums if stopped_here else None,
                                 run.step if stopped_here else 0)
        try:
            completed = train_one_epoch(
                self.parts, self.data.train, state, seed=(cfg.seed, env.rank),
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
            run.epoch, run.step, run.epoch_sums = epoch, state.step, state.to_dict()
            self._save(best=False)
            self.writer.wait()
            raise interrupted(self.program, cfg, stop.signum, epoch, state.step)
        row, score = self._end_epoch(state)
        is_best = score > run.best_metric
        if is_best:
            run.best_metric, run.best_epoch = score, epoch + 1
        run.epoch, run.step, run.epoch_sums = epoch + 1, 0, None
        run.history.append(row)
        self._save(best=is_best)
        self.log.epoch(run.history, run.best_epoch)
        voted = self.stop_vote.result()  # the last step's vote, in flight until now
        if (any_rank(stop.requested, env, device) or voted) and epoch + 1 < cfg.epochs:
            self.writer.wait()
            raise interrupted(self.program, cfg, stop.signum, epoch + 1, 0)

    def _end_epoch(self, state: EpochState) -> tuple[dict, float]:
        """Validate, fit the temperature, step the LR schedule: the epoch's metrics.csv row,
        and the score the best checkpoint is chosen by."""
        lr = self.parts.optimizer.param_groups[0]["lr"]  # the LR this epoch trained at
        trained = all_reduce_sum([float(state.loss_sum), float(state.correct),
                                  float(state.count)], self.env, self.device)
        val, logits, labels = self._validate()
        self.temperature = fit_temperature(logits, labels)
        self.parts.scheduler.step(val["nll"])
        return run_log.epoch_row(state, trained, val, lr), val[self.cfg.select_by]

    def _validate(self) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """The held-out split's metrics, summed over ranks, and every rank's logits and labels."""
        env = self.env
        # the bare model: evaluation needs no gradient sync, and DDP's forward would broadcast
        # buffers, a collective that a rank with no validation images would never join; so
        # every rank takes rank 0's buffers here, and scores the weights rank 0 saves
        model = unwrap(self.parts.model)
        broadcast_buffers(model, env)
        try:
            metrics, logits, labels = validate(model, self.data.val, self.parts.amp,
                                               len(self.data.classes))
        except torch.cuda.OutOfMemoryError:
            metrics = None
        if metrics is None:
            raise self._out_of_memory("validation")
        val = metrics.all_reduce(env).summary(self.data.classes)
        return val, all_gather_cat(logits, env), all_gather_cat(labels, env)

    def _out_of_memory(self, during: str) -> Coco4Error:
        """The one-line advice for a CUDA out-of-memory error ``during`` training or
        validation (validation runs in micro-batches of the training step's size). Under
        torchrun this process then exits at once: the other ranks' next stop vote fails on the
        lost peer, and torchrun ends them, instead of all waiting for the NCCL timeout."""
        self.parts.optimizer.zero_grad(set_to_none=True)
        fits = None
        if during == "training":
            fits = accum_steps_that_fit(self.parts, self.data.train, self.env,
                                        self.cfg.accum_steps)
        return Coco4Error(training_advice(self.cfg, self.data.train, during, fits))

    def _save(self, best: bool) -> None:
        if not self.env.is_main:
            return
        run, parts = self.state, self.parts
        payload = {"model": model_state(parts.model),
                   "optimizer": parts.optimizer.state_dict(),
                   "scheduler": parts.scheduler.state_dict(),
                   "scaler": parts.scaler.state_dict(),
                   "epoch": run.epoch, "run": dataclasses.asdict(run),
                   "best_metric": run.best_metric, "classes": list(self.data.classes),
                   "config": self.cfg.to_dict(), "data": self.data.report,
                   "temperature": self.temperature}
        out = Path(self.cfg.output_dir)
        # best.pt a file of its own, not a link: changing last.pt in place must not change it
        self.writer.save([out / "last.pt", out / "best.pt"] if best else [out / "last.pt"],
                         payload)


def _check_resume_folder(cfg: TrainConfig) -> list[Path]:
    """A resumed run writes last.pt, best.pt and metrics.csv into --output-dir: unless that is
    the folder whose last.pt it resumes, the folder must hold no other run's files (--overwrite
    returns them for deletion; the file resumed is never among them), or two runs would mix."""
    folder, resume = Path(cfg.output_dir), Path(cfg.resume)
    if same_file(folder / "last.pt", resume):
        return []  # the usual case: the run goes on where it was
    earlier = [p for p in earlier_run(folder, overwrite=True) if not same_file(p, resume)]
    if earlier and not cfg.overwrite:
        where = (f"resume {folder / 'last.pt'}" if same_file(folder, resume.parent)
                 else "resume into the folder of --resume")
        raise Coco4Error(f"{folder} holds another run ({', '.join(p.name for p in earlier)}), "
                         f"which resuming {resume} there would mix with it; {where}, choose "
                         "another --output-dir, or pass --overwrite to replace that run")
    return earlier


def build_training_parts(cfg: TrainConfig, data: TrainData, device: torch.device,
                         env: DistEnv, resumed: LoadedModel | None = None) -> TrainingParts:
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
    return TrainingParts(model, optimizer, scheduler,
                         torch.nn.CrossEntropyLoss(weight=weight, reduction="sum"), amp, scaler,
                         cfg.accum_steps)
