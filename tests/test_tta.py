"""Test-time augmentation (--tta flip): the probabilities of each image and its mirror,
averaged, in evaluate.py's files and predict.py's rows."""
import json
import math

import numpy as np
import pytest
import torch

from coco4.evaluation import averaged_log_probs, load_predictor

import evaluate
import predict
from conftest import (
    check_against_direct,
    direct_predictions,
    eval_argv,
    read_csv,
    stored_temperature,
)


def test_views_average_probabilities_not_logits():
    # softmax([0, ln 3]) = [1/4, 3/4] and softmax([ln 9, 0]) = [9/10, 1/10]: the mean is
    # [0.575, 0.425]; averaging the logits first would give softmax([ln 9 / 2, ln 3 / 2]) =
    # [0.634, 0.366]
    views = [torch.tensor([[0.0, math.log(3)]]), torch.tensor([[math.log(9), 0.0]])]
    probs = averaged_log_probs(views, 1.0).exp()
    assert probs[0].tolist() == pytest.approx([0.575, 0.425])
    # the temperature divides each view's logits before its softmax: at T = 2,
    # softmax([0, ln 3 / 2]) = [1/(1+sqrt 3), ...] and softmax([ln 3, 0]) = [3/4, 1/4]
    probs = averaged_log_probs(views, 2.0).exp()
    first = 1 / (1 + math.sqrt(3))
    assert probs[0, 0].item() == pytest.approx((first + 0.75) / 2)


def test_one_view_is_the_plain_softmax():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    assert averaged_log_probs([logits], 0.5).exp()[0].tolist() == pytest.approx(
        (logits[0] / 0.5).softmax(0).tolist())


def test_evaluate_tta_flip_averages_the_image_and_its_mirror(demo_data, trained, tmp_path):
    evaluate.main(evaluate.get_args_parser().parse_args(
        eval_argv(demo_data, trained, tmp_path, "--tta", "flip")))
    net, t = load_predictor(trained, "cpu").model.net, stored_temperature(trained)
    image_list, plain = direct_predictions(net, demo_data, 32, t)
    _, mirrored = direct_predictions(net, demo_data, 32, t, mirror=True)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # else this test could not fail
    metrics = check_against_direct(tmp_path, image_list, (plain + mirrored) / 2,
                                   ["bird", "airplane", "train", "boat"])
    assert metrics["tta"] == "flip"
    labels = torch.tensor(image_list.labels)
    nll = -((plain + mirrored) / 2)[torch.arange(len(labels)), labels].log().mean()
    assert metrics["nll"] == pytest.approx(nll.item(), abs=1e-4)


def test_predict_tta_flip_gives_evaluate_probabilities(demo_data, trained, tmp_path):
    evaluate.main(evaluate.get_args_parser().parse_args(
        eval_argv(demo_data, trained, tmp_path / "eval", "--tta", "flip")))
    images = demo_data / "coco" / "images" / "val2017"
    out = tmp_path / "predictions.csv"
    predict.main(predict.get_args_parser().parse_args(
        [str(images), "--checkpoint", str(trained), "--device", "cpu", "--workers", "0",
         "--tta", "flip", "--out", str(out)]))
    classes = ["bird", "airplane", "train", "boat"]
    by_file = {r["file"]: [float(r[f"prob_{c}"]) for c in classes]
               for r in read_csv(tmp_path / "eval" / "predictions.csv")}
    # the folder also holds images the list leaves out: compare the list's
    rows = [r for r in read_csv(out) if r["path"].rsplit("/", 1)[-1] in by_file]
    assert len(rows) == len(by_file)
    got = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    want = np.array([by_file[r["path"].rsplit("/", 1)[-1]] for r in rows])
    assert np.abs(got - want).max() < 1e-4


def test_no_tta_is_recorded_and_is_the_default(demo_data, trained, tmp_path):
    evaluate.main(evaluate.get_args_parser().parse_args(eval_argv(demo_data, trained, tmp_path)))
    assert json.loads((tmp_path / "metrics.json").read_text())["tta"] == "none"
