"""The model in eval mode over batches: one AMP path shared by training, validation,
evaluation and prediction, the held-out validation pass, and the logits of a whole split."""
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from .data.loaders import Batches
from .metrics import MetricAccumulator


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
