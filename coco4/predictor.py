"""A checkpoint's model rebuilt to predict: the ``Predictor`` (model, classes, input size,
temperature, test-time views), the one way to load it, the options every predicting script
shares (evaluate.py, visualize.py and predict.py; export.py its checkpoint and calibration),
and ``Predictions``, what predicting a labelled list gives (coco4.evaluation makes them)."""
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_model
from .cli import DEVICE_HELP, check_at_least, default_workers, workers_problem
from .data.transforms import pil_eval_transform
from .distributed import DistEnv, pick_device
from .errors import Coco4Error
from .inference import Amp
from .metrics import MetricAccumulator
from .options import option

TTA_MODES = ("none", "flip")


def checkpoint_option():
    return option(Path("checkpoint/best.pt"), "a train.py checkpoint (of a --model-ema run: its "
                  "averaged weights), or the original project's")


def calibration_option():
    return option(True, "divide the logits by the checkpoint's temperature (fitted on the "
                        "held-out validation split); --no-calibration for raw probabilities")


@dataclass(frozen=True)
class PredictorOptions:
    """Which checkpoint predicts, and how images reach it."""

    checkpoint: Path = checkpoint_option()
    device: str = option("auto", DEVICE_HELP)
    amp: bool = option(True, "mixed precision on CUDA (bf16, or fp16 where bf16 is emulated)")
    calibration: bool = calibration_option()
    tta: str = option("none", "test-time augmentation: flip averages the probabilities of each "
                              "image and its mirror (twice the model's work)", choices=TTA_MODES)
    batch_size: int = option(128, "images per prediction batch")
    workers: int = option(help="image-decoding processes", factory=default_workers)
    strict: bool = option(False, "stop on a missing or unreadable image instead of leaving it "
                                 "out")

    def check(self) -> None:
        """The numbers checked before any file is read."""
        check_at_least(self, batch_size=1)
        if workers_problem(self.workers):
            raise Coco4Error(workers_problem(self.workers))


@dataclass
class Predictor:
    """A checkpoint's model, in eval mode on its device, with what predicting needs."""

    model: torch.nn.Module
    classes: list
    image_size: int
    device: torch.device
    amp: Amp
    checkpoint: str
    temperature: float = 1.0  # the logits are divided by it before the softmax
    tta: str = "none"  # "flip": the probabilities of the image and its mirror, averaged
    checkpoint_temperature: float = 1.0  # the checkpoint's, applied or not

    def view_models(self) -> list[torch.nn.Module]:
        """The model once per test-time view of an image: itself, and for ``flip`` itself on
        the mirror image (training's random flips make the mirror an equally likely photo)."""
        return [self.model] + ([Mirrored(self.model)] if self.tta == "flip" else [])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for a batch of images already on the device, every view averaged."""
        with self.amp.autocast():
            views = [m(x).float() for m in self.view_models()]
        return averaged_log_probs(views, self.temperature).exp().cpu()


class Mirrored(torch.nn.Module):
    """A model applied to the left-right mirror of its input (NCHW: the last axis is width)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.flip(-1))


def averaged_log_probs(views: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """log softmax(log(mean over views of softmax(logits)) / T). The probabilities are averaged,
    not the logits: a view that is unsure should not be outvoted by the other's large logits.
    T is applied once, to the average, so that as with one view (where this is
    softmax(logits / T)) it changes no prediction: each view softened first would let T decide
    which class wins where the views disagree. As logits these give the probabilities back, so
    every metric reads them unchanged."""
    log_probs = torch.stack([v.float().log_softmax(1) for v in views])
    averaged = log_probs.logsumexp(0) - math.log(len(views))
    return (averaged / temperature).log_softmax(1)


@dataclass
class Predictions:
    list_path: Path
    image_dir: Path  # where ``files`` are
    files: list
    labels: list
    probs: torch.Tensor  # [N, classes], softmax of the logits divided by the temperature
    metrics: MetricAccumulator  # the same sums that validation during training keeps
    left_out: dict
    raw_metrics: MetricAccumulator  # the same, before the temperature

    @property
    def preds(self) -> list:
        return self.probs.argmax(1).tolist()

    def losses(self) -> torch.Tensor:
        """Each image's loss, -log p(true class): what "most wrong" is ranked by in the pictures
        (clamped, so a probability that underflowed to 0 ranks first instead of giving inf)."""
        labels = torch.tensor(self.labels, dtype=torch.long)
        return -self.probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log()


def load_predictor(checkpoint: str | Path, device: str = "auto", amp: bool = True,
                   calibrated: bool = True) -> Predictor:
    """The model, classes, image size and temperature stored in ``checkpoint`` (any layout),
    ready to use; ``calibrated=False`` leaves the temperature out (raw probabilities)."""
    device = pick_device(device, DistEnv())
    loaded = load_model(checkpoint, device)
    loaded.model.eval()
    if device.type == "cuda":
        loaded.model.to(memory_format=torch.channels_last)  # as the model lays out its input
    return Predictor(loaded.model, loaded.classes, loaded.image_size, device,
                     Amp.for_device(device, amp), loaded.source,
                     loaded.temperature if calibrated else 1.0,
                     checkpoint_temperature=loaded.temperature)


def predictor_for(opts: PredictorOptions) -> Predictor:
    """The predictor a script's options ask for."""
    predictor = load_predictor(opts.checkpoint, opts.device, opts.amp, opts.calibration)
    predictor.tta = opts.tta
    return predictor


@torch.no_grad()
def predict_images(predictor: Predictor, images: Sequence[Image.Image]) -> torch.Tensor:
    """Probabilities for the user's own images (decoded by ``read_rgb``, which is where an
    unreadable file is reported), through the original PIL eval transform."""
    transform = pil_eval_transform(predictor.image_size)
    x = torch.stack([transform(im) for im in images]).to(predictor.device)
    return predictor.predict(x)
