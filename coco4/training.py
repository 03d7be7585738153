"""The recipe, top to bottom: the loss, the optimizer and the LR schedule, each built from the
``Recipe`` by one named function; the training step; the training epoch.

Changing the recipe starts here (CONTRIBUTING.md, "Changing the recipe"): a builder turns a
setting into a torch object, and the trainer, the benchmark and the tests all call the same
builders. The default is the original's: cross-entropy, Adam over every trainable parameter,
ReduceLROnPlateau on the held-out validation loss.

Per-step figures stay on the device and are read at the epoch's end and when the progress bar
refreshes (at most once a second), so on one GPU the host runs ahead of the queued steps.
"""
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from .balance import inverse_frequency
from .checkpoint import LoadedModel, load_state_into, starting_model
from .config import Recipe, TrainConfig
from .data.loaders import Batches
from .data.prepare import TrainData
from .distributed import DistEnv, barrier
from .ema import ModelEma, decay_per_update
from .errors import Coco4Error
from .image_augment import ImageAugment
from .inference import Amp
from .mixing import MixupCutmix
from .model import arch_spec, trainable_parameters, unwrap
from .seeding import generator, seed_everything

# (images, labels, generator) -> (images, targets): augments each image (auto-augment, random
# erasing) and mixes the batch and its targets (mixup, cutmix) on the device, drawing from the
# step's own generator
BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator],
                          tuple[torch.Tensor, torch.Tensor]]


def build_criterion(recipe: Recipe, class_weight: torch.Tensor | None = None) -> nn.Module:
    """The training loss, summed over a micro-batch (``train_step`` divides by the batch's
    size, so micro-batches add up). It takes class indices or per-class target probabilities
    (soft targets, as mixup and cutmix make); ``class_weight`` is --balance loss's."""
    return nn.CrossEntropyLoss(weight=class_weight, reduction="sum",
                               label_smoothing=recipe.label_smoothing)


def build_batch_transform(recipe: Recipe, num_classes: int) -> BatchTransform | None:
    """What happens to each cropped and flipped training batch on the device, in torchvision's
    references' order: per-image auto-augment and random erasing, then mixup and/or cutmix
    (soft targets); None: the batch as it comes."""
    steps = []
    if recipe.auto_augment != "none" or recipe.random_erase > 0:
        mean = arch_spec(recipe.arch).mean  # the references erase to 0 after normalising
        steps.append(ImageAugment(recipe.auto_augment, recipe.random_erase,
                                  tuple(round(255 * m) for m in mean)))
    if recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0:
        steps.append(MixupCutmix(num_classes, recipe.mixup_alpha, recipe.cutmix_alpha))
    return chained(steps) if steps else None


def chained(steps: list[BatchTransform]) -> BatchTransform:
    """One batch transform doing ``steps`` in order, each drawing from the step's generator."""
    def transform(images, targets, generator):
        for step in steps:
            images, targets = step(images, targets, generator)
        return images, targets
    return transform


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """Adam over every trainable parameter (the original gave it only the head's)."""
    return torch.optim.Adam(trainable_parameters(model), lr=recipe.lr)


WARMUP_START = 0.01  # the warmup's first LR, a share of --lr (torchvision's lr_warmup_decay)


@dataclass
class LrSchedule:
    """The LR schedule: ``main`` steps after each optimizer step (``per_step``: cosine) or once
    an epoch, on the held-out validation loss (ReduceLROnPlateau); ``warmup``, when the recipe
    has one, raises the LR linearly over its first ``warmup_steps`` optimizer steps, and an
    epoch-stepped ``main`` waits for it to end."""

    main: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    per_step: bool = False
    warmup: torch.optim.lr_scheduler.LRScheduler | None = None
    warmup_steps: int = 0

    def warming_up(self) -> bool:
        """Whether the next optimizer step is one of the warmup's."""
        steps = self.main if self.per_step else self.warmup  # the one counting the steps
        return steps is not None and steps.last_epoch < self.warmup_steps

    def after_step(self) -> None:
        if self.per_step:
            self.main.step()
        elif self.warming_up():
            self.warmup.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.per_step or self.warming_up():
            return
        if isinstance(self.main, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.main.step(val_loss)
        else:
            self.main.step()

    def state_dict(self) -> dict:
        """The main scheduler's state (what the checkpoint's ``scheduler`` has always held),
        with the warmup's beside it when there is one."""
        state = self.main.state_dict()
        return state if self.warmup is None else {**state, "warmup": self.warmup.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        warmup = state.pop("warmup", None)
        self.main.load_state_dict(state)
        if self.warmup is not None and warmup is not None:
            self.warmup.load_state_dict(warmup)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> LrSchedule:
    """The LR schedule: ReduceLROnPlateau on the validation loss, once an epoch (the
    original's), or a cosine from --lr to --lr-min over the run's optimizer steps; either after
    --lr-warmup-epochs of linear warmup. ``steps_per_epoch``: optimizer steps in an epoch."""
    warmup_steps = recipe.lr_warmup_epochs * steps_per_epoch
    if recipe.lr_scheduler == "cosine":  # one closed form: warmup, then the cosine
        total, floor = recipe.epochs * steps_per_epoch, recipe.lr_min / recipe.lr
        return LrSchedule(torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(warmup_steps, total, floor)), per_step=True,
            warmup_steps=warmup_steps)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=recipe.plateau_factor, patience=recipe.plateau_patience,
        min_lr=recipe.lr_min)
    if not warmup_steps:
        return LrSchedule(plateau)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, warmup_steps, 1.0))
    return LrSchedule(plateau, warmup=warmup, warmup_steps=warmup_steps)


@dataclass
class WarmupCosine:
    """``warmup_then_cosine`` with its steps fixed when the run began: LambdaLR stores a
    callable object's fields with its state, so a run resumed with a larger --epochs keeps the
    cosine it started on (and trains its extra epochs at the floor) instead of jumping."""

    warmup: int
    total: int
    floor: float

    def __call__(self, step: int) -> float:
        return warmup_then_cosine(step, self.warmup, self.total, self.floor)


def warmup_then_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """The LR at optimizer step ``step`` as a share of --lr: linear from WARMUP_START to 1 over
    ``warmup`` steps, then a cosine from 1 down to ``floor`` at step ``total``."""
    if step < warmup:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup
    done = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * (1 + math.cos(math.pi * done)) / 2


@dataclass
class TrainingParts:
    """The model being trained and everything that updates it, built once per run: what a
    training step needs."""

    model: nn.Module  # possibly wrapped by DistributedDataParallel or torch.compile
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule | None  # None: a constant LR (a step timed or tested alone)
    criterion: nn.Module  # build_criterion's: summed, with class indices or soft targets
    amp: Amp
    scaler: torch.amp.GradScaler
    accum_steps: int = 1
    batch_transform: BatchTransform | None = None
    ema: ModelEma | None = None  # --model-ema: updated after each optimizer step


def build_training_parts(cfg: TrainConfig, data: TrainData, device: torch.device,
                         env: DistEnv, resumed: LoadedModel | None = None) -> TrainingParts:
    """The recipe's parts on ``device``: the model (from ``cfg.weights``, or the resumed
    checkpoint), the loss, the optimizer, the LR schedule and the AMP parts; a resumed run's
    optimizer, schedule and scaler continue from its checkpoint."""
    recipe = cfg.recipe
    model = resumed.model if resumed else _starting_model(recipe, len(data.classes), env)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    ema = build_model_ema(recipe, model, resumed)
    optimizer = build_optimizer(recipe, model)
    schedule = build_scheduler(recipe, optimizer, len(data.train))
    amp = Amp.for_device(device, cfg.amp)
    scaler = amp.scaler()
    if resumed:
        _restore(resumed, optimizer, schedule, scaler)
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    # --balance loss: weights from the training split alone (not the held-out validation
    # images, whose loss and the LR schedule on it stay unweighted)
    weight = (inverse_frequency(data.train.labels, data.classes).to(device)
              if recipe.balance == "loss" else None)
    return TrainingParts(model, optimizer, schedule, build_criterion(recipe, weight), amp,
                         scaler, recipe.accum_steps,
                         build_batch_transform(recipe, len(data.classes)), ema)


def _restore(resumed: LoadedModel, optimizer, schedule: LrSchedule, scaler) -> None:
    """A resumed run's optimizer, schedule and scaler states, or one line saying that the
    file's do not fit this model and recipe (a damaged or edited file)."""
    ckpt = resumed.checkpoint
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty when the run had no fp16 scaler (CPU, bf16)
            scaler.load_state_dict(ckpt["scaler"])
    except torch.cuda.OutOfMemoryError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise Coco4Error(f"{resumed.source} holds a training state that does not fit its own "
                         f"model and recipe ({type(e).__name__}: {e}); start a new run from "
                         f"its weights with --weights {resumed.source}") from None


def build_model_ema(recipe: Recipe, model: nn.Module,
                    resumed: LoadedModel | None = None) -> ModelEma | None:
    """--model-ema's average of ``model``, or None. A resumed run's file holds the average as
    its ``model`` (what ``model`` was loaded from) and the weights in training apart: the
    average takes the former, then ``model`` the latter."""
    if not recipe.model_ema:
        return None
    if resumed is None:
        return ModelEma(model, decay_per_update(recipe.model_ema_decay, recipe.batch_size,
                                                recipe.epochs))
    stored = resumed.checkpoint["ema"]
    ema = ModelEma(model, stored["decay"])  # the decay the run began with, whatever --epochs
    ema.updates = stored["updates"]
    load_state_into(model, resumed.checkpoint["trained_model"], resumed.source)
    return ema


def _starting_model(recipe: Recipe, num_classes: int, env: DistEnv) -> nn.Module:
    seed_everything(recipe.seed, "init")  # the new head's (and a --weights none model's) init
    if not env.is_main:
        barrier(env)  # rank 0 downloads the ImageNet weights first, once
    model = starting_model(recipe.arch, num_classes, recipe.weights)
    if env.is_main:
        barrier(env)
    return model


def loss_divisor(criterion: nn.Module, targets: torch.Tensor) -> torch.Tensor | int:
    """What a batch's summed loss is divided by to give its mean, as cross-entropy's
    reduction="mean" divides: the number of images, or with class weights and class-index
    targets, the images' summed weight."""
    weight = getattr(criterion, "weight", None)
    if weight is None or targets.is_floating_point():
        return len(targets)
    return weight[targets].sum()


def target_classes(targets: torch.Tensor) -> torch.Tensor:
    """The class each target names: itself for class indices, the most likely class of a
    soft target (mixup's larger share), for the training accuracy."""
    return targets.argmax(1) if targets.is_floating_point() else targets


def train_step(parts: TrainingParts, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """One optimizer step over batch (x, y), in ``parts.accum_steps`` nearly equal micro-batches;
    ``y`` holds class indices or soft targets, whichever the criterion takes.

    Each micro-batch's summed loss is divided by the whole batch's ``loss_divisor``, so the
    accumulated gradient is the full batch's mean gradient (BatchNorm statistics aside, which
    see one micro-batch at a time). Under torchrun each rank divides by its own share's, and
    DDP averages the ranks: with class weights that is the mean of the ranks' weighted means.
    Returns the batch's summed (weighted) loss and number correct, on the device.
    """
    model = parts.model
    total = loss_divisor(parts.criterion, y)
    # sizes differing by at most one (13 images in 4: 4, 3, 3, 3), never a remainder of one
    # image (4, 4, 4, 1), which BatchNorm cannot train on
    chunks = list(zip(x.tensor_split(parts.accum_steps), y.tensor_split(parts.accum_steps)))
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i, (xb, yb) in enumerate(chunks):
        # DDP: all-reduce gradients once, on the last micro-batch, not after each
        sync = contextlib.nullcontext() if i == len(chunks) - 1 or not hasattr(model, "no_sync") \
            else model.no_sync()
        with sync:
            with parts.amp.autocast():
                logits = model(xb)
            loss = parts.criterion(logits.float(), yb)
            parts.scaler.scale(loss / total).backward()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == target_classes(yb)).sum()
    warming_up = parts.schedule is not None and parts.schedule.warming_up()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.ema is not None:  # the warmup's weights are copied, not averaged (as torchvision)
        parts.ema.update(unwrap(model), restart=warming_up)
    if parts.schedule is not None:
        parts.schedule.after_step()
    return loss_sum, correct


@dataclass
class EpochState:
    """Where an epoch stands: its index, the next step to run, and its running sums (on the
    device). A mid-epoch checkpoint stores it, so a resumed run continues the same sums."""

    epoch: int
    step: int
    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    seconds: float = 0.0
    first_bad_step: torch.Tensor = None  # the first step with a non-finite loss, or -1
    lr: float | None = None  # the LR of the epoch's first step: metrics.csv's lr column

    SAVED = ("loss_sum", "correct", "count", "seconds")  # a mid-epoch checkpoint's sums

    @classmethod
    def start(cls, epoch: int, device: torch.device, saved: dict | None = None,
              step: int = 0) -> "EpochState":
        """A fresh epoch, or (``saved``, ``step``) the interrupted one a checkpoint holds."""
        state = cls(epoch, step, torch.zeros((), device=device, dtype=torch.float64),
                    torch.zeros((), device=device, dtype=torch.long), 0, 0.0,
                    torch.full((), -1, device=device))
        if saved:
            state.loss_sum += saved["loss_sum"]
            state.correct += saved["correct"]
            state.count, state.seconds = saved["count"], saved["seconds"]
            state.lr = saved.get("lr")  # older checkpoints: the LR at the epoch's end
        return state

    def to_dict(self) -> dict:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct),
                "count": self.count, "seconds": self.seconds, "lr": self.lr}


def train_one_epoch(parts: TrainingParts, batches: Batches, state: EpochState, seed: tuple,
                    should_stop: Callable[[], bool] = lambda: False,
                    desc: str | None = None) -> bool:
    """Train over ``batches.iterate(state.epoch, state.step)``, adding to ``state``.

    Each step reseeds the global RNG (dropout) from (``seed``, epoch, step), and a batch
    transform draws from its own generator of the same parts: a run resumed at step k draws
    what an uninterrupted run drew there, with no RNG state to save.

    Returns True when the epoch completed; False when ``should_stop()`` turned true between
    steps, with ``state.step`` the next step to run (the caller saves a mid-epoch checkpoint).
    The first step with a non-finite loss is noted in ``state.first_bad_step``, on the device.
    A progress bar is shown when ``desc`` is given.
    """
    parts.model.train()
    steps = len(batches)
    with tqdm(total=steps, initial=state.step, desc=desc, unit="step", leave=False,
              disable=desc is None, dynamic_ncols=True) as bar:
        tic = shown = time.perf_counter()
        for step, (x, y) in enumerate(batches.iterate(state.epoch, state.step), state.step):
            seed_everything(*seed, state.epoch, step)
            if state.lr is None:  # a per-step schedule moves it within the epoch
                state.lr = parts.optimizer.param_groups[0]["lr"]
            targets = y
            if parts.batch_transform is not None:
                x, targets = parts.batch_transform(
                    x, y, generator(*seed, "batch", state.epoch, step))
            loss_sum, correct = train_step(parts, x, targets)
            _note_bad_loss(state, loss_sum, step)
            state.loss_sum += loss_sum
            state.correct += correct
            state.count += len(y)
            state.step = step + 1
            bar.update(1)
            # reading the loss waits for the GPU to finish every queued step: at most once a
            # second, and at the epoch's end, so that its seconds count finished work
            if step == steps - 1 or time.perf_counter() - shown >= 1.0:
                loss = float(state.loss_sum) / state.count
                shown = time.perf_counter()
                bar.set_postfix(loss=f"{loss:.4f}",
                                img_s=f"{state.count / max(shown - tic + state.seconds, 1e-9):.0f}")
            if should_stop() and step + 1 < steps:
                state.seconds += time.perf_counter() - tic
                return False
        state.seconds += time.perf_counter() - tic
    return True


def _note_bad_loss(state: EpochState, loss_sum: torch.Tensor, step: int) -> None:
    bad = ~torch.isfinite(loss_sum) & (state.first_bad_step < 0)
    state.first_bad_step = torch.where(bad, torch.full_like(state.first_bad_step, step),
                                       state.first_bad_step)


def non_finite_loss(bad_step: int | None, epoch: int, saved: bool = True) -> Coco4Error:
    """The error for a NaN or inf loss at ``bad_step`` (None: on another process); ``saved``:
    whether last.pt holds an earlier state of this run."""
    where = f"step {bad_step + 1}" if bad_step is not None else "on another process"
    kept = ("last.pt holds the run as last saved (--save-every)" if saved
            else "no last.pt of this run was saved")
    return Coco4Error(f"the training loss became non-finite at epoch {epoch + 1}, {where}; "
                      f"stopped without saving it ({kept}): lower --lr, or try --no-amp")
