"""``coco4.Classifier``: a trained checkpoint from Python (docs/python.md).

    from coco4 import Classifier

    clf = Classifier.load("checkpoint/best.pt")
    for result in clf.predict("photos/"):          # a file, a folder, a glob, a PIL image,
        print(result.path, result.label, result.score)  # a uint8 HxWx3 array, or a list

Exactly predict.py's preprocessing and probabilities: each image decoded as predict.py decodes
it (upright, 8 bits, RGB), the original evaluation transform at the checkpoint's input size,
the checkpoint's temperature, ``tta="flip"`` as --tta flip. An unreadable file is left out
with a ``SkippedImageWarning`` naming it (``strict=True``: an error instead), as predict.py
leaves it out.
"""
import dataclasses
import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.images import UnreadableImage, as_rgb, probe
from .data.transforms import pil_eval_transform
from .errors import Coco4Error
from .image_files import find_images
from .predictor import TTA_MODES, Predictor, load_predictor

ACCEPTED = ("a path, a folder, a glob, a PIL image, a uint8 HxWx3 array, or a list (or an "
            "iterator) of these")


class SkippedImageWarning(UserWarning):
    """An image ``Classifier.predict`` left out: missing, unreadable or not an image."""


@dataclass(frozen=True)
class Prediction:
    """One image's result: the most likely class, its probability, every class's probability
    (in classes.txt's order), and the file it came from (None for an image in memory)."""

    label: str
    score: float
    probs: dict[str, float]
    path: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Classifier:
    """A checkpoint's model ready to classify images; ``Classifier.load`` builds one."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", tta: str = "none",
             calibration: bool = True) -> "Classifier":
        """A train.py checkpoint (its averaged weights for a --model-ema run) or the original
        project's. ``device``: auto (CUDA when present), cpu, cuda, cuda:N or mps;
        ``calibration=False``: the raw probabilities, without the checkpoint's temperature."""
        if not isinstance(path, (str, Path)):
            raise Coco4Error(f"Classifier.load takes a checkpoint's path, got {path!r}")
        if tta not in TTA_MODES:
            raise Coco4Error(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        predictor = load_predictor(path, device, calibrated=calibration)
        predictor.tta = tta
        return cls(predictor)

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    @property
    def image_size(self) -> int:
        return self.predictor.image_size

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def predict(self, x, batch_size: int = 32, strict: bool = False) -> list[Prediction]:
        """One ``Prediction`` per image of ``x``, in order (a folder's images sorted by path,
        as predict.py finds them); unreadable files left out with a warning, or with
        ``strict=True`` an error."""
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
                or batch_size < 1:
            raise Coco4Error(f"batch_size must be a whole number of at least 1, got "
                             f"{batch_size!r}")
        transform = pil_eval_transform(self.image_size)
        results, batch = [], []
        try:  # one image decoded at a time, kept only as its small input tensor
            for path, image in self._decoded(_inputs(x), strict):
                batch.append((path, transform(image)))
                if len(batch) == batch_size:
                    results += self._predict_batch(batch)
                    batch = []
        except RecursionError:  # a list that holds itself
            raise Coco4Error("the lists given nest too deep (or hold themselves): give "
                             f"{ACCEPTED}") from None
        return results + (self._predict_batch(batch) if batch else [])

    def _decoded(self, items: Iterator, strict: bool) -> Iterator[tuple[str | None,
                                                                         Image.Image]]:
        for item in items:
            if isinstance(item, Path):
                image, why = probe(item)
                if image is None:
                    if strict:
                        raise Coco4Error(f"{item}: {why}; strict=True stops on an image that "
                                         "cannot be used")
                    warnings.warn(f"left out {item}: {why}", SkippedImageWarning, stacklevel=3)
                    continue
                yield str(item), image
            else:
                yield None, item

    def _predict_batch(self, batch: list) -> list[Prediction]:
        x = torch.stack([t for _, t in batch]).to(self.device)
        probs = self.predictor.predict(x)
        classes = self.classes
        results = []
        for (path, _), row in zip(batch, probs.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            results.append(Prediction(classes[best], row[best], dict(zip(classes, row)), path))
        return results


def _inputs(x) -> Iterator:
    """``x``'s file paths and RGB images, in order, one at a time: an iterator (a generator
    of decoded images) is consumed as the batches go, so its images are let go as they are
    predicted."""
    if isinstance(x, (list, tuple, Iterator)):
        for part in x:
            yield from _inputs(part)
    elif isinstance(x, (str, Path)):
        yield from find_images([str(x)])
    elif isinstance(x, Image.Image):
        yield _rgb(x, "a PIL image")
    elif isinstance(x, np.ndarray):
        yield _rgb(_array_image(x), "an array")
    else:
        raise Coco4Error(f"cannot classify a {type(x).__name__}: give {ACCEPTED}")


def _array_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise Coco4Error(f"an array must be uint8 HxWx3 (RGB), got {array.dtype} of shape "
                         f"{array.shape}")
    return Image.fromarray(array, "RGB")


def _rgb(image: Image.Image, what: str) -> Image.Image:
    if 0 in image.size:
        raise Coco4Error(f"{what} of {image.size[0]}x{image.size[1]} pixels: no pixels to "
                         "classify")
    try:
        return as_rgb(image, what)
    except UnreadableImage as e:
        raise Coco4Error(str(e)) from None
    except (ValueError, OSError) as e:  # a closed image, a mode PIL cannot convert ("La")
        raise Coco4Error(f"{what} that cannot be turned into RGB pixels ({e})") from None
