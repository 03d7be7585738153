"""Class balance (train.py --balance): a class-balanced draw of each epoch (``sampler``), or
cross-entropy weighted by inverse class frequency (``loss``). Both are derived from the
training split's labels alone, so a resumed run and every torchrun rank derive the same."""
import torch

from .errors import Coco4Error


def balanced_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``len(labels)`` positions drawn with replacement, each with chance inversely proportional
    to its class's count: every class is equally likely at each draw, and the epoch keeps its
    number of steps. Rare classes repeat within an epoch, common ones are partly left out."""
    counts = torch.bincount(labels)
    return torch.multinomial(1.0 / counts[labels].double(), len(labels), replacement=True,
                             generator=generator)


def inverse_frequency(labels: torch.Tensor, classes: tuple) -> torch.Tensor:
    """Class weights N / (K n_c) for N images of K classes, n_c in class c: each class weighs
    N / K in total. They average 1 over the training images, so an epoch's summed weight is
    its image count, and metrics.csv's train_loss stays on the scale of an unweighted run's."""
    counts = torch.bincount(labels, minlength=len(classes))
    if (counts == 0).any():
        missing = [name for name, n in zip(classes, counts.tolist()) if n == 0]
        raise Coco4Error(f"--balance loss: class {missing[0]!r} has no training image, so its "
                         "weight (one over its count) is undefined; add images of it, or train "
                         "without --balance loss")
    return len(labels) / (len(classes) * counts.float())
