"""Rebuild a classifier from a checkpoint alone and predict a list or the user's own images."""
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_state_into
from .data import UnreadableImage, check_image_dir, read_rgb
from .distributed import DistEnv, pick_device
from .engine import Amp, evaluate
from .fileio import atomic_write_text
from .errors import Coco4Error
from .lists import read_classes, read_list
from .metrics import compute_metrics
from .model import ResNet50Classifier
from .train_data import decode_check, make_batches, unusable_report
from .transforms import model_input, pil_eval_transform


@dataclass
class Predictor:
    model: torch.nn.Module
    classes: list
    image_size: int
    device: torch.device
    amp: Amp
    checkpoint: str


def load_predictor(checkpoint, device="auto", amp=True):
    """The model, classes and image size stored in ``checkpoint`` (original format: defaults)."""
    ckpt = load_checkpoint(checkpoint)
    classes = list(ckpt["classes"])
    model = ResNet50Classifier(len(classes))
    load_state_into(model, ckpt["model"], str(checkpoint))
    device = pick_device(device, DistEnv())
    model.to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # as model_input lays out the batches
    image_size = int(ckpt.get("config", {}).get("image_size", 224))
    return Predictor(model, classes, image_size, device, Amp.for_device(device, amp),
                     str(checkpoint))


@dataclass
class Predictions:
    files: list
    labels: list
    probs: torch.Tensor  # [N, classes], softmax
    left_out: dict

    @property
    def preds(self):
        return self.probs.argmax(1).tolist()


def predict_list(predictor, list_path, image_dir, batch_size=256, data_path="fast",
                 cache_dir=None, workers=0, strict=False, progress=True, log=print):
    """Probabilities for every usable image of a list (unusable ones reported and left out)."""
    check_classes(predictor, Path(list_path))
    image_list = read_list(list_path, len(predictor.classes))
    check_image_dir(image_dir)
    images, bad = decode_check(image_list, image_dir, predictor.image_size, data_path,
                               cache_dir or Path(list_path).parent / "cache", workers, progress)
    report = unusable_report(image_list, bad, strict, log)
    keep = [i for i in range(len(image_list)) if i not in bad]
    batches = make_batches(images, image_list, image_dir, keep, batch_size, predictor.device,
                           predictor.image_size, train=False, seed=0, workers=workers)
    out = evaluate(predictor.model, batches, predictor.amp, progress=progress, desc="predicting")
    return Predictions([image_list.files[i] for i in keep], [image_list.labels[i] for i in keep],
                       out["logits"].softmax(1), report["left_out"])


def check_classes(predictor, list_path):
    """The list's classes (its classes.txt, or the original four) must be the checkpoint's."""
    list_classes = list(read_classes(list_path.parent))
    if list_classes != predictor.classes:
        raise Coco4Error(f"{predictor.checkpoint} predicts {len(predictor.classes)} classes "
                         f"{predictor.classes}, but {list_path} is labelled for "
                         f"{len(list_classes)} classes {list_classes}; use the checkpoint "
                         "trained on these lists, or lists made with its --classes")


@torch.no_grad()
def predict_images(predictor, paths):
    """Probabilities for the user's own image files, through the original PIL eval transform."""
    transform = pil_eval_transform(predictor.image_size)
    try:
        x = torch.stack([transform(read_rgb(p)) for p in paths]).to(predictor.device)
    except FileNotFoundError as e:
        raise Coco4Error(f"image {e.filename} not found") from None
    except UnreadableImage as e:
        raise Coco4Error(f"cannot read image {e}") from None
    with predictor.amp.autocast():
        return predictor.model(model_input(x)).float().softmax(1).cpu()


def write_results(out_dir, predictor, predictions):
    """metrics.json and predictions.csv (atomically); returns the metrics dict."""
    out_dir = Path(out_dir)
    metrics = compute_metrics(predictions.labels, predictions.preds, predictor.classes)
    metrics.update(checkpoint=predictor.checkpoint, left_out=predictions.left_out)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "true_label", "predicted_label"]
                    + [f"prob_{c}" for c in predictor.classes])
    for f, y, p, probs in zip(predictions.files, predictions.labels, predictions.preds,
                              predictions.probs.tolist()):
        writer.writerow([f, predictor.classes[y], predictor.classes[p]]
                        + [f"{q:.6f}" for q in probs])
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())
    return metrics
