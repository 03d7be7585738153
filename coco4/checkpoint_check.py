"""Every field of a loaded checkpoint checked once, before anything is built from it: a damaged
or hand-edited file is a one-line error naming the field, never a traceback, a runaway
allocation (an image size of 100,000 pixels) or predictions of NaN. coco4.checkpoint calls
these for every checkpoint read, whatever reads it (evaluation, prediction, export, --resume,
--weights)."""
import torch

from .config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from .errors import Coco4Error
from .model import ARCHITECTURES


def check_fields(ckpt: dict, path) -> None:
    """The fields a model is rebuilt from: ``model``, ``classes``, ``config`` (``arch``,
    ``image_size``), after the layout is upgraded."""
    problem = _fields_problem(ckpt)
    if problem:
        raise Coco4Error(f"{path} is not a usable coco4 checkpoint: {problem}; the file is "
                         "damaged or edited: use another checkpoint")


def _fields_problem(ckpt: dict) -> str | None:
    missing = [k for k in ("model", "classes", "config") if k not in ckpt]
    if missing:
        return f"it has no {', '.join(missing)}"
    classes, config = ckpt["classes"], ckpt["config"]
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) and c.strip()
                                                         for c in classes):
        return f"classes is {classes!r}, not a list of names"
    if len(classes) < 2 or len(set(classes)) != len(classes):
        return f"classes {list(classes)} are not two or more distinct names"
    if not isinstance(config, dict):
        return f"config is a {type(config).__name__}"
    arch, size = config.get("arch"), config.get("image_size")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        return f"config.arch is {arch!r}, not one of {', '.join(ARCHITECTURES)}"
    if isinstance(size, bool) or not isinstance(size, int) or \
            not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        return f"config.image_size is {size!r}, not a whole number from {MIN_IMAGE_SIZE} to " \
               f"{MAX_IMAGE_SIZE}"
    return None


def check_finite(state: dict, source: str) -> None:
    """Weights that are all finite numbers: a NaN in one makes every prediction NaN."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise Coco4Error(f"{source} holds {bad} weights that are not finite numbers (NaN or "
                             f"inf) in {name}: a run that diverged, or a damaged file; use "
                             "another checkpoint")


def check_format_version(version, path) -> int:
    """The layout's version, a whole number (missing: 1, the first coco4 layout)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise Coco4Error(f"{path} is not a usable coco4 checkpoint: format_version is "
                         f"{version!r}; the file is damaged or edited: use another checkpoint")
    return version
