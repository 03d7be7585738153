"""What a new user meets first (#15): the --help texts, the startup line, the device choice,
a percentage given for a fraction, a keypoints file, the missing training curves, and the
benchmark on a platform without the ``resource`` module."""
import importlib
import shutil
import subprocess
import sys

import pytest
import torch

from coco4.config import TrainConfig
from coco4.data.coco_check import check_instances
from coco4.distributed import DistEnv, pick_device
from coco4.errors import Coco4Error
from coco4.run_log import RunLog

import evaluate
import visualize
from conftest import REPO, eval_argv

PARSERS = ("train", "evaluate", "visualize", "predict", "export",
           "coco4.demo", "coco4.bench")


@pytest.mark.parametrize("name", PARSERS)
def test_help_shows_the_default_of_every_numeric_flag(name):
    parser = importlib.import_module(name).get_args_parser()
    numeric = [a for a in parser._actions if a.type in (int, float) and a.default is not None]
    assert numeric
    for action in numeric:  # each option's entry in --help, as argparse prints it
        entry = " ".join(parser._get_formatter()._format_action(action).split())
        assert f"(default: {action.default})" in entry, entry


def test_help_names_every_device_and_what_the_seed_seeds():
    import train

    text = " ".join(train.get_args_parser().format_help().split())
    assert "cuda:N" in text and "mps" in text and "dropout" in text


def test_annotation_prepare_help_shows_defaults_but_never_none():
    import annotation_prepare

    text = " ".join(annotation_prepare.get_args_parser().format_help().split())
    assert "(default: None)" not in text
    assert "(default: COCO_ROOT/annotations/instances_train2017.json)" in text
    assert "(default: coco)" in text and "(default: data)" in text


def test_the_startup_line_says_fp32_where_amp_does_nothing(tmp_path, capsys):
    RunLog(tmp_path, enabled=True, resumed=False).config(TrainConfig(amp=True),
                                                         torch.device("cpu"), DistEnv())
    line = capsys.readouterr().out
    assert line.startswith("training on cpu: ") and " amp=off " in line, line


def test_mps_is_a_device_name_and_refused_clearly_where_there_is_none(monkeypatch):
    assert TrainConfig(device="mps").device == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(Coco4Error, match=r"^--device mps asked for an Apple GPU, but .*use "
                                         r"--device cpu$"):
        pick_device("mps", DistEnv())
    for bad in ("gpu", "mps:0", "cuda:x"):
        with pytest.raises(Coco4Error, match=r"^--device must be auto, cpu, cuda, cuda:N or "
                                             r"mps, got "):
            pick_device(bad, DistEnv())


@pytest.mark.parametrize("value, hint", [("95", "; it is a fraction: for 95% pass 0.95"),
                                         ("99.5", "; it is a fraction: for 99.5% pass 0.995"),
                                         ("150", "")])
def test_a_percentage_for_min_class_acc_is_refused_with_the_fraction_meant(tmp_path, value,
                                                                            hint):
    args = evaluate.get_args_parser().parse_args(
        ["--min-class-acc", value, "--checkpoint", str(tmp_path / "none.pt")])
    with pytest.raises(Coco4Error) as e:
        evaluate.main(args)
    assert str(e.value) == f"--min-class-acc must be between 0 and 1, got {float(value)}{hint}"


def test_a_keypoints_file_is_named_as_such(tmp_path):
    """person_keypoints_*.json has images, annotations and categories: only the person, with
    its keypoint names."""
    data = {"images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "keypoints": [0] * 51}],
            "categories": [{"id": 1, "name": "person", "keypoints": ["nose"],
                            "skeleton": [[1, 2]]}]}
    path = tmp_path / "person_keypoints_train2017.json"
    with pytest.raises(Coco4Error, match=r"is not a COCO instances file: it is a keypoints "):
        check_instances(data, path)
    for category in data["categories"]:
        del category["keypoints"]
    check_instances(data, path)  # the same file as an instances file passes


def test_the_benchmark_runs_where_there_is_no_resource_module():
    """Windows has no ``resource``: the benchmark starts, and its table says what it did not
    measure."""
    code = ("import sys; sys.modules['resource'] = None\n"
            "from coco4 import bench\n"
            "assert bench.host_peak_mb() is None\n"
            "f = {'device': 'cpu', 'images': 1, 'batch_size': 1, 'image_size': 32, 'workers': 0,"
            " 'pipeline': dict.fromkeys(('original_img_s', 'pil_fair_img_s', 'fast_img_s',"
            " 'cache_build_img_s'), 1.0), 'train': dict.fromkeys(('original_img_s',"
            " 'pil_fair_img_s', 'fast_img_s', 'ceiling_img_s'), 1.0),"
            " 'memory': {'host_peak_mb': None, 'gpu_peak_mb': None}}\n"
            "print(bench.format_table(f))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "peak host memory not measured (no resource module on this platform)" in proc.stdout


def test_host_peak_memory_is_measured_where_resource_exists():
    from coco4.bench import host_peak_mb

    assert host_peak_mb() > 50  # this process holds torch: tens of MB at least


def test_visualize_says_why_it_draws_no_training_curves(demo_data, trained, tmp_path, capsys,
                                                        monkeypatch):
    lone = tmp_path / "copied" / "best.pt"  # a checkpoint away from its run's metrics.csv
    lone.parent.mkdir()
    shutil.copy(trained, lone)
    argv = eval_argv(demo_data, lone, tmp_path / "vis", "--num", "2")
    (tmp_path / "vis").mkdir()
    for name in ("training_curves.png", "gradcam.png"):
        (tmp_path / "vis" / name).write_bytes(b"an earlier model's picture")
    import coco4.gradcam

    monkeypatch.setattr(coco4.gradcam, "missing", lambda: "no reason here")
    written = visualize.main(visualize.get_args_parser().parse_args(argv))
    assert not any(p.endswith(("training_curves.png", "gradcam.png")) for p in written)
    for name in ("training_curves.png", "gradcam.png"):  # not this model's
        assert not (tmp_path / "vis" / name).exists(), name
    assert (f"skipped training_curves.png: no {lone.parent / 'metrics.csv'} (the run's "
            "metrics.csv); pass --metrics PATH to draw it") in capsys.readouterr().out

