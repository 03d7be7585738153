"""``from coco4 import Classifier`` (coco4/api.py): predict.py's probabilities for files,
folders, globs, PIL images and arrays, in order; unreadable files left out with a warning or,
strict, an error; ``import coco4`` without torch."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from coco4 import Classifier
from coco4.api import SkippedImageWarning
from coco4.errors import Coco4Error

from conftest import REPO, read_csv, run_script


@pytest.fixture(scope="module")
def clf(trained):
    return Classifier.load(trained, device="cpu")


@pytest.fixture(scope="module")
def predicted(trained, demo_data, tmp_path_factory):
    """predict.py's rows for the demo's val2017 folder: the reference."""
    out = tmp_path_factory.mktemp("predicted") / "rows.csv"
    folder = demo_data / "coco" / "images" / "val2017"
    ran = run_script("predict", folder, "--checkpoint", trained, "--out", out, "--device",
                     "cpu", "--workers", "0")
    assert ran.status == 0, ran.err
    return folder, read_csv(out)


def test_a_folder_gives_predict_pys_rows_in_its_order(clf, predicted):
    folder, rows = predicted
    results = clf.predict(folder, batch_size=7)  # batches that do not divide the folder
    assert [r.path for r in results] == [row["path"] for row in rows]
    for result, row in zip(results, rows):
        assert result.label == row["class"]
        assert result.score == pytest.approx(float(row["prob"]), abs=1e-5)  # as the CSV rounds
        assert list(result.probs) == clf.classes
        for name, p in result.probs.items():
            assert p == pytest.approx(float(row[f"prob_{name}"]), abs=1e-6)


def test_images_in_memory_give_their_files_probabilities_in_order(clf, predicted):
    folder, rows = predicted
    files = sorted(folder.iterdir())[:3]
    with Image.open(files[0]) as im:
        image = im.copy()
    array = np.asarray(Image.open(files[1]).convert("RGB"))
    results = clf.predict([image, array, str(files[2]), str(folder / "*.jpg")])
    assert [r.path for r in results[:3]] == [None, None, str(files[2])]
    assert len(results) == 3 + len(rows)
    by_file = {row["path"]: row for row in rows}
    for result, file in zip(results, files):
        expected = by_file[str(file)]
        assert result.probs["bird"] == pytest.approx(float(expected["prob_bird"]), abs=1e-6)
        assert result.label == expected["class"]
    assert results[0].to_dict() == {"label": results[0].label, "score": results[0].score,
                                    "probs": results[0].probs, "path": None}


def test_an_unreadable_file_is_left_out_with_a_warning_or_strict_an_error(clf, predicted,
                                                                           tmp_path):
    folder, _ = predicted
    good = sorted(folder.iterdir())[0]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(SkippedImageWarning, match="broken.jpg: unreadable"):
        results = clf.predict([good, tmp_path / "broken.jpg", good])
    assert [r.path for r in results] == [str(good), str(good)]
    with pytest.raises(Coco4Error, match="broken.jpg: unreadable: .*strict=True"), \
            warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning first: the error alone
        clf.predict([good, tmp_path / "broken.jpg"], strict=True)


@pytest.mark.parametrize("x, message", [
    (3, "cannot classify a int: give a path, a folder, a glob, a PIL image"),
    (np.zeros((8, 8, 3), np.float32), "an array must be uint8 HxWx3 \\(RGB\\), got float32"),
    (np.zeros((8, 8), np.uint8), "an array must be uint8 HxWx3 \\(RGB\\), got uint8 of shape"),
    ("no/such/photo.jpg", "no/such/photo.jpg: no such file or folder"),
])
def test_what_it_cannot_classify_is_one_clear_error(clf, x, message):
    with pytest.raises(Coco4Error, match=message):
        clf.predict(x)


def test_a_checkpoint_path_that_is_not_one_is_the_scripts_error(tmp_path):
    with pytest.raises(Coco4Error, match="not found; train one with train.py"):
        Classifier.load(tmp_path / "missing.pt")
    with pytest.raises(Coco4Error, match="tta must be one of none, flip, got 'five'"):
        Classifier.load(tmp_path / "missing.pt", tta="five")


def test_importing_coco4_imports_no_torch():
    code = "import sys, coco4; assert 'torch' not in sys.modules; coco4.Classifier"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("x, message", [
    (Image.new("RGB", (0, 0)), "a PIL image of 0x0 pixels: no pixels to classify"),
    (np.zeros((0, 4, 3), np.uint8), "an array of 4x0 pixels: no pixels to classify"),
    (Image.new("La", (8, 8)), "a PIL image that cannot be turned into RGB pixels"),
    ("", "'': an empty path; give a file, folder or glob"),
])
def test_images_with_nothing_to_classify_are_one_clear_error(clf, x, message):
    """The adversarial pass (#35): these gave a confident answer from no pixels, a raw
    ValueError, or every image under the current folder."""
    with pytest.raises(Coco4Error, match=message.replace("(", r"\(")):
        clf.predict(x)


def test_a_list_that_holds_itself_is_one_clear_error(clf):
    looped = []
    looped.append(looped)
    with pytest.raises(Coco4Error, match="nest too deep"):
        clf.predict(looped)


def test_an_eps_file_named_jpg_is_never_handed_to_ghostscript(clf, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n")
    with pytest.warns(SkippedImageWarning, match="photo.jpg: unreadable: cannot identify"):
        assert clf.predict(tmp_path) == []


def test_an_iterator_is_predicted_as_it_is_consumed(clf, predicted):
    """A generator of decoded images (what serve.py passes): every image drawn once, with the
    same results as the list of their files."""
    folder, _ = predicted
    files = sorted(folder.iterdir())[:5]
    drawn = []

    def images():
        for f in files:
            drawn.append(f)
            with Image.open(f) as im:
                yield im.copy()

    lazy = clf.predict(images(), batch_size=2)
    assert [r.probs for r in lazy] == [r.probs for r in clf.predict(files, batch_size=2)]
    assert len(drawn) == 5
