"""One training epoch, one evaluation pass: explicit arguments, no hidden state.

Per-step figures stay on the device and are read at the epoch's end and when the progress bar
refreshes (at most once a second), so on one GPU the host runs ahead of the queued steps.
Under torchrun the ranks agree on a stop request after every step, one small all-reduce.
"""
import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import Coco4Error
from .seeding import seed_everything
from .transforms import model_input


@dataclass
class Amp:
    """One AMP path: an autocast that is a no-op where AMP is off, and a scaler built with enabled=."""

    device_type: str
    dtype: torch.dtype = None

    @classmethod
    def for_device(cls, device, enabled):
        if not enabled or device.type != "cuda":
            return cls(device.type)  # CPU trains in fp32: bf16 autocast there is slow and lossy
        return cls("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self):
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def train_step(model, optimizer, scaler, amp, x, y, accum_steps):
    """One optimizer step over batch (x, y), in ``accum_steps`` micro-batches.

    Each micro-batch's summed loss is divided by the whole batch's size, so the accumulated
    gradient is the full batch's mean gradient: results do not depend on ``accum_steps``
    (BatchNorm statistics aside, which see one micro-batch at a time).
    Returns the batch's summed loss and number correct, as device tensors.
    """
    micro = math.ceil(len(x) / accum_steps)
    chunks = list(zip(x.split(micro), y.split(micro)))
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i, (xb, yb) in enumerate(chunks):
        # DDP: all-reduce gradients once, on the last micro-batch, not after each
        sync = contextlib.nullcontext() if i == len(chunks) - 1 or not hasattr(model, "no_sync") \
            else model.no_sync()
        with sync:
            with amp.autocast():  # normalised per micro-batch: a whole fp32 batch may not fit
                logits = model(model_input(xb))
            loss = F.cross_entropy(logits.float(), yb, reduction="sum")
            scaler.scale(loss / len(x)).backward()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == yb).sum()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, correct


@dataclass
class EpochState:
    """Running sums of a (possibly interrupted) epoch, kept on the device."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    seconds: float = 0.0
    first_bad_step: torch.Tensor = None

    @classmethod
    def zeros(cls, device):
        return cls(torch.zeros((), device=device, dtype=torch.float64),
                   torch.zeros((), device=device, dtype=torch.long), 0, 0.0,
                   torch.full((), -1, device=device))

    def to_dict(self):
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct),
                "count": self.count, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d, device):
        state = cls.zeros(device)
        state.loss_sum += d["loss_sum"]
        state.correct += d["correct"]
        state.count, state.seconds = d["count"], d["seconds"]
        return state


def train_one_epoch(model, batches, optimizer, scaler, amp, accum_steps, epoch, state, seed,
                    start_step=0, should_stop=lambda: False, desc="", progress=True):
    """Train over ``batches.iterate(epoch, start_step)``, adding to ``state``.

    Each step reseeds the global RNG (dropout) from (``seed``, epoch, step): a run resumed at
    step k draws what an uninterrupted run drew there, with no RNG state to save.

    Returns the index of the next step to run if ``should_stop()`` turned true between steps
    (the caller saves a mid-epoch checkpoint), or None when the epoch completed. The first
    step with a non-finite loss is noted in ``state.first_bad_step``, on the device.
    """
    model.train()
    steps = len(batches)
    with tqdm(total=steps, initial=start_step, desc=desc, unit="step", leave=False,
              disable=not progress, dynamic_ncols=True) as bar:
        tic = shown = time.perf_counter()
        for step, (x, y) in enumerate(batches.iterate(epoch, start_step), start=start_step):
            seed_everything(*seed, epoch, step)
            loss_sum, correct = train_step(model, optimizer, scaler, amp, x, y, accum_steps)
            _note_bad_loss(state, loss_sum, step)
            state.loss_sum += loss_sum
            state.correct += correct
            state.count += len(y)
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
                return step + 1
        state.seconds += time.perf_counter() - tic
    return None


def _note_bad_loss(state, loss_sum, step):
    bad = ~torch.isfinite(loss_sum) & (state.first_bad_step < 0)
    state.first_bad_step = torch.where(bad, torch.full_like(state.first_bad_step, step),
                                       state.first_bad_step)


def non_finite_loss(bad_step, epoch):
    """The error for a NaN or inf loss at ``bad_step`` (None: on another process)."""
    where = f"step {bad_step + 1}" if bad_step is not None else "on another process"
    return Coco4Error(f"the training loss became non-finite at epoch {epoch + 1}, {where}; "
                     "stopped without saving it (last.pt holds the previous epoch): lower "
                     "--lr, or try --no-amp")


@torch.no_grad()
def evaluate(model, batches, amp, epoch=0, progress=False, desc="eval"):
    """Summed loss, number correct, count and the logits (on the CPU, in order) over ``batches``."""
    model.eval()
    loss_sum, correct, count, all_logits = 0.0, 0, 0, []
    for x, y in tqdm(batches.iterate(epoch), total=len(batches), desc=desc, leave=False,
                     disable=not progress, unit="step"):
        with amp.autocast():
            logits = model(model_input(x)).float()
        # kept on the device and read once at the end: the GPU never waits for the host
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum").double()
        correct = correct + (logits.argmax(1) == y).sum()
        count += len(y)
        all_logits.append(logits)
    return {"loss_sum": float(loss_sum), "correct": int(correct), "count": count,
            "logits": torch.cat(all_logits).cpu() if all_logits else torch.zeros(0)}
