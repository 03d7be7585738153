"""--resume: where a run stands (stored in every checkpoint), which checkpoints can be
continued and with which settings, and the command that continues an interrupted run."""
import dataclasses
import os
import shlex
import signal
from collections.abc import Callable
from pathlib import Path

from .checkpoint import LoadedModel, load_model
from .config import RESUMED_FROM_COMMAND_LINE, TrainConfig
from .data.audit import file_sha256
from .errors import Coco4Error
from .interrupt import Interrupted
from .options import to_argv
from .training import EpochState


@dataclasses.dataclass
class RunState:
    """Where the run stands; stored in every checkpoint so --resume continues exactly."""

    epoch: int = 0        # completed epochs
    step: int = 0         # steps already done in epoch ``epoch`` (mid-epoch checkpoints only)
    epoch_sums: dict = None  # that epoch's running sums (loss, correct, images, seconds)
    best_metric: float = -1.0  # the best validation score by the config's ``select_by``
    best_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    stopped_early: int = 0  # the epoch after which --patience stopped the run; 0: it did not

    def out_of_patience(self, patience: int) -> bool:
        """Whether ``patience`` epochs (0: no limit) have passed without a better score."""
        return bool(patience) and self.epoch - self.best_epoch >= patience


def load_resumable(path: str) -> LoadedModel:
    """The checkpoint to continue, with a run state this coco4 can continue: or an error."""
    loaded = load_model(path, "cpu")
    ckpt = loaded.checkpoint
    if ckpt.get("kind") == "best":
        raise Coco4Error(f"{path} is a best.pt: the chosen model without the training state; "
                         f"resume from the last.pt beside it ({Path(path).parent / 'last.pt'}),"
                         f" or start a new run from its weights with --weights {path}")
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
    the training parts read, of the type they need."""
    run, fields = ckpt["run"], {f.name: f for f in dataclasses.fields(RunState)}
    if not isinstance(run, dict):
        return f"'run' is a {type(run).__name__}"
    unknown = sorted(set(run) - set(fields))
    if unknown:
        return f"'run' has fields {unknown} that a newer coco4 wrote"
    numbers = {"epoch": int, "step": int, "best_metric": (int, float), "best_epoch": int,
               "stopped_early": int}
    for name, kind in numbers.items():
        if name in run and (not isinstance(run[name], kind) or isinstance(run[name], bool)):
            return f"run.{name} is {run[name]!r}"
    if run.get("epoch", 0) < 0:
        return f"run.epoch is {run['epoch']!r}"
    if run.get("step", 0) < 0:  # it trained on from step -5
        return f"run.step is {run['step']!r}"
    if not -1 <= run.get("best_metric", -1.0) <= 1:  # NaN: no later epoch beat it, no best.pt
        return f"run.best_metric is {run['best_metric']!r}, not a score"
    history = run.get("history", [])
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        return "run.history is not a list of epoch rows"
    sums = run.get("epoch_sums")
    if sums is not None and not (isinstance(sums, dict) and set(EpochState.SAVED) <= set(sums)):
        return f"run.epoch_sums is {sums!r}, not the sums {', '.join(EpochState.SAVED)}"
    for name in ("optimizer", "scheduler", "scaler"):
        if not isinstance(ckpt.get(name), dict):
            return f"no {name} state"
    return _ema_problem(ckpt)


def _ema_problem(ckpt: dict) -> str | None:
    """What is wrong with a --model-ema run's average state, or None (or no --model-ema)."""
    if not (isinstance(ckpt["config"], dict) and ckpt["config"].get("model_ema")):
        return None
    ema, trained = ckpt.get("ema"), ckpt.get("trained_model")
    if not isinstance(trained, dict):
        return "no trained_model beside the averaged weights"
    if not (isinstance(ema, dict) and isinstance(ema.get("decay"), float)
            and 0 <= ema["decay"] < 1 and isinstance(ema.get("updates"), int)
            and not isinstance(ema["updates"], bool) and ema["updates"] >= 0):
        return f"ema is {ema!r}"
    return None


def resumed_config(cfg: TrainConfig, resumed: LoadedModel,
                   say: Callable[[str], None]) -> TrainConfig:
    """The stored run's settings with this command line's runtime ones on top; says which
    other settings given here it ignores, and refuses a run that has nothing left to train."""
    stored = resumed.checkpoint["config"]
    warmup = stored.get("lr_warmup_epochs", 0) if isinstance(stored, dict) else 0
    if isinstance(warmup, int) and warmup >= cfg.epochs:  # the command line's, not the file's
        raise Coco4Error(f"--epochs {cfg.epochs} is the total, and {cfg.resume}'s run warms up "
                         f"for {warmup}: pass a larger --epochs to train on")
    try:
        merged, ignored = cfg.resumed_from(stored)
    except Coco4Error as e:  # a stored setting of the wrong type or out of its range
        raise Coco4Error(f"{cfg.resume} holds a training config this coco4 cannot resume "
                         f"({e}); start a new run from its weights with --weights PATH") from None
    if ignored:
        say(f"resuming keeps the checkpoint's settings, not {ignored}")
    planned = stored.get("epochs") if isinstance(stored, dict) else None
    if merged.lr_scheduler == "cosine" and isinstance(planned, int) and merged.epochs > planned:
        # the curve keeps the --epochs the run began with (stored with its schedule)
        say(f"--epochs {merged.epochs} goes past the end this run's cosine was planned for (the "
            f"--epochs it began with): the epochs after it train at --lr-min {merged.lr_min:g}")
    options = resumed.checkpoint.get("run_options")  # older coco4: in the config
    trained_amp = (options if isinstance(options, dict) else stored).get("amp", True)
    if trained_amp is False and merged.amp:  # a run option: this command line's
        say("the run trained with --no-amp, and this resume runs mixed precision on CUDA; pass "
            "--no-amp to keep fp32")
    run = RunState(**resumed.checkpoint["run"])  # its fields checked by load_resumable
    done = run.epoch
    if run.out_of_patience(merged.patience):  # it stopped, or would have
        raise Coco4Error(f"{cfg.resume} has gone {done - run.best_epoch} epochs without a "
                         f"better held-out {merged.select_by} (its best: epoch "
                         f"{run.best_epoch}), and --patience is {merged.patience}: it stops "
                         "early here; its best.pt is the run's result, or pass a larger "
                         "--patience (0: none) to train on")
    if done >= merged.epochs:  # checked before any work, not a silent exit 0
        raise Coco4Error(f"{cfg.resume} has already trained {done} epoch"
                         f"{'' if done == 1 else 's'}, and --epochs "
                         f"{merged.epochs} is the total: pass a larger --epochs to train on")
    return merged


def check_same_list(cfg: TrainConfig, resumed: LoadedModel) -> None:
    """A resumed run trains on the list it began with: another one (images added, removed or
    relabelled) would re-cut the held-out split, and best.pt would be chosen on images it
    trained on. Checked against the list's SHA-256, stored since #35 (older runs: not)."""
    data = resumed.checkpoint.get("data")
    stored = data.get("list_sha256") if isinstance(data, dict) else None
    path = cfg.train_list_path
    if stored is None or not path.is_file():  # a missing list: the data step says so
        return
    if file_sha256(path) != stored:
        raise Coco4Error(f"{path} is not the list {cfg.resume} was trained on (its content "
                         f"changed: {data.get('listed_images', '?')} images were listed then); "
                         "resume with the list it trained on, or start a new run, with "
                         f"--weights {cfg.resume} to start from its model")


def resume_command(program: str, cfg: TrainConfig) -> str:
    """The command that continues ``cfg``'s run from its last.pt: ``program`` (how the user
    started it), --resume, and the runtime settings given that are not their defaults (the
    others come from the checkpoint)."""
    defaults = TrainConfig()
    changed = [f for f in RESUMED_FROM_COMMAND_LINE if f not in ("resume", "overwrite")
               and getattr(cfg, f) != getattr(defaults, f)]
    last = Path(cfg.output_dir) / "last.pt"
    return shlex.join([*shlex.split(program), "--resume", str(last), *to_argv(cfg, changed)])


def interrupted(program: str, cfg: TrainConfig, signum: int | None, epoch: int,
                step: int) -> Interrupted:
    """The error that ends a run stopped by a signal once its last.pt is saved: where it
    stopped, and how to continue."""
    # under torchrun a rank may stop because another rank was signalled: call it SIGTERM
    signum = signum or signal.SIGTERM
    where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
    return Interrupted(f"stopped by {signal.Signals(signum).name} at {where}; saved "
                       f"{Path(cfg.output_dir) / 'last.pt'}. Continue with: "
                       f"{resume_command(program, cfg)}"
                       + (" (under torchrun, with the same torchrun options)"
                          if "WORLD_SIZE" in os.environ else ""), signum)
