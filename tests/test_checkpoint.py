"""The one weights path: checkpoints of every layout load with the same predictions, starting
weights of every kind, and a clear error for each file that does not fit."""
import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from coco4.checkpoint import load_model, read_file, save_checkpoint, starting_model
from coco4.config import TrainConfig
from coco4.errors import Coco4Error
from coco4.run_log import read_metrics_csv
from coco4.trainer import fit

import evaluate
from conftest import (
    check_against_direct,
    direct_predictions,
    eval_argv,
    original_model,
    read_csv,
    stored_temperature,
    train_args,
)

CLASSES = ["bird", "airplane", "train", "boat"]
# TrainConfig's fields as coco4 wrote them before the architecture registry (format 1)
V1_CONFIG = {"coco_root": "coco", "data_dir": "data", "train_list": None, "train_images": None,
             "cache_dir": None, "epochs": 1, "batch_size": 8, "accum_steps": 1, "lr": 1e-3,
             "image_size": 32, "weights": "none", "device": "cpu", "workers": 0, "seed": 0,
             "val_fraction": 0.2, "output_dir": "checkpoint", "resume": None, "amp": True,
             "data_path": "fast", "compile": False, "strict": False, "plateau_factor": 0.1,
             "plateau_patience": 5}


def write_v1_checkpoint(path):
    """A last.pt laid out exactly as coco4 wrote it before format 2, built from torchvision's
    ResNet-50 and the original head, after one Adam step: no ``arch``, ``run["best_acc"]``,
    and metrics.csv rows without the later validation columns."""
    torch.manual_seed(0)
    net = original_model()
    trained = [p for n, p in net.named_parameters() if n.split(".")[0] in ("layer3", "layer4",
                                                                            "fc")]
    optimizer = torch.optim.Adam(trained, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=5)
    net.train()
    net(torch.randn(4, 3, 32, 32)).logsumexp(1).mean().backward()
    optimizer.step()
    net.eval()
    row = {"epoch": 1, "train_loss": 1.4, "train_acc": 0.3, "val_loss": 1.3, "val_acc": 0.5,
           "lr": 1e-3, "seconds": 2.0, "images_per_s": 16.0}
    payload = {"format": "coco4", "format_version": 1,
               "versions": {"torch": "2.14.1", "torchvision": "0.29.1", "python": "3.11.7"},
               "model": net.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "scaler": {}, "epoch": 1,
               "run": {"epoch": 1, "step": 0, "partial": None, "best_acc": 0.5,
                       "best_epoch": 1, "history": [row]},
               "best_metric": 0.5, "classes": CLASSES, "config": V1_CONFIG,
               "data": {"listed_images": 40, "left_out": {}, "train_images": 32,
                        "val_images": 8}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return net


def test_a_format_1_checkpoint_predicts_as_before(demo_data, tmp_path):
    net = write_v1_checkpoint(tmp_path / "old" / "last.pt")
    loaded = load_model(tmp_path / "old" / "last.pt")
    assert (loaded.arch, loaded.classes, loaded.image_size) == ("resnet50", CLASSES, 32)
    evaluate.main(evaluate.get_args_parser().parse_args(
        eval_argv(demo_data, tmp_path / "old" / "last.pt", tmp_path / "eval")))
    image_list, probs = direct_predictions(net, demo_data, 32)
    check_against_direct(tmp_path / "eval", image_list, probs, CLASSES)


def test_a_format_1_last_pt_keeps_resuming(demo_data, tmp_path):
    write_v1_checkpoint(tmp_path / "last.pt")
    steps_done = int(read_file(tmp_path / "last.pt")["optimizer"]["state"][0]["step"])
    fit(train_args(demo_data, tmp_path, epochs=2, resume=str(tmp_path / "last.pt")),
        progress=False)
    ckpt = read_file(tmp_path / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["format_version"] == 3
    assert ckpt["config"]["arch"] == "resnet50"
    # Adam went on counting from the old file's state: its optimizer was restored
    train_steps = -(-ckpt["data"]["train_images"] // 8)
    assert int(ckpt["optimizer"]["state"][0]["step"]) == steps_done + train_steps
    assert ckpt["run"]["history"][0]["val_acc"] == 0.5  # the old epoch's row is kept
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["val_macro_f1"] == "" and rows[1]["val_macro_f1"] != ""
    assert read_metrics_csv(tmp_path / "metrics.csv")[0]["val_macro_f1"] is None


def test_a_format_1_run_keeps_its_best_score(tmp_path):
    """Its ``best_acc`` becomes ``best_metric``: a resumed run forgetting it (-1) would let
    any later, worse epoch replace best.pt."""
    write_v1_checkpoint(tmp_path / "last.pt")
    ckpt = load_model(tmp_path / "last.pt").checkpoint
    assert ckpt["run"]["best_metric"] == 0.5 and ckpt["run"]["best_epoch"] == 1
    assert "best_acc" not in ckpt["run"]


@pytest.mark.parametrize("arch", ["resnet18", "convnext_tiny"])
def test_starting_weights_from_a_torchvision_state_dict(tmp_path, arch):
    torch.manual_seed(123)
    reference = getattr(torchvision.models, arch)(weights=None).state_dict()
    torch.save(reference, tmp_path / f"{arch}.pth")
    torch.manual_seed(0)
    fresh = starting_model(arch, 4, "none")
    torch.manual_seed(0)  # the same seed: the same fresh head
    model = starting_model(arch, 4, str(tmp_path / f"{arch}.pth"))
    head = model.spec.head + "."
    state = model.net.state_dict()
    for key, value in reference.items():
        if not key.startswith(head):
            assert torch.equal(state[key], value), key
    for key, value in fresh.net.state_dict().items():  # the 1000-class head is not taken
        if key.startswith(head):
            assert torch.equal(state[key], value), key
    assert not torch.equal(state["features.0.0.weight" if arch == "convnext_tiny" else
                                 "conv1.weight"], fresh.net.state_dict()[
        "features.0.0.weight" if arch == "convnext_tiny" else "conv1.weight"])


def test_weights_that_do_not_fit_are_one_line_errors(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(Coco4Error, match=r"r18.pth do not fit a resnet50 backbone: .*missing"):
        starting_model("resnet50", 4, str(tmp_path / "r18.pth"))
    write_v1_checkpoint(tmp_path / "r50.pt")
    with pytest.raises(Coco4Error, match=r"holds a resnet50 model, but this run trains "
                                         r"resnet18; pass --arch resnet50"):
        starting_model("resnet18", 4, str(tmp_path / "r50.pt"))
    with pytest.raises(Coco4Error, match="nope.pth not found"):
        starting_model("resnet50", 4, str(tmp_path / "nope.pth"))


def test_a_coco4_checkpoint_fine_tunes_from_its_weights(tmp_path):
    net = write_v1_checkpoint(tmp_path / "r50.pt")
    torch.save(net.state_dict(), tmp_path / "bare.pth")  # the network alone, head included
    for weights in ("r50.pt", "bare.pth"):
        model = starting_model("resnet50", 4, str(tmp_path / weights))
        for key, value in net.state_dict().items():  # the head too: the same classes
            assert torch.equal(model.net.state_dict()[key], value), (weights, key)


def test_resuming_a_format_1_run_says_which_new_settings_it_ignores():
    cfg, ignored = TrainConfig(select_by="macro_f1", lr=0.5).resumed_from(V1_CONFIG)
    # that run chose its best checkpoint by accuracy, before --select-by existed
    assert cfg.select_by == "accuracy" and cfg.arch == "resnet50" and cfg.lr == 1e-3
    assert ignored == {"select_by": "macro_f1", "lr": 0.5}


def test_no_network_names_the_offline_route(monkeypatch):
    def offline(self, *args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.models.ConvNeXt_Tiny_Weights, "get_state_dict", offline)
    with pytest.raises(Coco4Error, match=r"could not download .*--weights convnext_tiny.pth"):
        starting_model("convnext_tiny", 4, "imagenet")


def test_a_newer_format_is_refused_and_a_bare_state_dict_named(tmp_path):
    save_checkpoint(tmp_path / "new.pt", {"model": {}, "classes": CLASSES, "config": {}})
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(Coco4Error, match="format 99, newer than this coco4 reads"):
        load_model(tmp_path / "new.pt")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "bare.pth")
    with pytest.raises(Coco4Error, match=r"bare state dict .* --weights PATH"):
        load_model(tmp_path / "bare.pth")


def test_an_original_checkpoint_for_five_classes_is_refused(tmp_path):
    model = original_model()
    model.fc[3] = nn.Linear(256, 5)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, tmp_path / "orig5.pth")
    with pytest.raises(Coco4Error, match=r"original-format checkpoint for 5 classes"):
        load_model(tmp_path / "orig5.pth")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "convnext_tiny"])
def test_other_architectures_train_then_evaluate_and_visualize_without_arch(demo_data,
                                                                            tmp_path, arch):
    import visualize

    out = tmp_path / "run"
    fit(train_args(demo_data, out, arch=arch, epochs=2), progress=False)
    assert read_file(out / "best.pt")["config"]["arch"] == arch
    argv = eval_argv(demo_data, out / "best.pt", tmp_path / "eval")
    metrics = evaluate.main(evaluate.get_args_parser().parse_args(argv))
    loaded = load_model(out / "best.pt")
    assert loaded.arch == arch and type(loaded.model.net).__name__ == (
        "ResNet" if arch == "resnet18" else "ConvNeXt")
    image_list, probs = direct_predictions(loaded.model.net, demo_data, 32,
                                           stored_temperature(out / "best.pt"))
    check_against_direct(tmp_path / "eval", image_list, probs, CLASSES)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    written = visualize.main(visualize.get_args_parser().parse_args(
        eval_argv(demo_data, out / "best.pt", tmp_path / "vis", "--num", "2")))
    # gradcam.png included: the spec's cam_layer is a layer of this architecture
    assert sorted(Path(w).name for w in written) == ["errors.png", "gradcam.png",
                                                     "predictions.png", "samples.png",
                                                     "training_curves.png"]


def test_a_checkpoint_written_behind_training_holds_its_own_epochs_weights(demo_data, tmp_path,
                                                                          monkeypatch):
    """The write runs on a background thread while the next epoch trains. Made slow here (half
    a second, many steps of the tiny backbone), each file written must still hold the weights
    as they were when its epoch ended, captured then, not what later steps made of them."""
    import time

    import coco4.checkpoint
    from coco4.trainer import Training

    captured, written = [], []
    real_save, real_write = Training._save, coco4.checkpoint.save_checkpoint

    def capture(self):  # the live weights at the moment the epoch asks for its save
        captured.append({k: v.detach().clone()
                         for k, v in coco4.checkpoint.model_state(self.parts.model).items()})
        return real_save(self)

    def slow_write(path, payload, *copies):
        time.sleep(0.5)  # the next epoch's steps run meanwhile
        if path.name == "last.pt":
            written.append({k: v.clone() for k, v in payload["model"].items()})
        return real_write(path, payload, *copies)

    monkeypatch.setattr(Training, "_save", capture)
    monkeypatch.setattr(coco4.checkpoint, "save_checkpoint", slow_write)
    fit(train_args(demo_data, tmp_path, epochs=3, batch_size=4, save_every=0), progress=False)
    assert len(captured) == len(written) == 3
    for epoch, (live, file) in enumerate(zip(captured, written), 1):
        assert all(torch.equal(live[k], file[k]) for k in live), f"epoch {epoch}"
    assert not all(torch.equal(captured[0][k], captured[1][k]) for k in captured[0])
    last = read_file(tmp_path / "last.pt")["model"]
    assert all(torch.equal(last[k], captured[-1][k]) for k in last)


def test_a_format_2_checkpoint_of_an_interrupted_epoch_keeps_its_sums(trained_run, tmp_path):
    """Format 2 kept an interrupted epoch's running sums under run.partial; a resume reads
    them as run.epoch_sums, or that epoch's figures would restart at zero."""
    from coco4.checkpoint import FORMAT_VERSION, load_checkpoint

    payload = torch.load(trained_run / "last.pt", weights_only=True)
    sums = {"loss": 1000.0, "correct": 3, "images": 8, "seconds": 1.5}
    run = {k: v for k, v in payload["run"].items() if k != "epoch_sums"}
    torch.save({**payload, "format_version": 2, "run": {**run, "partial": sums}},
               tmp_path / "v2.pt")
    ckpt = load_checkpoint(tmp_path / "v2.pt")
    assert ckpt["format_version"] == FORMAT_VERSION == 3
    assert ckpt["run"]["epoch_sums"] == sums and "partial" not in ckpt["run"]
