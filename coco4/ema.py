"""--model-ema: an exponential moving average of the weights, the model a run validates, keeps
in best.pt and hands to evaluate, predict and export.

The average covers every parameter and buffer, BatchNorm's running statistics included, as
``torch.optim.swa_utils.AveragedModel(use_buffers=True)`` with ``get_ema_multi_avg_fn`` does
(tests/test_recipe.py compares them), counting its updates on the host: AveragedModel reads its
count from the device before each update, which would make the host wait for the GPU every step.

The decay is torchvision's references' (--model-ema-decay, adjusted for the batch size and the
number of epochs, so that it means a similar share of the run whatever they are), applied after
every optimizer step; during the LR warmup the average restarts at each step (copies the
weights, up to and including the first step after it), as the references do.
"""
import copy

import torch
from torch import nn


def decay_per_update(decay: float, batch_size: int, epochs: int) -> float:
    """torchvision's adjustment (references/classification/train.py, from pycls): the share
    of the new weights, ``1 - decay``, times the images per update (the global batch, one
    update an optimizer step) over the epochs, at most 1."""
    return 1.0 - min(1.0, (1.0 - decay) * batch_size / epochs)


class ModelEma:
    """The averaged copy of a model (``module``, never trained itself) and its update count."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay  # per update, decay_per_update's
        self.updates = 0  # updates since the last restart (0: the next one copies)

    @torch.no_grad()
    def update(self, model: nn.Module, restart: bool = False) -> None:
        """Average ``model``'s current weights and buffers in (the first update copies them);
        ``restart``: the next update copies again, as torchvision's references reset their
        count after each update of the warmup (so the first after it copies too)."""
        ours, theirs = _tensors(self.module), _tensors(model)
        if self.updates == 0:
            torch._foreach_copy_(ours, theirs)
        else:
            floats = [i for i, t in enumerate(ours) if t.is_floating_point()]
            torch._foreach_lerp_([ours[i] for i in floats], [theirs[i] for i in floats],
                                 1 - self.decay)
            for mine, new in zip(ours, theirs):
                if not mine.is_floating_point():  # BatchNorm's batch counts, as AveragedModel
                    mine.copy_(mine * self.decay + new * (1 - self.decay))
        self.updates = 0 if restart else self.updates + 1

    def state(self) -> dict:
        """What a checkpoint keeps beside the averaged weights (its ``model``)."""
        return {"decay": self.decay, "updates": self.updates}


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]
