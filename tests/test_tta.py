"""Test-time augmentation (--tta flip): the probabilities of each image and its mirror,
averaged, in evaluate.py's files and predict.py's rows."""
import json
import math

import numpy as np
import pytest
import torch

from coco4.checkpoint import read_file, save_checkpoint
from coco4.predictor import averaged_log_probs, load_predictor

import evaluate
import predict
from conftest import (
    at_temperature,
    check_against_direct,
    direct_predictions,
    eval_argv,
    read_csv,
)


def test_views_average_probabilities_not_logits():
    # softmax([0, ln 3]) = [1/4, 3/4] and softmax([ln 9, 0]) = [9/10, 1/10]: the mean is
    # [0.575, 0.425]; averaging the logits first would give softmax([ln 9 / 2, ln 3 / 2]) =
    # [0.634, 0.366]
    views = [torch.tensor([[0.0, math.log(3)]]), torch.tensor([[math.log(9), 0.0]])]
    probs = averaged_log_probs(views, 1.0).exp()
    assert probs[0].tolist() == pytest.approx([0.575, 0.425])
    # the temperature divides the average's logs once: at T = 2, softmax(log([0.575, 0.425]) / 2)
    # = [sqrt 0.575, sqrt 0.425] / their sum
    probs = averaged_log_probs(views, 2.0).exp()
    first = math.sqrt(0.575) / (math.sqrt(0.575) + math.sqrt(0.425))
    assert probs[0, 0].item() == pytest.approx(first)


def test_the_temperature_changes_no_prediction_of_averaged_views():
    # views that disagree: their mean probabilities are [0.31, 0.44, 0.25], so class 1 wins;
    # each view softened by T = 3 before the mean would give [0.40, 0.31, 0.29], class 0
    views = [torch.tensor([[6.0, -4.0, 6.0]]), torch.tensor([[2.0, 4.0, -2.0]])]
    for t in (0.3, 1.0, 3.0, 10.0):
        assert averaged_log_probs(views, t).argmax(1).item() == 1, t


def test_one_view_is_the_plain_softmax():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    assert averaged_log_probs([logits], 0.5).exp()[0].tolist() == pytest.approx(
        (logits[0] / 0.5).softmax(0).tolist())


def test_evaluate_tta_flip_averages_the_image_and_its_mirror(demo_data, trained, tmp_path):
    # a temperature far from 1 (the shared checkpoint's fit gives 1), or it could not matter
    ckpt = read_file(trained)
    ckpt["temperature"] = t = 2.5
    save_checkpoint(tmp_path / "t.pt", ckpt)
    evaluate.main(evaluate.get_args_parser().parse_args(
        eval_argv(demo_data, tmp_path / "t.pt", tmp_path, "--tta", "flip")))
    net = load_predictor(trained, "cpu").model.net
    image_list, plain = direct_predictions(net, demo_data, 32)
    _, mirrored = direct_predictions(net, demo_data, 32, mirror=True)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # else this test could not fail
    # the mean of the raw probabilities, then the temperature: at power 1/T, renormalised
    expected = at_temperature((plain + mirrored) / 2, t)
    metrics = check_against_direct(tmp_path, image_list, expected,
                                   ["bird", "airplane", "train", "boat"])
    assert metrics["tta"] == "flip"
    labels = torch.tensor(image_list.labels)
    nll = -expected[torch.arange(len(labels)), labels].log().mean()
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
