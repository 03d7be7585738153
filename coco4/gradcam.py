"""Why the model decided: Grad-CAM maps (Selvaraju et al. 2017) over the images it got most
wrong and a few it got right, at the layer the architecture's spec names (``cam_layer``).

The maps come from the ``grad-cam`` package (pytorch-grad-cam), not hand-written hooks: it is
well kept, and its hooks are released when its context ends. A map shows where the evidence for
the *predicted* class lies, so a wrong prediction shows what the model mistook for that class.
"""
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps

from .data.images import read_rgb
from .data.transforms import pil_eval_transform
from .errors import Coco4Error
from .model import unwrap
from .plots import image_grid_figure, save
from .predictor import Predictions, Predictor


def gradcam_picks(predictions: Predictions, num: int) -> list[int]:
    """Up to ``num`` images: the wrong ones with the highest loss first, then at least a
    quarter (one at the least) of right ones, the most confident first."""
    labels = torch.tensor(predictions.labels, dtype=torch.long)
    if not len(labels):
        return []
    loss = predictions.losses()
    right = predictions.probs.argmax(1) == labels
    by_loss = loss.argsort(descending=True)
    wrong_first = by_loss[~right[by_loss]].tolist()
    right_first = by_loss.flip(0)[right[by_loss.flip(0)]].tolist()
    n_right = min(len(right_first), max(1, num // 4), num)
    n_wrong = min(len(wrong_first), num - n_right)
    n_right = min(len(right_first), num - n_wrong)  # fewer mistakes than asked: more right ones
    return wrong_first[:n_wrong] + right_first[:n_right]


def missing() -> str | None:
    """Why gradcam.png cannot be drawn on this machine (no grad-cam package), or None."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError as e:
        return f"gradcam.png needs the grad-cam package ({e}); pip install grad-cam"
    return None


def cam_maps(predictor: Predictor, images: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """[N, H, W] maps in [0, 1] of where ``images`` (uint8 NCHW at the predictor's input size)
    hold evidence for class ``targets[i]``."""
    if why := missing():
        raise Coco4Error(why)
    # imported here: grad-cam pulls in OpenCV, which only this picture needs
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = unwrap(predictor.model)
    layer = model.net.get_submodule(model.spec.cam_layer)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(images.float().to(predictor.device),
                   [ClassifierOutputTarget(int(t)) for t in targets])


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The map in the jet colormap laid over the image (HxWx3 uint8), as floats in [0, 1]."""
    heat = colormaps["jet"](cam)[..., :3]
    return 0.5 * image / 255 + 0.5 * heat


def gradcam_png(predictor: Predictor, predictions: Predictions, out: str | Path,
                num: int) -> Path:
    """gradcam.png: each picked image beside its map for the predicted class."""
    picks = gradcam_picks(predictions, num)
    transform = pil_eval_transform(predictor.image_size)
    images = torch.stack([transform(read_rgb(predictions.image_dir / predictions.files[i]))
                          for i in picks]) if picks else torch.zeros(0)
    preds = predictions.probs.argmax(1)
    maps = cam_maps(predictor, images, preds[picks].tolist()) if picks else []
    tiles, titles, colors = [], [], []
    for k, i in enumerate(picks):
        image = images[k].permute(1, 2, 0).numpy()
        y, p = predictions.labels[i], int(preds[i])
        tiles += [image, overlay(image, maps[k])]
        titles += [f"true {predictor.classes[y]}\n{predictions.files[i]}",
                   f"evidence for {predictor.classes[p]}\n({predictions.probs[i, p]:.0%})"]
        colors += ["tab:green" if p == y else "tab:red"] * 2
    return save(image_grid_figure(tiles, titles, cols=4, colors=colors, suptitle=(
        f"Grad-CAM at {unwrap(predictor.model).spec.cam_layer}: the most wrong (red) and most "
        f"confident right (green) of {len(picks)} images")), out)
