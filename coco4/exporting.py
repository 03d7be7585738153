"""export.py's work: the whole classifier as one graph (uint8 RGB pixels in, class
probabilities out, normalisation inside) in ONNX or TorchScript, with what a caller needs to
know in the file, and a parity check of the exported file against PyTorch on real inputs.

ONNX goes through torch's dynamo exporter (``torch.onnx.export(dynamo=True)``): the TorchScript-
based one is deprecated and slated for removal, and both export this network alike, so the
one with a future is the one used and tested. TorchScript is offered for C++ (libtorch)
callers; torch marks it deprecated too."""
import contextlib
import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.images import probe
from .data.lists import read_list
from .data.transforms import pil_eval_transform, precrop_size
from .errors import Coco4Error, GateFailed, first_line
from .fileio import atomic_path, check_outputs_are_not_inputs, check_writable
from .image_files import find_images
from .options import option
from .predictor import Predictor, calibration_option, checkpoint_option, load_predictor

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT, OUTPUT = "images", "probs"
METADATA_FILE = "coco4.json"  # TorchScript's extra file holding the metadata


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path = checkpoint_option()
    format: str = option("onnx", "onnx (for ONNX Runtime, OpenCV and other runtimes) or "
                                 "torchscript (for libtorch)", choices=tuple(FORMATS))
    out: Path | None = option(None, "the file to write (default: beside the checkpoint, as "
                                    "NAME.onnx or NAME.torchscript.pt)")
    overwrite: bool = option(False, "replace an existing --out")
    verify: Path | None = option(None, "export nothing: check this exported file against the "
                                       "checkpoint")
    list: Path | None = option(None, "parity images: an image list (with --images, its "
                                     "folder)")
    images: Path | None = option(None, "parity images: a folder (or the folder of --list's "
                                       "images; default: generated ones)")
    num_images: int = option(16, "parity images used")
    calibration: bool = calibration_option()
    atol: float = option(1e-4, "largest probability difference the parity check accepts")


class Probabilities(torch.nn.Module):
    """The classifier with its temperature and the softmax: what a caller outside PyTorch
    wants back."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.model, self.temperature = predictor.model, predictor.temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.model(images) / self.temperature).softmax(1)


def metadata(predictor: Predictor) -> dict[str, str]:
    """What a caller must know, as strings (ONNX metadata_props hold strings)."""
    side = precrop_size(predictor.image_size)
    return {"classes": json.dumps(predictor.classes),
            "input_size": str(side),
            "input": f"{INPUT}: uint8 RGB, NCHW, [batch, 3, {side}, {side}]; any batch size",
            "preprocessing": f"decode as RGB (applying the EXIF orientation), resize the whole "
                             f"image to {side}x{side} (aspect ratio not kept, no crop), bilinear "
                             f"with antialiasing as PIL's Image.resize; no normalisation: it is "
                             f"inside the graph",
            "output": f"{OUTPUT}: float32 [batch, {len(predictor.classes)}], class "
                      f"probabilities in the order of 'classes'",
            "arch": predictor.model.spec.name,
            "temperature": repr(predictor.temperature),
            "source_checkpoint": str(predictor.checkpoint)}


def example_input(predictor: Predictor, n: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` generated images at the model's input size: smooth colour fields (random 4x4
    pixels, scaled up) with a little noise, nearer to photos than uniform noise is."""
    side = precrop_size(predictor.image_size)
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    images = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear")
    images += torch.randn(images.shape, generator=g) * 8
    return images.clamp(0, 255).to(torch.uint8)


def export(predictor: Predictor, fmt: str, out: Path) -> None:
    """Write ``predictor``'s model, on the CPU in fp32, to ``out`` atomically."""
    model = Probabilities(predictor).cpu().float().eval()
    data = (_onnx_bytes if fmt == "onnx" else _torchscript_bytes)(model, predictor)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)


def _onnx_bytes(model: torch.nn.Module, predictor: Predictor) -> bytes:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(model, (example_input(predictor),), dynamo=True,
                                    verbose=False, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={"images": {0: batch}})
    except Exception as e:  # the exporter fails in many ways: one line, not pages
        raise Coco4Error(f"ONNX export failed: {first_line(e)}") from None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(predictor))
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet_torchscript():
    """Without torch's notice that TorchScript is deprecated (said once, in the README), given
    as a FutureWarning or, in other torch versions, a DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _torchscript_bytes(model: torch.nn.Module, predictor: Predictor) -> bytes:
    buf = io.BytesIO()
    with _quiet_torchscript():
        traced = torch.jit.trace(model, example_input(predictor))
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(
            metadata(predictor))})
    return buf.getvalue()


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """Probabilities from the exported file alone: ONNX Runtime, or the loaded TorchScript."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT], {INPUT: images.numpy()})[0]
    with _quiet_torchscript():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images).numpy()


def file_format(path: Path) -> str:
    """A file's format by its content: TorchScript files are zip archives, ONNX ones are not."""
    with open(path, "rb") as f:
        return "torchscript" if f.read(4) == b"PK\x03\x04" else "onnx"


def _is_training_checkpoint(path: Path) -> bool:
    """torch.save's zip archive: a data.pkl and no TorchScript code/ folder."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return (any(n.endswith("/data.pkl") for n in names)
            and not any("/code/" in n for n in names))


def read_metadata(path: Path, fmt: str) -> dict:
    """The metadata an export wrote; a file export.py did not write is a one-line error."""
    if _is_training_checkpoint(path):  # torch.jit.load's words for it would say "corrupted"
        raise Coco4Error(f"{path} is a training checkpoint, not a model export.py wrote; "
                         f"export it with: python export.py --checkpoint {path}")
    try:
        meta = _metadata(path, fmt)
    except Exception as e:  # a foreign model, a damaged file
        raise Coco4Error(f"{path} is not a model export.py wrote ({first_line(e)}); export "
                         "one with export.py") from None
    missing = [k for k in ("classes", "input", "preprocessing", "output") if k not in meta]
    if missing:
        raise Coco4Error(f"{path} has no {', '.join(missing)} in its metadata: not a model "
                         "export.py wrote; export one with export.py")
    return meta


def _metadata(path: Path, fmt: str) -> dict:
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    extra = {METADATA_FILE: ""}
    with _quiet_torchscript():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE])


@dataclass
class Parity:
    images: int
    max_abs_diff: float
    top1_disagree: int  # images whose top-1 class differs

    def passed(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.top1_disagree == 0

    def __str__(self):
        return (f"parity on {self.images} images: max |probability difference| "
                f"{self.max_abs_diff:.2e}; top-1 class "
                + ("agrees on every image" if not self.top1_disagree
                   else f"differs on {self.top1_disagree}"))


@torch.no_grad()
def parity(predictor: Predictor, path: Path, fmt: str, images: torch.Tensor) -> Parity:
    """The exported file against what predict.py gives for ``images`` (preprocessed as it
    does): the loaded predictor itself, its temperature included, not the wrapper that was
    exported, which could not see a temperature left out of its own graph."""
    reference = predictor.predict(images.to(predictor.device)).numpy()
    try:
        got = run_exported(path, fmt, images)
    except Exception as e:  # e.g. an input size other than this checkpoint's
        raise GateFailed(f"{path} does not run on {predictor.checkpoint}'s input "
                         f"({first_line(e)}): it was not exported from that "
                         "checkpoint") from None
    if got.shape != reference.shape or not np.isfinite(got).all():
        return Parity(len(images), float("inf"), len(images))
    return Parity(len(images), float(np.abs(got - reference).max()),
                  int((got.argmax(1) != reference.argmax(1)).sum()))


def check_made_from(meta: dict, predictor: Predictor, path: Path) -> None:
    """An export of other classes, or with another temperature, named as such rather than
    as a parity figure."""
    classes = json.loads(meta["classes"])
    if classes != predictor.classes:
        raise GateFailed(f"{path} was exported for {len(classes)} classes {classes}, but "
                         f"{predictor.checkpoint} predicts {len(predictor.classes)} "
                         f"{predictor.classes}: it was not exported from that checkpoint")
    temperature = float(meta.get("temperature", predictor.temperature))
    if temperature != predictor.temperature:
        hint = (" (exported with --no-calibration: verify with --no-calibration)"
                if temperature == 1.0 else "")
        raise GateFailed(f"{path} holds the temperature {temperature:g}, but {predictor.checkpoint}"
                         f" is applied at {predictor.temperature:g}{hint}")


def parity_images(opts: ExportOptions, image_size: int) -> torch.Tensor:
    """Up to --num-images decodable images from --list/--images, as the model's input."""
    if opts.list and not opts.images:
        raise Coco4Error("--list needs --images, the folder its file names are in")
    if opts.list:
        paths = [opts.images / f for f in read_list(opts.list).files]
    else:
        paths = find_images([str(opts.images)])
    transform, images = pil_eval_transform(image_size), []
    for path in paths:
        image, _ = probe(path)
        if image is not None:
            images.append(transform(image))
        if len(images) == opts.num_images:
            break
    if not images:
        raise Coco4Error(f"no readable images in {opts.list or opts.images} for the parity check")
    return torch.stack(images)


def output_path(opts: ExportOptions) -> Path:
    if opts.verify:
        if not opts.verify.is_file():
            raise Coco4Error(f"--verify {opts.verify}: no such file")
        return opts.verify
    out = opts.out or opts.checkpoint.with_name(opts.checkpoint.stem + FORMATS[opts.format])
    check_writable(out.parent)
    if out.exists() and not out.is_file():
        raise Coco4Error(f"--out {out} is not a regular file; give a file name")
    if out.exists() and not opts.overwrite:
        raise Coco4Error(f"{out} exists; choose another --out, or pass --overwrite")
    check_outputs_are_not_inputs([("--out", out)], [
        ("--checkpoint", opts.checkpoint), *([("--list", opts.list)] if opts.list else [])])
    return out


def export_checkpoint(opts: ExportOptions) -> dict:
    """Export (or with ``verify``, only check) as the options say; a failed parity check is
    GateFailed (exit 1). Returns the file, its format and the parity figures."""
    if opts.num_images < 1:
        raise Coco4Error(f"--num-images must be at least 1, got {opts.num_images}")
    if not 0 <= opts.atol < 1:  # a probability differs by less than 1: a larger one never fails
        raise Coco4Error(f"--atol must be 0 or more and below 1, got {opts.atol}")
    out = output_path(opts)
    # a file to verify says its format by its content; an export writes the one asked for
    fmt = file_format(out) if opts.verify else opts.format
    predictor = load_predictor(opts.checkpoint, "cpu", amp=False, calibrated=opts.calibration)
    images = (parity_images(opts, predictor.image_size) if opts.list or opts.images
              else example_input(predictor, opts.num_images))
    if not opts.verify:
        print(f"exporting {opts.checkpoint} to {fmt} (about 20 s for ResNet-50 on 2 cores) ...")
        export(predictor, fmt, out)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    meta = read_metadata(out, fmt)
    print(f"input {meta['input']}\npreprocessing: {meta['preprocessing']}\n"
          f"output {meta['output']}; classes {meta['classes']}")
    check_made_from(meta, predictor, out)
    result = parity(predictor, out, fmt, images)
    print(result)
    if not result.passed(opts.atol):
        raise GateFailed(f"{out} fails the parity check against {opts.checkpoint} "
                         f"(--atol {opts.atol:g}): {result}")
    return {"out": str(out), "format": fmt, "parity": result}
