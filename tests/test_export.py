"""export.py: the exported file alone (ONNX Runtime, a loaded TorchScript module) gives the
checkpoint's probabilities, carries what a caller needs, and a corrupted one fails the check."""
import json
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from coco4.errors import Coco4Error, GateFailed
from coco4.exporting import read_metadata

import export
import predict
from conftest import read_csv, run_script

CLASSES = ["bird", "airplane", "train", "boat"]


@pytest.fixture(scope="module")
def onnx_file(trained, demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    run_export(trained, "--out", out, *val_source(demo_data))
    return out


def run_export(checkpoint, *argv):
    return export.main(export.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), *map(str, argv)]))


def val_source(demo_data):
    return ("--list", demo_data / "data" / "annotation_val.txt",
            "--images", demo_data / "coco" / "images" / "val2017")


def val_predictions(demo_data, trained, tmp_path):
    """predict.py's rows for the demo's val images, and those images' paths."""
    image_dir = demo_data / "coco" / "images" / "val2017"
    paths = sorted(image_dir.iterdir())
    predict.main(predict.get_args_parser().parse_args(
        ["--checkpoint", str(trained), "--device", "cpu", "--workers", "0", str(image_dir),
         "--out", str(tmp_path / "preds.csv")]))
    return read_csv(tmp_path / "preds.csv"), paths


def test_onnx_probabilities_match_predict_on_the_demo_val_images(demo_data, trained, onnx_file,
                                                                  tmp_path):
    rows, paths = val_predictions(demo_data, trained, tmp_path)
    session = onnxruntime.InferenceSession(str(onnx_file))
    meta = session.get_modelmeta().custom_metadata_map
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, out.name) == ("images", "tensor(uint8)", "probs")
    side = int(meta["input_size"])
    assert inp.shape[1:] == [3, side, side] and isinstance(inp.shape[0], str)  # dynamic batch
    assert json.loads(meta["classes"]) == CLASSES and side == round(32 * 256 / 224)
    assert "resize the whole image to 37x37" in meta["preprocessing"]
    from coco4.data.images import read_rgb
    from coco4.data.transforms import pil_eval_transform

    transform = pil_eval_transform(32)
    x = torch.stack([transform(read_rgb(p)) for p in paths]).numpy()
    got = np.concatenate([session.run(None, {"images": x[i:i + 9]})[0]  # the batch size is
                          for i in range(0, len(x), 9)])  # free: 9s, then the rest
    by_path = {r["path"]: [float(r[f"prob_{c}"]) for c in CLASSES] for r in rows}
    expected = np.array([by_path[str(p)] for p in paths])
    assert len(paths) > 20 and np.abs(got - expected).max() < 1e-4


def test_torchscript_export_passes_its_parity_check_and_carries_the_metadata(demo_data, trained,
                                                                             tmp_path):
    out = tmp_path / "model.torchscript.pt"
    result = run_export(trained, "--format", "torchscript", "--out", out)  # generated images
    assert result["parity"].passed(1e-4) and result["parity"].images == 16
    meta = read_metadata(out, "torchscript")
    assert json.loads(meta["classes"]) == CLASSES and meta["input_size"] == "37"
    module = torch.jit.load(str(out))
    probs = module(torch.zeros(3, 3, 37, 37, dtype=torch.uint8))
    assert probs.shape == (3, 4) and torch.allclose(probs.sum(1), torch.ones(3))


def corrupt_last_bias(source, target):
    """The ONNX file with one class's logit shifted by 3: a wrong graph, still a valid one."""
    model = onnx.load(str(source))
    biases = [t for t in model.graph.initializer if tuple(t.dims) == (4,)]
    assert biases, "the 4-class head's bias is an initializer"
    values = onnx.numpy_helper.to_array(biases[-1]).copy()
    values[0] += 3
    biases[-1].CopyFrom(onnx.numpy_helper.from_array(values, biases[-1].name))
    onnx.save(model, str(target))


def test_a_corrupted_graph_fails_the_parity_check_with_exit_1(trained, onnx_file, tmp_path,
                                                              capsys):
    assert run_export(trained, "--verify", onnx_file)["parity"].passed(1e-4)
    bad = tmp_path / "corrupted.onnx"
    corrupt_last_bias(onnx_file, bad)
    with pytest.raises(GateFailed, match=r"corrupted.onnx fails the parity check against .* "
                                         r"\(--atol 0.0001\): parity on 16 images: max "):
        run_export(trained, "--verify", bad)
    ran = run_script("export", "--checkpoint", trained, "--verify", bad)
    assert ran.status == 1 and ran.error.startswith(f"{bad} fails the parity check")


def test_verifying_a_file_export_py_did_not_write_is_one_line(trained, tmp_path):
    """A training checkpoint given to --verify (a likely slip), a foreign ONNX model."""
    with pytest.raises(Coco4Error, match=rf"^{trained} is a training checkpoint, not a model "
                                         rf"export.py wrote; export it with: python export.py "
                                         rf"--checkpoint {trained}$"):
        run_export(trained, "--verify", trained)
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(Coco4Error, match=r"damaged.onnx is not a model export.py wrote \("):
        run_export(trained, "--verify", damaged)
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(Coco4Error, match=r"foreign.onnx has no classes, input, preprocessing, "
                                         r"output in its metadata"):
        run_export(trained, "--verify", tmp_path / "foreign.onnx")


def test_an_existing_file_is_never_replaced_unasked(trained, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"a user's file")
    with pytest.raises(Coco4Error, match=re.escape(f"{out} exists; choose another --out, or "
                                                   "pass --overwrite")):
        run_export(trained, "--out", out)
    assert out.read_bytes() == b"a user's file"
    with pytest.raises(Coco4Error, match="--list needs --images"):
        run_export(trained, "--out", tmp_path / "x.onnx", "--list", tmp_path / "l.txt")


@pytest.fixture(scope="module")
def warm_checkpoint(trained, tmp_path_factory):
    """The shared checkpoint with a temperature far from 1 (its own fit is near 1): an export
    that left it out would give other probabilities than predict.py."""
    ckpt = torch.load(trained, weights_only=True)
    ckpt["temperature"] = 2.5
    path = tmp_path_factory.mktemp("warm") / "t25.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("torchscript", "m.pt")])
def test_an_exported_model_gives_predict_pys_calibrated_probabilities(
        demo_data, warm_checkpoint, tmp_path, fmt, name):
    """The file alone (ONNX Runtime, or the TorchScript module) against predict.py's rows on
    the same images, with T = 2.5: the temperature is inside the graph."""
    run_export(warm_checkpoint, "--format", fmt, "--out", tmp_path / name)
    rows, paths = val_predictions(demo_data, warm_checkpoint, tmp_path)
    raw, _ = val_predictions_raw(demo_data, warm_checkpoint, tmp_path)
    from coco4.data.images import read_rgb
    from coco4.data.transforms import pil_eval_transform
    from coco4.exporting import run_exported

    x = torch.stack([pil_eval_transform(32)(read_rgb(p)) for p in paths])
    got = run_exported(tmp_path / name, fmt, x)
    by_path = {r["path"]: [float(r[f"prob_{c}"]) for c in CLASSES] for r in rows}
    expected = np.array([by_path[str(p)] for p in paths])
    assert np.abs(got - expected).max() < 1e-4
    # and the temperature matters here: the raw probabilities are far from these
    raw_by_path = {r["path"]: [float(r[f"prob_{c}"]) for c in CLASSES] for r in raw}
    raw_probs = np.array([raw_by_path[str(p)] for p in paths])
    assert np.abs(raw_probs - expected).max() > 0.05


def val_predictions_raw(demo_data, checkpoint, tmp_path):
    """predict.py's rows without the temperature (--no-calibration)."""
    image_dir = demo_data / "coco" / "images" / "val2017"
    predict.main(predict.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0", str(image_dir),
         "--out", str(tmp_path / "raw.csv"), "--no-calibration"]))
    return read_csv(tmp_path / "raw.csv"), sorted(image_dir.iterdir())


def test_the_parity_check_fails_an_export_that_drops_the_temperature(warm_checkpoint,
                                                                     tmp_path, monkeypatch):
    """An exporter that leaves the temperature out of the graph: export.py's own check must
    see it, since it compares with the predictor, not with the wrapper it exported."""
    import coco4.exporting

    monkeypatch.setattr(coco4.exporting.Probabilities, "forward",
                        lambda self, images: self.model(images).softmax(1))
    with pytest.raises(GateFailed, match=r"fails the parity check against .*t25\.pt"):
        run_export(warm_checkpoint, "--out", tmp_path / "m.onnx")


def test_verifying_an_export_of_other_classes_or_temperature_says_so(
        warm_checkpoint, other_run, tmp_path):
    run_export(other_run, "--out", tmp_path / "five.onnx")
    with pytest.raises(GateFailed) as failed:
        run_export(warm_checkpoint, "--verify", tmp_path / "five.onnx")
    assert str(failed.value) == (
        f"{tmp_path / 'five.onnx'} was exported for 5 classes {[*CLASSES, 'other']}, but "
        f"{warm_checkpoint} predicts 4 {CLASSES}: it was not exported from that checkpoint")
    run_export(warm_checkpoint, "--out", tmp_path / "raw.onnx", "--no-calibration")
    with pytest.raises(GateFailed) as failed:
        run_export(warm_checkpoint, "--verify", tmp_path / "raw.onnx")
    assert str(failed.value) == (
        f"{tmp_path / 'raw.onnx'} holds the temperature 1, but {warm_checkpoint} is applied at "
        "2.5 (exported with --no-calibration: verify with --no-calibration)")
    assert run_export(warm_checkpoint, "--verify", tmp_path / "raw.onnx",
                      "--no-calibration")["parity"].passed(1e-4)
    for atol in ("inf", "nan", "1"):
        with pytest.raises(Coco4Error, match=f"--atol must be 0 or more and below 1, got {atol}"):
            run_export(warm_checkpoint, "--verify", tmp_path / "raw.onnx", "--atol", atol)
