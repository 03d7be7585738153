"""Shared fixtures, built once per session and read by every test that only reads them (a test
that changes a file copies it first): the small synthetic COCO dataset with its lists, a larger
one for the tests that learn, and a trained run of the test suite's tiny backbone; the
in-process runner of the entry scripts; references that do not come from the code under test."""
import contextlib
import csv
import importlib
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the entry scripts live at the repository root

import tiny_backbone  # noqa: E402  (registers --arch tiny)

from coco4 import cli  # noqa: E402
from coco4.annotation_lists import ListsOptions, make_lists  # noqa: E402
from coco4.data.images import read_rgb  # noqa: E402
from coco4.data.lists import read_list  # noqa: E402
from coco4.synthetic import make_synthetic_coco  # noqa: E402

try:
    import pycocotools.coco  # noqa: F401, E402
    HAVE_PYCOCOTOOLS = True
except ImportError:  # the GPU check's machine has none
    HAVE_PYCOCOTOOLS = False


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Generated COCO layout + lists: about 40 train-list and 26 val-list images at small sizes."""
    root = tmp_path_factory.mktemp("demo")
    # where pycocotools is missing (the GPU check's machine), the generator writes the lists
    # itself: the same images and labels (tests/test_synthetic.py), in label-then-name order
    make_synthetic_coco(root / "coco", num_train=60, num_val=40, seed=1,
                        image_sizes=((64, 48), (48, 64)), progress=False,
                        lists_dir=None if HAVE_PYCOCOTOOLS else root / "data")
    if HAVE_PYCOCOTOOLS:
        make_lists(ListsOptions(coco_root=root / "coco", out_dir=root / "data"))
    return root


class CreatesFile:
    """Unpickling this calls a function with side effects: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="session")
def few_val(demo_data, tmp_path_factory):
    """A data folder whose val list holds the first 8 of ``demo_data``'s val images (with its
    classes.txt): for ResNet-50 at the original 224 px protocol, where each image costs."""
    data = tmp_path_factory.mktemp("few") / "data"
    data.mkdir()
    shutil.copy(demo_data / "data" / "classes.txt", data)
    lines = (demo_data / "data" / "annotation_val.txt").read_text().splitlines()
    # two of each class, so the confusion matrix and per-class figures have every class
    picked = [[line for line in lines if line.endswith(f" {c}")][k] for c in range(4)
              for k in (0, 1)]
    (data / "annotation_val.txt").write_text("".join(f"{line}\n" for line in picked))
    return data


@pytest.fixture(scope="session")
def larger_data(tmp_path_factory):
    """About 190 train-list and 60 val-list images: enough for a network to learn from in a
    few epochs, and for a held-out split of about 40 to fit a temperature on."""
    root = tmp_path_factory.mktemp("larger")
    make_synthetic_coco(root / "coco", num_train=300, num_val=80, seed=2,
                        image_sizes=((64, 48), (48, 64)), progress=False,
                        lists_dir=root / "data")
    return root


@pytest.fixture(scope="session")
def other_data(tmp_path_factory):
    """Generated COCO data with images of none of the classes (80 in train2017, 60 in val2017)
    and two folders of lists: ``data`` with a fifth class ``other`` of 24 images
    (``--other 24``), ``data4`` with the four classes and the lists of negatives
    (``--other 0``). Needs pycocotools."""
    pytest.importorskip("pycocotools")
    root = tmp_path_factory.mktemp("other")
    make_synthetic_coco(root / "coco", num_train=60, num_val=40, seed=3,
                        image_sizes=((64, 48), (48, 64)), progress=False, negatives=(80, 60),
                        lists_dir=root / "generated")
    with contextlib.redirect_stdout(io.StringIO()):
        make_lists(ListsOptions(coco_root=root / "coco", out_dir=root / "data", other=24))
        make_lists(ListsOptions(coco_root=root / "coco", out_dir=root / "data4", other=0))
    return root


@pytest.fixture(scope="session")
def other_run(other_data, tmp_path_factory):
    """best.pt of the tiny backbone trained on the 5 classes of ``other_data``."""
    from coco4.trainer import fit

    out = tmp_path_factory.mktemp("other-run")
    fit(train_args(other_data, out, epochs=10, lr=1e-2), progress=False)
    return out / "best.pt"


@pytest.fixture(scope="session")
def trained_run(demo_data, tmp_path_factory):
    """The folder of a run of the tiny backbone on ``demo_data`` (last.pt, best.pt, metrics.csv,
    tensorboard/), shared by the tests that only read it. Ten epochs at lr 1e-2 (0.7 s): a model
    that tells the classes apart (about half the test images right, most probabilities far
    from a quarter), whose pictures, thresholds and mirrored views differ as a real one's do."""
    from coco4.trainer import fit

    out = tmp_path_factory.mktemp("run")
    fit(train_args(demo_data, out, epochs=10, lr=1e-2), progress=False)
    return out


@pytest.fixture(scope="session")
def trained(trained_run):
    """best.pt of ``trained_run``: a test that changes a checkpoint copies it first."""
    return trained_run / "best.pt"


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of ``trained_run`` of this test's own, to resume, overwrite or damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def read_csv(path):
    """The rows of a CSV file as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_args(data_root, out, **overrides):
    """A small CPU training configuration of the tiny backbone over ``demo_data``, as train.py
    would build it; ``arch=`` where the backbone is what a test is about."""
    from coco4.config import TrainConfig

    values = {"coco_root": str(data_root / "coco"), "data_dir": str(data_root / "data"),
              "output_dir": str(out), "device": "cpu", "weights": "none", "image_size": 32,
              "arch": tiny_backbone.NAME,
              "epochs": 1, "batch_size": 8, "lr": 1e-3, "workers": 0, "seed": 0,
              "val_fraction": 0.2}
    values.update(overrides)
    return TrainConfig(**values)


def out_of_memory(*args, **kwargs):
    """Stands in for a step or a pass that runs out of GPU memory, as torch raises it."""
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def eval_argv(data_root, checkpoint, out, *extra):
    """evaluate.py's (and visualize.py's) arguments over ``demo_data``, on the CPU by default."""
    return ["--checkpoint", str(checkpoint), "--data-dir", str(data_root / "data"),
            "--coco-root", str(data_root / "coco"), "--device", "cpu", "--workers", "0",
            "--out-dir", str(out), *map(str, extra)]


def smooth_images(n, side=37):
    """``n`` uint8 NCHW gradient images: smooth, so the GPU and CPU resamplers agree on them."""
    import torch

    yy, xx = torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing="ij")
    images = torch.stack([torch.stack([xx * 6, yy * 6, (xx + yy) * 3]) + k for k in range(n)])
    return images.clamp(0, 255).to(torch.uint8)


def train_argv(data_root, out, *extra):
    """train.py's arguments for the same small configuration of the tiny backbone."""
    return ["--coco-root", str(data_root / "coco"), "--data-dir", str(data_root / "data"),
            "--output-dir", str(out), "--device", "cpu", "--weights", "none", "--arch",
            tiny_backbone.NAME, "--image-size", "32", "--batch-size", "8", "--lr", "1e-3",
            "--workers", "0", "--val-fraction", "0.2", *map(str, extra)]


def train_cli(data_root, out, *extra):
    """train.py's command line for the same configuration, for a test that needs a process of
    its own (a signal, a resource limit): the script run as __main__ with the tiny backbone
    registered (tests/scripts/with_tiny.py)."""
    return [sys.executable, str(REPO / "tests" / "scripts" / "with_tiny.py"),
            str(REPO / "train.py"), *train_argv(data_root, out, *extra)]


@dataclass
class Ran:
    """What an entry script did: its exit status and what it printed."""

    status: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The one line an error is, checked to be the only ``error:`` line, with no traceback."""
        lines = [line for line in self.err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "Traceback" not in self.err, self.err[-2000:]
        assert self.err.strip().splitlines()[-1] == lines[0], self.err[-2000:]
        return lines[0].removeprefix("error: ")


def run_script(name, *argv) -> Ran:
    """An entry script (``train``, ``evaluate``, ...) as its ``__main__`` block runs it:
    ``cli.run(main, get_args_parser(), argv)``, here in this process (a traceback fails the
    test as it would show one to a user). tests/test_scripts.py runs each one as a process."""
    module = importlib.import_module(name)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as done:
        cli.run(module.main, module.get_args_parser(), [str(a) for a in argv])
    return Ran(done.value.code or 0, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------- references that do not
# come from the code under test: torchvision's own network and transforms, published constants


def direct_predictions(model, demo_data, image_size, temperature=1.0, mirror=False,
                       list_path=None):
    """Predictions computed by hand: PIL decode, the original eval transform written out with
    torchvision and ImageNet's published constants, the bare torchvision network, and the
    logits divided by ``temperature`` (a checkpoint's, read from the file) before the softmax;
    ``mirror``: of each image's left-right mirror, flipped by torchvision before the resize.
    The images of the val list, or of ``list_path`` (of val2017 images)."""
    image_list = read_list(list_path or demo_data / "data" / "annotation_val.txt")
    side = round(image_size * 256 / 224)
    flip = [T.RandomHorizontalFlip(1.0)] if mirror else []
    transform = T.Compose([*flip, T.Resize((side, side)), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    model.eval()
    with torch.no_grad():
        x = torch.stack([transform(read_rgb(demo_data / "coco" / "images" / "val2017" / f))
                         for f in image_list.files])
        probs = (model(x) / temperature).softmax(1)
    return image_list, probs


def check_against_direct(out, image_list, probs, classes):
    metrics = json.loads((out / "metrics.json").read_text())
    labels, preds = np.array(image_list.labels), probs.argmax(1).numpy()
    assert metrics["num_images"] == len(labels)
    assert metrics["accuracy"] == pytest.approx((labels == preds).mean())
    cm = np.zeros((len(classes), len(classes)), int)
    np.add.at(cm, (labels, preds), 1)
    assert metrics["confusion_matrix"] == cm.tolist()
    for i, c in enumerate(classes):
        assert metrics["per_class_accuracy"][c] == pytest.approx((preds[labels == i] == i).mean())
    rows = read_csv(out / "predictions.csv")
    assert [r["file"] for r in rows] == list(image_list.files)
    got = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    assert np.abs(got - probs.numpy()).max() < 1e-4
    with Image.open(out / "confusion_matrix.png") as im:  # a whole 4x4 matrix figure
        assert im.format == "PNG" and min(im.size) > 200, im.size
        im.load()
    return metrics


def at_temperature(probs, t):
    """Probabilities (numpy or torch, [N, classes]) at temperature ``t`` by hand: each to the
    power 1/T, renormalised, which is softmax(log p / T)."""
    scaled = probs ** (1 / t)
    return scaled / scaled.sum(1)[:, None]


def stored_temperature(checkpoint):
    """The temperature a checkpoint file holds, read with torch alone (1 where there is none)."""
    return torch.load(checkpoint, weights_only=True).get("temperature") or 1.0


def original_model():
    """The original project's model, built as its code did: torchvision resnet50 + its head."""
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Sequential(nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 4))
    return model


@contextlib.contextmanager
def tmpfs(folder, options):
    """A real small file system (tmpfs, mount ``options``) at ``folder``, for the test's block;
    the test is skipped where this machine does not let it mount one (it needs root)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
