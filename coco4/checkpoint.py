"""All weights I/O: checkpoints written atomically and read as tensors only, starting weights
for training, and every older layout upgraded on reading.

Files hold the torchvision network's state dict (``Classifier.net``), so the original project's
checkpoints and torchvision's own state dicts share one key layout. Layouts read:
- coco4 format version 3 (this one): a mid-epoch run state's running sums in
  ``run["epoch_sums"]``;
- coco4 format version 2: the same under ``run["partial"]``; the architecture in
  ``config["arch"]``, the run state's best score in ``run["best_metric"]``;
- coco4 format version 1 (before the architecture registry): always a ResNet-50;
- the original project's ``model_state_dict`` / ``optimizer_state_dict`` / ``epoch`` (ResNet-50,
  the four default classes, 224 px);
- for ``--weights``, a torchvision ImageNet state dict of the chosen architecture.
"""
import io
import pickle
import platform
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .calibration import stored_temperature
from .checkpoint_check import check_fields, check_finite, check_format_version
from .data.lists import DEFAULT_CLASSES
from .errors import Coco4Error
from .fileio import atomic_path
from .model import DEFAULT_ARCH, Classifier, build_model, unwrap

FORMAT = "coco4"
FORMAT_VERSION = 3


def save_checkpoint(path: str | Path, payload: dict, *copies: str | Path) -> None:
    """Write ``payload`` (plain containers of tensors and numbers) to ``path``, and to each of
    ``copies`` as a file of its own (best.pt beside last.pt), each atomically."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "versions": library_versions(), **payload}
    # serialise in memory, then write plain bytes: torch's zip writer reports a full disk as
    # an opaque RuntimeError, a plain write as OSError naming the cause
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    for target in (path, *copies):
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())


def model_state(model: torch.nn.Module) -> dict:
    """What a checkpoint file holds of a model: the torchvision network's state dict."""
    return unwrap(model).net.state_dict()


class CheckpointWriter:
    """Writes checkpoints on a background thread, so an epoch of a second or two on a GPU does
    not wait for hundreds of megabytes to reach the disk. At most one write is in flight; a
    failed write is raised at the next ``save`` or ``wait``.
    """

    def __init__(self):
        self._thread, self._error = None, None

    def save(self, *files: tuple[Path, dict]) -> None:
        """Snapshot each ``(path, payload)`` (CPU copies of every tensor) now; write them, in
        order, behind the caller."""
        self.wait()
        copies = [(path, snapshot(payload)) for path, payload in files]
        self._thread = threading.Thread(target=self._write, args=(copies,))
        self._thread.start()

    def _write(self, files):
        try:
            for path, payload in files:
                save_checkpoint(path, payload)
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def snapshot(value):
    """A CPU copy of every tensor in ``value``: training goes on mutating parameters and
    optimizer state in place."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return type(value)((k, snapshot(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


def library_versions() -> dict:
    import torchvision

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def read_file(path: str | Path) -> object:
    """torch.load with ``weights_only=True``: nothing in the file can run code here."""
    path = Path(path)
    if not path.exists():
        raise Coco4Error(f"checkpoint {path} not found; train one with train.py or place the "
                         "file there (see README)")
    if not path.is_file():  # a folder; a device such as /dev/zero would be read without end
        raise Coco4Error(f"{path} is {_kind(path)}, not a checkpoint file; give the .pt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the refused global in several phrasings ("Unsupported global: GLOBAL
        # getattr", "unsupported GLOBAL posix.system whose module posix is blocked")
        found = re.search(r"GLOBAL (\S+)", str(e))
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


def _kind(path: Path) -> str:
    return "a folder" if path.is_dir() else "not a regular file (a device, a FIFO or a socket)"


def load_checkpoint(path: str | Path) -> dict:
    """Read any coco4 or original checkpoint, upgraded to the current layout and checked: at
    least ``model``, ``classes`` and ``config`` (with ``arch`` and ``image_size``)."""
    ckpt = _upgrade(_as_checkpoint(read_file(path), path), path)
    check_fields(ckpt, path)
    return ckpt


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(v, torch.Tensor) for v in value.values())


def _as_checkpoint(ckpt, path) -> dict:
    if not isinstance(ckpt, dict):
        raise Coco4Error(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    if ckpt.get("format") == FORMAT:
        return ckpt
    if "model_state_dict" in ckpt:  # the original project's layout
        return {"format": FORMAT, "format_version": 0, "model": ckpt["model_state_dict"],
                "epoch": ckpt.get("epoch")}
    if _is_state_dict(ckpt):
        raise Coco4Error(f"{path} is a bare state dict (an ImageNet classifier?), not a "
                         "fine-tuned checkpoint; use it with `train.py --weights PATH`")
    raise Coco4Error(f"{path} is not a coco4 or original checkpoint (top-level keys: "
                     f"{sorted(map(str, ckpt))[:6]})")


def _upgrade(ckpt: dict, path) -> dict:
    """Bring an older layout up to FORMAT_VERSION, one version at a time."""
    version = check_format_version(ckpt.get("format_version", 1), path)
    if version > FORMAT_VERSION:
        raise Coco4Error(f"{path} is coco4 checkpoint format {version}, newer than this "
                         f"coco4 reads ({FORMAT_VERSION}); update coco4")
    ckpt = dict(ckpt)
    if version == 0:  # original: no class names, no config; its four classes, 224 px
        out = ckpt["model"].get("fc.3.weight") if isinstance(ckpt["model"], dict) else None
        out = out if isinstance(out, torch.Tensor) else None
        if out is not None and out.shape[0] != len(DEFAULT_CLASSES):
            raise Coco4Error(f"{path} is an original-format checkpoint for {out.shape[0]} "
                             f"classes (fc.3.weight is {list(out.shape)}); without class names "
                             f"only the original {len(DEFAULT_CLASSES)} classes can be assumed")
        ckpt.update(classes=list(DEFAULT_CLASSES), config={"image_size": 224})
        version = 1
    if version == 1 and isinstance(ckpt.get("config", {}), dict):  # before the registry
        ckpt["config"] = {"arch": DEFAULT_ARCH, **ckpt.get("config", {})}  # only ResNet-50
        if isinstance(ckpt.get("run"), dict):
            run = dict(ckpt["run"])
            run["best_metric"] = run.pop("best_acc", -1.0)
            ckpt["run"] = run
        version = 2
    if version == 2 and isinstance(ckpt.get("run"), dict) and "partial" in ckpt["run"]:
        run = dict(ckpt["run"])  # the interrupted epoch's sums, under a name that says so
        run["epoch_sums"] = run.pop("partial")
        ckpt["run"] = run
    ckpt["format_version"] = FORMAT_VERSION
    return ckpt


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint file alone, with what its consumers need to know."""

    model: Classifier
    classes: list
    image_size: int
    arch: str
    source: str
    checkpoint: dict  # the upgraded file: optimizer, scheduler, run state, config, ...
    temperature: float = 1.0  # divides the logits (calibration.py); 1 where none is stored


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The one way to get a trained model back: evaluation, pictures, resume, anything later."""
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    classes = list(ckpt["classes"])
    model = build_model(config["arch"], len(classes))
    load_state_into(model, ckpt["model"], str(path))
    return LoadedModel(model.to(device), classes, int(config["image_size"]), config["arch"],
                       str(path), ckpt, stored_temperature(ckpt, str(path)))


def starting_model(arch: str, num_classes: int, weights: str) -> Classifier:
    """The model a new run starts from: ``weights`` is "imagenet", "none" or a local file
    holding torchvision's ImageNet state dict (for offline machines; its 1000-class head is
    dropped), a bare state dict of a fine-tuned network (``model_state``), or any coco4 or
    original checkpoint of the same architecture to fine-tune."""
    model = build_model(arch, num_classes)
    if weights == "imagenet":
        try:
            state = model.spec.weights.get_state_dict(progress=True)
        except (OSError, RuntimeError) as e:  # no network, proxy, or a corrupt download
            raise Coco4Error(f"could not download torchvision's ImageNet weights ({e}); on an "
                             "offline machine save them elsewhere and pass --weights "
                             f"{arch}.pth (see README)") from None
        _load_backbone(model, state, "torchvision ImageNet weights")
    elif weights not in (None, "none"):
        _load_weights_file(model, weights)
    return model


def _load_weights_file(model: Classifier, path) -> None:
    state = read_file(path)
    if _is_state_dict(state):
        if f"{model.spec.head}.3.weight" in state:  # a saved Classifier.net: the head too
            load_state_into(model, state, str(path))
        else:  # torchvision's ImageNet layout: a backbone to start from
            _load_backbone(model, state, str(path))
        return
    ckpt = _upgrade(_as_checkpoint(state, path), path)
    check_fields(ckpt, path)
    if ckpt["config"]["arch"] != model.spec.name:
        raise Coco4Error(f"{path} holds a {ckpt['config']['arch']} model, but this run trains "
                         f"{model.spec.name}; pass --arch {ckpt['config']['arch']} or other "
                         "weights")
    load_state_into(model, ckpt["model"], str(path))


def _load_backbone(model: Classifier, state: dict, source: str) -> None:
    """Load every parameter but the classifier head, which the new task replaces."""
    head = model.spec.head + "."
    backbone = {k: v for k, v in state.items() if not k.startswith(head)}
    expected = {k: v for k, v in model.net.state_dict().items() if not k.startswith(head)}
    problem = _state_mismatch(expected, backbone)
    if problem:
        raise Coco4Error(f"{source} do not fit a {model.spec.name} backbone: {problem}")
    check_finite(backbone, source)
    model.net.load_state_dict(backbone, strict=False)


def load_state_into(model: Classifier, state: dict, source: str) -> None:
    """``load_state_dict`` with a one-line message saying which key or shape does not fit."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Coco4Error(f"{source} holds no model state dict")
    expected = model.net.state_dict()
    out = f"{model.spec.head}.3.weight"  # the head's last Linear: [classes, 256]
    if out in state and state[out].shape != expected[out].shape:
        raise Coco4Error(f"{source} has {state[out].shape[0]} classes ({out} is "
                         f"{list(state[out].shape)}), expected {model.num_classes}")
    problem = _state_mismatch(expected, state)
    if problem:
        raise Coco4Error(f"{source} does not fit a {model.spec.name} classifier: {problem}")
    check_finite(state, source)
    model.net.load_state_dict(state)


def _state_mismatch(expected: dict, state: dict) -> str | None:
    """What of ``state`` does not fit the state dict ``expected`` (keys, shapes), or None."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} is {list(state[k].shape)}, expected {list(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [missing and f"{len(missing)} missing keys ({missing[0]}, ...)",
                unexpected and f"{len(unexpected)} unexpected keys ({unexpected[0]}, ...)",
                wrong and wrong[0]]
    return "; ".join(p for p in problems if p) or None
