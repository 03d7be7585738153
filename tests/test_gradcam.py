"""gradcam.png and errors.png: which images they show; and that gradcam.png's maps are
Grad-CAM's at the spec's layer."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from coco4.gradcam import cam_maps, gradcam_picks, gradcam_png
from coco4.metrics import MetricAccumulator
from coco4.plots import worst_errors
from coco4.predictor import Predictions, load_predictor

from conftest import eval_argv


def predictions(probs, labels):
    probs = torch.tensor(probs).reshape(len(labels), 2)  # two classes in these tests
    return Predictions(Path("list.txt"), Path("."), [f"{i}.jpg" for i in range(len(labels))],
                       labels, probs, MetricAccumulator(probs.shape[1]), {},
                       MetricAccumulator(probs.shape[1]))


def test_picks_the_worst_mistakes_then_the_surest_right_ones():
    # true class probabilities: 0.1 (wrong), 0.9 (right), 0.3 (wrong), 0.6 (right), 0.2 (wrong)
    probs = [[0.1, 0.9], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]]
    got = predictions(probs, [0, 0, 0, 0, 0])
    # 4 asked: a quarter (1) right, the surest; 3 wrong by loss: 0 (p 0.1), 4 (0.2), 2 (0.3)
    assert gradcam_picks(got, 4) == [0, 4, 2, 1]
    # more asked than mistakes: the rest are right ones
    assert gradcam_picks(got, 8) == [0, 4, 2, 1, 3]
    # no mistakes at all: right ones only
    assert gradcam_picks(predictions([[0.9, 0.1], [0.2, 0.8]], [0, 1]), 4) == [0, 1]
    assert gradcam_picks(predictions([], []), 4) == []


def test_errors_png_shows_the_surest_mistakes_first_and_counts_them_all():
    # true class probabilities: 0.3 (wrong), 0.9 (right), 0.1 (wrong), 0.45 (wrong), 0.2 (wrong)
    probs = [[0.3, 0.7], [0.9, 0.1], [0.1, 0.9], [0.45, 0.55], [0.2, 0.8]]
    got = predictions(probs, [0, 0, 0, 0, 0])
    assert worst_errors(got, 3) == ([2, 4, 0], 4)  # 0.1, 0.2, 0.3; 0.45 left out, still counted
    assert worst_errors(got, 9) == ([2, 4, 0, 3], 4)
    assert worst_errors(predictions([[0.9, 0.1]], [0]), 3) == ([], 0)
    # equal losses keep the list's order, run after run (an unstable sort scrambles 100 ties)
    assert worst_errors(predictions([[0.3, 0.7]] * 100, [0] * 100), 4) == ([0, 1, 2, 3], 100)


def test_the_loss_that_ranks_mistakes_is_minus_log_the_true_class_probability():
    # errors.png and gradcam.png rank by it; a probability that underflowed to 0 ranks first
    got = predictions([[0.25, 0.75], [0.9, 0.1], [0.0, 1.0]], [0, 1, 0]).losses()
    assert got.tolist() == pytest.approx([1.3862944, 2.3025851, 27.6310211])


def hand_gradcam(model, layer, x, target):
    """Grad-CAM written out: the layer's activations weighted by the spatial mean of the class
    score's gradient, ReLU, resized to the input, scaled to [0, 1]."""
    saved = {}
    hook = layer.register_forward_hook(lambda m, i, out: saved.update(a=out))
    try:
        score = model(x)[0, target]
    finally:
        hook.remove()
    grad, = torch.autograd.grad(score, saved["a"])
    cam = F.relu((grad.mean((2, 3), keepdim=True) * saved["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / cam.max()).detach().numpy()


def test_maps_are_gradcam_at_the_layer_the_spec_names(trained):
    predictor = load_predictor(trained, "cpu")
    # larger than the training size, so layer4's map has more than one cell
    x = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    # each image's predicted class, as gradcam.png asks for: a class with no positive evidence
    # at all has an all-zero map, equal to any other layer's and correlated with nothing
    with torch.no_grad():
        targets = predictor.model(x).argmax(1).tolist()
    maps = cam_maps(predictor, x, targets)
    assert all(m.max() > m.min() for m in maps)
    assert maps.shape == (2, 96, 96)
    net = predictor.model.net
    for k in range(2):
        want = hand_gradcam(predictor.model, net.layer4, x[k:k + 1].float(), targets[k])
        assert np.corrcoef(maps[k].ravel(), want.ravel())[0, 1] > 0.99
        other = hand_gradcam(predictor.model, net.layer3, x[k:k + 1].float(), targets[k])
        assert np.abs(maps[k] - other).max() > 0.1  # else the layer would not matter here


def test_gradcam_png_is_an_image_of_pairs(trained, demo_data, tmp_path):
    from coco4.evaluation import predict_list

    predictor = load_predictor(trained, "cpu")
    got = predict_list(predictor, demo_data / "data" / "annotation_val.txt",
                       demo_data / "coco" / "images" / "val2017", progress=False)
    path = gradcam_png(predictor, got, tmp_path / "gradcam.png", 4)
    with Image.open(path) as im:
        assert im.format == "PNG"
        # two rows of two (image, map) pairs: wider than tall, and more than thumbnails
        assert im.width > 600 and 300 < im.height < im.width
        im.verify()


def test_without_grad_cam_visualize_says_it_skipped_the_picture(demo_data, trained, tmp_path,
                                                                monkeypatch, capsys):
    import builtins

    from coco4.errors import Coco4Error

    import visualize

    real_import = builtins.__import__

    def no_grad_cam(name, *args, **kwargs):
        if name.startswith("pytorch_grad_cam"):
            raise ImportError("No module named 'pytorch_grad_cam'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_grad_cam)
    with pytest.raises(Coco4Error, match=r"^gradcam.png needs the grad-cam package .*"
                                         r"pip install grad-cam$"):
        cam_maps(load_predictor(trained, "cpu"), torch.zeros(1, 3, 32, 32), [0])
    written = visualize.main(visualize.get_args_parser().parse_args(
        eval_argv(demo_data, trained, tmp_path, "--num", "2")))
    assert "gradcam.png" not in {Path(p).name for p in written}
    assert "samples.png" in {Path(p).name for p in written}
    assert "skipped gradcam.png: gradcam.png needs the grad-cam package" in capsys.readouterr().out


def test_each_map_is_for_the_predicted_class(trained, demo_data, tmp_path, monkeypatch):
    import coco4.gradcam
    from coco4.evaluation import predict_list

    predictor = load_predictor(trained, "cpu")
    got = predict_list(predictor, demo_data / "data" / "annotation_val.txt",
                       demo_data / "coco" / "images" / "val2017", progress=False)
    asked = []
    real = coco4.gradcam.cam_maps
    monkeypatch.setattr(coco4.gradcam, "cam_maps",
                        lambda p, x, targets: asked.extend(targets) or real(p, x, targets))
    gradcam_png(predictor, got, tmp_path / "gradcam.png", 6)
    picks = gradcam_picks(got, 6)
    assert asked == [int(got.probs[i].argmax()) for i in picks]
    assert any(asked[k] != got.labels[i] for k, i in enumerate(picks))  # a mistake is shown
