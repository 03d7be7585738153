"""The one way checkpoints are written (atomically) and read (tensors only, shapes checked).

Formats read: this project's (``format == "coco4"``), the original project's
(``model_state_dict`` / ``optimizer_state_dict`` / ``epoch``, no class names), and, for
``--weights``, torchvision's ImageNet resnet50 state dict.
"""
import io
import pickle
import re
import threading
import platform
from pathlib import Path

import torch

from .errors import Coco4Error
from .fileio import atomic_path
from .lists import DEFAULT_CLASSES
from .model import is_imagenet_state, load_backbone, num_classes_of, state_mismatch

FORMAT = "coco4"
FORMAT_VERSION = 1


def save_checkpoint(path, payload):
    """Write ``payload`` (plain containers of tensors and numbers) to ``path`` atomically."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "versions": library_versions(), **payload}
    # serialise in memory, then write plain bytes: torch's zip writer reports a full disk as
    # an opaque RuntimeError, a plain write as OSError naming the cause
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())


class CheckpointWriter:
    """Writes checkpoints on a background thread, so an epoch of a second or two on a GPU does
    not wait for hundreds of megabytes to reach the disk. At most one write is in flight; a
    failed write is raised at the next ``save`` or ``wait``.
    """

    def __init__(self):
        self._thread, self._error = None, None

    def save(self, path, payload, then=None):
        """Snapshot ``payload`` (CPU copies of every tensor) now; write it, then call ``then``."""
        self.wait()
        snapshot = _cpu_copy(payload)
        self._thread = threading.Thread(target=self._write, args=(path, snapshot, then))
        self._thread.start()

    def _write(self, path, payload, then):
        try:
            save_checkpoint(path, payload)
            if then:
                then()
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _cpu_copy(value):
    """Training goes on mutating parameters and optimizer state in place: copy them now."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return type(value)((k, _cpu_copy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def library_versions():
    import torchvision

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def read_file(path):
    """torch.load with ``weights_only=True``: nothing in the file can run code here."""
    path = Path(path)
    if not path.is_file():
        raise Coco4Error(f"checkpoint {path} not found; train one with `python train.py` or "
                         "place the file there (see README)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise Coco4Error(f"refusing {path}: it holds a pickled Python object "
                             f"({found.group(1)}) beyond tensors and plain containers, and "
                             "loading it could run code; if you trust its source, re-save just "
                             "its state dicts") from None
        raise Coco4Error(f"{path} is not a readable PyTorch checkpoint (the unpickler rejected "
                         "its bytes); was it truncated, or is it another kind of file?") from None
    except Exception as e:  # arbitrary bytes fail in arbitrary ways inside the unpickler
        raise Coco4Error(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}); "
                         "was it truncated by an interrupted download?") from None


def load_checkpoint(path):
    """Read a coco4 or original checkpoint as a dict with at least ``model`` and ``classes``."""
    return _as_checkpoint(read_file(path), path)


def _as_checkpoint(ckpt, path):
    if not isinstance(ckpt, dict):
        raise Coco4Error(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    if ckpt.get("format") == FORMAT:
        return ckpt
    if "model_state_dict" in ckpt:
        # the original project's layout: no class names, the default four in its order
        n = num_classes_of(ckpt["model_state_dict"])
        if n is not None and n != len(DEFAULT_CLASSES):
            raise Coco4Error(f"{path} is an original-format checkpoint for {n} classes "
                             f"(fc.3.weight is {list(ckpt['model_state_dict']['fc.3.weight'].shape)})"
                             f"; without class names only the original {len(DEFAULT_CLASSES)} "
                             "classes can be assumed")
        return {"format": "original", "model": ckpt["model_state_dict"],
                "classes": list(DEFAULT_CLASSES), "epoch": ckpt.get("epoch"), "config": {}}
    if is_imagenet_state(ckpt):
        raise Coco4Error(f"{path} is an ImageNet classifier state dict, not a fine-tuned "
                         "checkpoint; use it with `train.py --weights PATH`")
    raise Coco4Error(f"{path} is not a coco4 or original checkpoint (top-level keys: "
                     f"{sorted(map(str, ckpt))[:6]})")


def load_state_into(model, state, source):
    """``load_state_dict`` with a one-line message saying which key or shape does not fit."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Coco4Error(f"{source} holds no model state dict")
    expected = model.state_dict()
    want, got = num_classes_of(expected), num_classes_of(state)
    if got is not None and want != got:
        raise Coco4Error(f"{source} has {got} classes (fc.3.weight is "
                         f"{list(state['fc.3.weight'].shape)}), expected {want}")
    problem = state_mismatch(expected, state)
    if problem:
        raise Coco4Error(f"{source} does not fit a ResNet-50 classifier: {problem}")
    model.load_state_dict(state)


def load_model_weights(model, path):
    """``--weights PATH``: ImageNet backbone weights, or a whole checkpoint to fine-tune from."""
    state = read_file(path)
    if is_imagenet_state(state):
        load_backbone(model, state, str(path))
        return
    load_state_into(model, _as_checkpoint(state, path)["model"], str(path))
