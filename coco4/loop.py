"""The inner loops: one training step, one training epoch, one validation pass.

Per-step figures stay on the device and are read at the epoch's end and when the progress bar
refreshes (at most once a second), so on one GPU the host runs ahead of the queued steps.
Under torchrun the ranks agree on a stop request after every step, one small all-reduce.
"""
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from .data.loaders import Batches
from .errors import Coco4Error
from .metrics import MetricAccumulator
from .seeding import seed_everything


@dataclass
class Amp:
    """One AMP path: an autocast that is a no-op where AMP is off, and a scaler built with
    ``enabled=``."""

    device_type: str
    dtype: torch.dtype = None

    @classmethod
    def for_device(cls, device: torch.device, enabled: bool) -> "Amp":
        if not enabled or device.type != "cuda":
            return cls(device.type)  # CPU trains in fp32: bf16 autocast there is slow and lossy
        # bf16 only where the GPU computes in it (Ampere and later); torch also counts V100s
        # and T4s, which emulate it slowly, and which run fp16 with a GradScaler at full speed
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return cls("cuda", torch.bfloat16 if bf16 else torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


@dataclass
class TrainingParts:
    """The model being trained and everything that updates it, built once per run: what a
    training step needs."""

    model: nn.Module  # possibly wrapped by DistributedDataParallel or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    criterion: nn.CrossEntropyLoss  # reduction="sum", so micro-batches add up; a weight
    # (--balance loss) then sums each image's loss times its class's weight
    amp: Amp
    scaler: torch.amp.GradScaler
    accum_steps: int = 1


def train_step(parts: TrainingParts, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """One optimizer step over batch (x, y), in ``parts.accum_steps`` nearly equal micro-batches.

    Each micro-batch's summed loss is divided by the whole batch's size (with class weights,
    its images' summed weight, as cross_entropy's reduction="mean" divides), so the accumulated
    gradient is the full batch's mean gradient (BatchNorm statistics aside, which see one
    micro-batch at a time). Under torchrun each rank divides by its own share's, and DDP
    averages the ranks: with class weights that is the mean of the ranks' weighted means.
    Returns the batch's summed (weighted) loss and number correct, on the device.
    """
    model = parts.model
    weight = parts.criterion.weight
    total = len(y) if weight is None else weight[y].sum()
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
        correct += (logits.argmax(1) == yb).sum()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
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
        return state

    def to_dict(self) -> dict:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct),
                "count": self.count, "seconds": self.seconds}


def train_one_epoch(parts: TrainingParts, batches: Batches, state: EpochState, seed: tuple,
                    should_stop: Callable[[], bool] = lambda: False,
                    desc: str | None = None) -> bool:
    """Train over ``batches.iterate(state.epoch, state.step)``, adding to ``state``.

    Each step reseeds the global RNG (dropout) from (``seed``, epoch, step): a run resumed at
    step k draws what an uninterrupted run drew there, with no RNG state to save.

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
            loss_sum, correct = train_step(parts, x, y)
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
    kept = "last.pt holds the state before it" if saved else "nothing of this run was saved"
    return Coco4Error(f"the training loss became non-finite at epoch {epoch + 1}, {where}; "
                      f"stopped without saving it ({kept}): lower --lr, or try --no-amp")


def validate(model: nn.Module, batches: Batches, amp: Amp, num_classes: int,
             desc: str | None = None
             ) -> tuple[MetricAccumulator, torch.Tensor, torch.Tensor]:
    """The metric sums over ``batches`` (on the device, for torchrun's all-reduce), and
    ``predict_logits``'s logits and labels."""
    metrics = MetricAccumulator(num_classes, batches.plan.device)
    logits, labels = predict_logits(model, batches, amp, num_classes, desc, metrics.update)
    return metrics, logits, labels


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Batches, amp: Amp, num_classes: int,
                   desc: str | None = None,
                   on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and labels over ``batches`` (epoch 0's order: the list's, for evaluation
    batches), on the CPU, in eval mode; ``on_batch(logits, labels)`` sees each batch on the
    device first. A progress bar is shown when ``desc`` is given."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in tqdm(batches.iterate(0), total=len(batches), desc=desc, leave=False,
                     disable=desc is None, unit="step"):
        with amp.autocast():
            logits = model(x).float()
        if on_batch is not None:
            on_batch(logits, y)  # on the device: the GPU never waits for the host
        all_logits.append(logits)
        all_labels.append(y)
    if not all_logits:
        return torch.zeros(0, num_classes), torch.zeros(0, dtype=torch.long)
    return torch.cat(all_logits).cpu(), torch.cat(all_labels).cpu()
