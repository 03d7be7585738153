"""Temperature scaling: the fit against a search with scikit-learn's log loss, the temperature
each checkpoint stores, and every consumer applying it (or not, with --no-calibration)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import log_loss

from coco4.calibration import fit_temperature
from coco4.checkpoint import load_model, save_checkpoint
from coco4.data.prepare import prepare_train_data
from coco4.distributed import DistEnv
from coco4.errors import Coco4Error
from coco4.inference import validate
from coco4.metrics import MetricAccumulator
from coco4.model import build_model
from coco4.predictor import load_predictor
from coco4.trainer import fit

import evaluate
import predict
from conftest import at_temperature, direct_predictions, eval_argv, read_csv, train_args


def sklearn_nll(logits, labels, t):
    return log_loss(labels, (logits / t).softmax(1).numpy(), labels=list(range(logits.shape[1])))


def test_the_fit_finds_the_temperature_an_overconfident_model_was_given():
    """Labels drawn from softmax(z) are calibrated for z by construction; a model that outputs
    3z is overconfident by exactly T = 3."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 4, generator=g, dtype=torch.float64) * 1.5
    labels = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    t = fit_temperature(3 * z, labels)
    assert t == pytest.approx(3, rel=0.08)
    # the NLL is at its minimum there, by scikit-learn's arithmetic on a fine grid around it
    grid = np.exp(np.linspace(np.log(t) - 0.2, np.log(t) + 0.2, 81))
    best = grid[np.argmin([sklearn_nll(3 * z, labels, g_) for g_ in grid])]
    assert t == pytest.approx(best, rel=0.01)
    assert fit_temperature(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) == 1.0
    # every held-out image right: the NLL falls without end as T shrinks, which says nothing
    # about new images; T stays 1 rather than 0.05, which would make every prediction certain
    assert fit_temperature(5 * torch.eye(4).repeat(10, 1), torch.arange(4).repeat(10)) == 1.0
    # labels that ignore the logits: the NLL falls as T grows without end (towards uniform
    # probabilities), a degenerate set, not a calibration: T stays 1, not 20 or more
    sure = 10 * torch.nn.functional.one_hot(torch.randint(0, 4, (400,), generator=g), 4)
    assert fit_temperature(sure.double(), torch.randint(0, 4, (400,), generator=g)) == 1.0


def test_a_checkpoint_gives_back_its_temperature(tmp_path):
    """What a consumer divides by: the stored temperature, or 1 for a file without one."""
    net = build_model("resnet18", 4).net.state_dict()
    common = {"model": net, "classes": ["bird", "airplane", "train", "boat"],
              "config": {"arch": "resnet18", "image_size": 32}}
    save_checkpoint(tmp_path / "with.pt", {**common, "temperature": 2.5})
    save_checkpoint(tmp_path / "without.pt", common)
    assert load_model(tmp_path / "with.pt").temperature == 2.5
    assert load_predictor(tmp_path / "with.pt", "cpu").temperature == 2.5
    assert load_model(tmp_path / "without.pt").temperature == 1.0


@pytest.fixture(scope="module")
def calibrated_run(larger_data, tmp_path_factory):
    """A run on the larger data set, whose held-out split has about 40 images: a trained
    checkpoint and the configuration that reproduces its split."""
    cfg = train_args(larger_data, tmp_path_factory.mktemp("calibration") / "run", epochs=4)
    fit(cfg, progress=False)
    return larger_data, cfg


def test_each_checkpoint_stores_a_temperature_that_does_not_worsen_the_held_out_ece(
        calibrated_run):
    root, cfg = calibrated_run
    best = torch.load(Path(cfg.output_dir) / "best.pt", weights_only=True)
    last = torch.load(Path(cfg.output_dir) / "last.pt", weights_only=True)
    assert 0.05 <= best["temperature"] <= 20 and 0.05 <= last["temperature"] <= 20
    # the held-out split again, and best.pt's logits on it
    data = prepare_train_data(cfg.data_spec, DistEnv(), torch.device("cpu"), False, lambda m: None)
    predictor = load_predictor(Path(cfg.output_dir) / "best.pt", "cpu")
    _, logits, labels = validate(predictor.model, data.val, predictor.amp, 4)
    assert len(labels) >= 30
    t = best["temperature"]
    nll = lambda s: sklearn_nll(logits.double(), labels.numpy(), s)  # noqa: E731
    assert nll(t) <= min(nll(t * 1.05), nll(t / 1.05), nll(1.0)) + 1e-9  # the NLL's minimum

    def ece(scale):
        acc = MetricAccumulator(4)
        acc.update(logits / scale, labels)
        return acc.summary(["a", "b", "c", "d"])["ece"]

    assert ece(t) <= ece(1.0), (t, ece(t), ece(1.0))


def test_evaluate_reports_both_and_draws_the_reliability_diagram(calibrated_run, tmp_path):
    root, cfg = calibrated_run
    ckpt = Path(cfg.output_dir) / "best.pt"
    t = torch.load(ckpt, weights_only=True)["temperature"]
    metrics = evaluate.main(evaluate.get_args_parser().parse_args(
        eval_argv(root, ckpt, tmp_path / "cal")))
    raw = evaluate.main(evaluate.get_args_parser().parse_args(
        eval_argv(root, ckpt, tmp_path / "raw", "--no-calibration")))
    assert metrics["temperature"] == t and raw["temperature"] == 1.0
    assert metrics["checkpoint_temperature"] == raw["checkpoint_temperature"] == t
    assert metrics["ece_uncalibrated"] == pytest.approx(raw["ece"])
    assert metrics["nll_uncalibrated"] == pytest.approx(raw["nll"])
    assert metrics["accuracy"] == raw["accuracy"]  # dividing by T changes no prediction
    image_list, probs = direct_predictions(load_predictor(ckpt, "cpu").model.net, root, 32)
    got = np.array([[float(r[f"prob_{c}"]) for c in metrics["classes"]]
                    for r in read_csv(tmp_path / "raw" / "predictions.csv")])
    assert np.abs(got - probs.numpy()).max() < 1e-4  # --no-calibration: the plain softmax
    # calibrated: the raw probabilities at power 1/T, renormalised, and the NLL of those
    assert abs(np.log(t)) > 0.05, t  # else the two would be alike whatever evaluate.py did
    scaled = at_temperature(probs.double().numpy(), t)
    cal = np.array([[float(r[f"prob_{c}"]) for c in metrics["classes"]]
                    for r in read_csv(tmp_path / "cal" / "predictions.csv")])
    assert np.abs(cal - scaled).max() < 1e-4
    assert metrics["nll"] == pytest.approx(
        -np.log(scaled[np.arange(len(scaled)), image_list.labels]).mean(), rel=1e-4)
    bins = metrics["reliability"]
    assert sum(bins["count"]) == metrics["num_images"]
    with Image.open(tmp_path / "cal" / "reliability_diagram.png") as im:
        assert im.format == "PNG" and min(im.size) > 200
    saved = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    assert saved["reliability_uncalibrated"]["count"] == raw["reliability"]["count"]


def test_predict_applies_the_temperature_unless_told_not_to(calibrated_run, tmp_path):
    root, cfg = calibrated_run
    ckpt = Path(cfg.output_dir) / "best.pt"
    t = torch.load(ckpt, weights_only=True)["temperature"]
    assert abs(np.log(t)) > 0.05, t  # else the two would be alike whatever predict.py did
    images = sorted((root / "coco" / "images" / "val2017").iterdir())[:5]
    rows = {}
    for name, flag in (("cal", "--calibration"), ("raw", "--no-calibration")):
        predict.main(predict.get_args_parser().parse_args(
            ["--checkpoint", str(ckpt), "--device", "cpu", "--workers", "0", flag,
             *map(str, images), "--out", str(tmp_path / f"{name}.csv")]))
        rows[name] = np.array([[float(r[f"prob_{c}"]) for c in ("bird", "airplane", "train",
                                                                "boat")]
                               for r in read_csv(tmp_path / f"{name}.csv")])
    # the calibrated probabilities are the raw ones at power 1/T, renormalised
    assert np.abs(rows["cal"] - at_temperature(rows["raw"], t)).max() < 1e-4


@pytest.mark.parametrize("value", [-1.0, 0.0, float("nan"), "warm", 1e-300, 1e308, 25.0])
def test_a_bad_stored_temperature_is_refused(trained, tmp_path, value):
    """Beyond the fit's own range (#35: 1e-300 made every probability NaN and evaluate.py
    report an accuracy; 1e308 made every one a quarter)."""
    payload = torch.load(trained, weights_only=True)
    payload["temperature"] = value
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(Coco4Error, match=r"holds temperature .*, not a number from 0.05 to 20 "
                                         "as the fit writes"):
        load_predictor(tmp_path / "bad.pt", "cpu")
