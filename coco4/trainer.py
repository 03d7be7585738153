"""The fine-tuning run: the epoch loop, validation, checkpoints and logs.

The recipe (the loss, the optimizer, the LR schedule, the step) is coco4.training's; the checks
before any work are coco4.preflight's. Here: a run goes through its epochs, validates on the
held-out split, fits the temperature, chooses best.pt by a held-out validation metric (the
original picked it by accuracy on the test set) and saves. Where the rest lives: resume.py
(what a resumed run keeps, the command that continues one), out_of_memory.py (the advice when a
batch does not fit), run_folder.py (one run per output folder), run_log.py (what the user is
told).
"""
import dataclasses
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import run_log
from .calibration import fit_temperature
from .checkpoint import CheckpointWriter, model_state, snapshot
from .compiling import compile_errors, compile_failed
from .config import TrainConfig
from .data.prepare import prepare_train_data
from .distributed import (
    DistEnv,
    StopVote,
    all_gather_cat,
    all_reduce_sum,
    any_rank,
    broadcast_buffers,
    close_distributed,
    init_distributed,
)
from .errors import Coco4Error
from .fileio import remove_stale_temporaries
from .inference import validate
from .interrupt import StopRequest
from .model import unwrap
from .out_of_memory import accum_steps_that_fit, training_advice
from .preflight import Ready, preflight
from .resume import RunState, interrupted
from .run_folder import remove
from .training import EpochState, build_training_parts, non_finite_loss, train_one_epoch


def fit(cfg: TrainConfig, progress: bool = True, program: str = "python train.py") -> dict:
    """Train as ``cfg`` says; return the summary of the run (best score, paths, history).
    ``program`` starts the resume command that an interrupted run prints."""
    env = init_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        with preflight(cfg, env, tqdm.write) as ready:
            return Training(ready, env, progress and env.is_main, program).run()
    finally:
        close_distributed(env)


class Training:
    """One run that passed the preflight: the constructor prepares the data and builds the
    parts (from the checkpoint, when resuming), ``run()`` goes through the epochs."""

    def __init__(self, ready: Ready, env: DistEnv, progress: bool, program: str):
        self.env, self.progress, self.program = env, progress, program
        self.cfg, self.device = ready.cfg, ready.device
        cfg, resumed = ready.cfg, ready.resumed
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
        if self.parts.ema:
            self.log.info(run_log.ema_memory(cfg, self.parts.ema.decay, len(self.data.train)))
        remove(ready.earlier)  # --overwrite: only once every check of this run has passed
        self.state = RunState(**resumed.checkpoint["run"]) if resumed else RunState()
        self.state.stopped_early = 0  # resumed with a patience that lets it go on
        # fitted on each validation's logits, stored with the checkpoint written after it
        self.temperature = resumed.checkpoint.get("temperature") if resumed else None
        self.writer = CheckpointWriter()
        self._best = None  # best.pt's contents, waiting for the next save (``_keep_best``)
        self._saved_at = time.monotonic()  # --save-every counts from the run's start
        self.stop_vote = StopVote(env)

    def run(self) -> dict:
        failed_compile = compile_errors() if self.cfg.compile else ()
        try:
            with StopRequest() as stop:
                for epoch in range(self.state.epoch, self.cfg.epochs):
                    self._one_epoch(epoch, stop)
                    if self.state.stopped_early:
                        break
        except failed_compile as e:  # a compiler that is there but fails, at its first use
            raise compile_failed(e) from None
        finally:
            try:
                self._write_waiting_best()  # a run ending in an error keeps its best model
            finally:
                self.log.close()
            self.writer.wait()  # the last checkpoint is on disk before fit returns or raises
        run = self.state
        return {"best_metric": run.best_metric, "select_by": self.cfg.select_by,
                "best_epoch": run.best_epoch, "history": run.history,
                "stopped_early": run.stopped_early,
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
            with stop.protected():  # a second Ctrl-C would lose what no file holds yet
                self._save()
                self.writer.wait()
            raise interrupted(self.program, cfg, stop.signum, epoch, state.step)
        row, score = self._end_epoch(state)
        is_best = score > run.best_metric
        if is_best:
            run.best_metric, run.best_epoch = score, epoch + 1
        run.epoch, run.step, run.epoch_sums = epoch + 1, 0, None
        run.history.append(row)
        patience = cfg.patience
        if run.out_of_patience(patience) and run.epoch < cfg.epochs:
            run.stopped_early = run.epoch  # every rank decides alike: the scores are summed
        voted = self.stop_vote.result()  # the last step's vote, in flight until now
        stopping = (any_rank(stop.requested, env, device) or voted) and run.epoch < cfg.epochs
        if is_best:
            self._keep_best()
        if stopping or run.stopped_early or run.epoch == cfg.epochs or self._save_due():
            with stop.protected():  # a second Ctrl-C would lose what no file holds yet
                self._save()
                if stopping:
                    self.writer.wait()
        self.log.epoch(run.history, run.best_epoch)
        if run.stopped_early:
            self.log.info(f"stopped early after epoch {run.epoch}: {patience} epochs without a "
                          f"better held-out {cfg.select_by} than epoch {run.best_epoch}'s "
                          f"(--patience {patience}); best.pt is epoch {run.best_epoch}")
        elif stopping:
            self.writer.wait()
            raise interrupted(self.program, cfg, stop.signum, epoch + 1, 0)

    def _end_epoch(self, state: EpochState) -> tuple[dict, float]:
        """Validate, fit the temperature, step the LR schedule: the epoch's metrics.csv row,
        and the score the best checkpoint is chosen by."""
        # the LR this epoch trained at (a per-step schedule's first): read before the
        # schedule's epoch step below
        lr = state.lr if state.lr is not None else self.parts.optimizer.param_groups[0]["lr"]
        trained = all_reduce_sum([float(state.loss_sum), float(state.correct),
                                  float(state.count)], self.env, self.device)
        val, logits, labels = self._validate()
        self.temperature = fit_temperature(logits, labels)
        self.parts.schedule.after_epoch(val["nll"])
        return run_log.epoch_row(state, trained, val, lr), val[self.cfg.select_by]

    def _validate(self) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """The held-out split's metrics, summed over ranks, and every rank's logits and labels."""
        env = self.env
        # the bare model: evaluation needs no gradient sync, and DDP's forward would broadcast
        # buffers, a collective that a rank with no validation images would never join; so
        # every rank takes rank 0's buffers here, and scores the weights rank 0 saves. With
        # --model-ema, the average (each rank's own BatchNorm statistics went into it: rank
        # 0's is the one saved and now every rank's)
        model = self.parts.ema.module if self.parts.ema else unwrap(self.parts.model)
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

    def _keep_best(self) -> None:
        """The model of the epoch just chosen, as best.pt will hold it: kept in memory until
        the next ``_save``, so a run writes it at most once per --save-every."""
        if self.env.is_main:
            self._best = snapshot({**self._described_model(), "kind": "best",
                                   "metrics": self.state.history[-1]})

    def _write_waiting_best(self) -> None:
        """best.pt, when a better epoch came since the last save and the run ends without
        another (a non-finite loss, out of memory, any error): that model is not lost. It is
        then newer than last.pt, whose resumed run chooses the same epochs again."""
        if self._best is None:
            return
        best, self._best = self._best, None
        try:
            self.writer.save((Path(self.cfg.output_dir) / "best.pt", best))
            self.writer.wait()
        except Exception as e:  # a write's error: the one that ended the run is reported
            self.log.info(f"warning: best.pt of epoch {best['epoch']} was not written ({e})")

    def _save_due(self) -> bool:
        return time.monotonic() - self._saved_at >= self.cfg.save_every

    def _save(self) -> None:
        """last.pt, after best.pt when a better model waits, on the writer's thread: whenever
        last.pt is written, best.pt is the best of the epochs it holds."""
        self._saved_at = time.monotonic()
        if not self.env.is_main:
            return
        out = Path(self.cfg.output_dir)
        files = [] if self._best is None else [(out / "best.pt", self._best)]
        last = {**self._described_model(), **_training_state(self.parts)}
        self.writer.save(*files, (out / "last.pt", last))
        self._best = None  # after: an earlier write's error raised above keeps it waiting

    def _described_model(self) -> dict:
        """What both checkpoints hold: the model to predict with (the average, with
        --model-ema), and what rebuilds and describes it."""
        run, parts = self.state, self.parts
        return {"model": model_state(parts.ema.module if parts.ema else parts.model),
                "epoch": run.epoch, "run": dataclasses.asdict(run),
                "best_metric": run.best_metric, "classes": list(self.data.classes),
                "config": dataclasses.asdict(self.cfg.recipe),
                "run_options": dataclasses.asdict(self.cfg.run_options),
                "data": self.data.report, "temperature": self.temperature}


def _training_state(parts) -> dict:
    """What only last.pt holds, to resume: the weights in training (with --model-ema; else
    they are the model), the average's decay and count, the optimizer, schedule and scaler."""
    ema = {} if parts.ema is None else {"trained_model": model_state(parts.model),
                                        "ema": parts.ema.state()}
    return {**ema, "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.schedule.state_dict(), "scaler": parts.scaler.state_dict()}
