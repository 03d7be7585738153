"""The synthetic COCO generator: layout, COCO format, case coverage, determinism, learnability."""
import json
from itertools import combinations

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from coco4.data.coco_categories import CATEGORY_ID, COCO_CATEGORIES
from coco4.errors import Coco4Error
from coco4.synthetic import CASES, HARD, Look, get_args_parser, main, make_synthetic_coco

# pycocotools calls np.array(copy=False) on NumPy 2; harmless, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZES = ((64, 48), (48, 64), (56, 56))
TARGET_IDS = {CATEGORY_ID[c]: c for c in ("bird", "airplane", "train", "boat")}
SPLITS = ("train", "val")
PINNED_WITH = ("2.4.6", "13.0.0")  # numpy, Pillow: the default annotations' digest below


def _make(root, seed=0, lists_dir=None):
    return make_synthetic_coco(root, num_train=60, num_val=40, seed=seed, image_sizes=SIZES,
                               progress=False, lists_dir=lists_dir)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    summary = _make(root)
    cocos = {s: COCO(str(root / "annotations" / f"instances_{s}2017.json")) for s in SPLITS}
    return root, summary, cocos


def _case(anns, mode):
    """The case an image belongs to, worked out from its annotations and pixel mode alone."""
    cats = {a["category_id"] for a in anns}
    crowd = {a["category_id"] for a in anns if a["iscrowd"]}
    targets = cats & TARGET_IDS.keys()
    if not anns:
        return "no_annotations"
    if not targets:
        return "distractors_only"
    if len(targets) > 1:
        return "two_targets"
    if crowd:
        return "crowd_same_class" if crowd == cats else "crowd_other_class"
    if cats - targets:
        return "with_distractors"
    return "grayscale" if mode == "L" else "single"


def _kept_class(anns):
    """The project's filter: an image counts for class C when its category set is exactly {C}."""
    cats = {a["category_id"] for a in anns}
    return TARGET_IDS.get(next(iter(cats))) if len(cats) == 1 else None


def test_layout_and_file_names(dataset):
    root, summary, cocos = dataset
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "instances_train2017.json", "instances_val2017.json"]
    ids = {}
    for split in SPLITS:
        files = sorted(p.name for p in (root / "images" / f"{split}2017").iterdir())
        listed = sorted(img["file_name"] for img in cocos[split].dataset["images"])
        assert files == listed
        assert all(f == f"{int(f[:-4]):012d}.jpg" for f in files)
        ids[split] = set(cocos[split].getImgIds())
        assert summary[split]["images"] == len(ids[split])
        assert summary[split]["annotations"] == len(cocos[split].getAnnIds())
    assert len(ids["train"]) == 60 and len(ids["val"]) == 40
    assert not ids["train"] & ids["val"]
    ann_ids = [set(cocos[s].getAnnIds()) for s in SPLITS]
    assert not ann_ids[0] & ann_ids[1]
    assert summary["root"] == str(root)


def test_coco_structure_and_images(dataset):
    root, _, cocos = dataset
    for split in SPLITS:
        data = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
        assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
        assert data["categories"] == list(COCO_CATEGORIES)
        for img in data["images"]:
            assert set(img) == {"id", "file_name", "width", "height", "license", "coco_url",
                                "flickr_url", "date_captured"}
            with Image.open(root / "images" / f"{split}2017" / img["file_name"]) as im:
                assert im.format == "JPEG"
                assert im.size == (img["width"], img["height"])
                assert (im.width, im.height) in SIZES
        for ann in data["annotations"]:
            assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd",
                                "segmentation"}
            assert ann["iscrowd"] in (0, 1) and ann["area"] > 0
            assert all(isinstance(v, float) for v in ann["bbox"])


def test_official_categories():
    assert len(COCO_CATEGORIES) == 80
    assert [CATEGORY_ID[c] for c in ("bird", "airplane", "train", "boat")] == [16, 5, 7, 9]
    assert CATEGORY_ID["person"] == 1 and CATEGORY_ID["car"] == 3
    assert COCO_CATEGORIES[-1] == {"supercategory": "indoor", "id": 90, "name": "toothbrush"}
    missing = set(range(1, 91)) - {c["id"] for c in COCO_CATEGORIES}
    assert missing == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def test_every_case_in_every_split(dataset):
    root, summary, cocos = dataset
    for split in SPLITS:
        coco, found = cocos[split], {}
        for img in coco.dataset["images"]:
            with Image.open(root / "images" / f"{split}2017" / img["file_name"]) as im:
                mode = im.mode
            case = _case(coco.loadAnns(coco.getAnnIds(imgIds=img["id"])), mode)
            found[case] = found.get(case, 0) + 1
        assert set(found) == set(CASES), split
        assert found == summary[split]["cases"]
        assert found["single"] > len(coco.dataset["images"]) / 2


def test_filter_keeps_every_class_and_the_right_cases(dataset):
    root, _, cocos = dataset
    for split in SPLITS:
        coco, kept = cocos[split], {}
        for img in coco.dataset["images"]:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            cls = _kept_class(anns)
            if cls:
                kept[cls] = kept.get(cls, 0) + 1
            elif anns and {a["category_id"] for a in anns} <= TARGET_IDS.keys():
                assert len({a["category_id"] for a in anns}) == 2  # only two_targets is dropped
        assert set(kept) == set(TARGET_IDS.values())
        assert max(kept.values()) - min(kept.values()) <= 3, kept  # classes roughly balanced
        kept_crowd = [a for a in coco.dataset["annotations"] if a["iscrowd"] and _kept_class(
            coco.loadAnns(coco.getAnnIds(imgIds=a["image_id"])))]
        assert kept_crowd, "a crowd of the same class must survive the filter"


def test_grayscale_jpegs(dataset):
    root, _, cocos = dataset
    for split in SPLITS:
        modes = set()
        for img in cocos[split].dataset["images"]:
            with Image.open(root / "images" / f"{split}2017" / img["file_name"]) as im:
                modes.add(im.mode)
        assert modes == {"RGB", "L"}


def test_boxes_and_segmentations(dataset):
    _, _, cocos = dataset
    for coco in cocos.values():
        for ann in coco.dataset["annotations"]:
            img = coco.imgs[ann["image_id"]]
            h, w = img["height"], img["width"]
            x, y, bw, bh = ann["bbox"]
            assert x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
            box = np.zeros((h, w), np.uint8)
            box[int(y):int(y + bh), int(x):int(x + bw)] = 1
            if ann["iscrowd"]:
                seg = ann["segmentation"]
                assert isinstance(seg, dict) and seg["size"] == [h, w]
                assert sum(seg["counts"]) == h * w
                assert np.array_equal(coco.annToMask(ann), box)  # the box, column-major
                assert ann["area"] == bw * bh
            else:
                assert isinstance(seg := ann["segmentation"], list) and len(seg[0]) >= 6
                rle = mask_utils.frPyObjects(seg, h, w)
                poly_box = mask_utils.toBbox(mask_utils.merge(rle))
                assert np.abs(poly_box - ann["bbox"]).max() <= 2  # sharp tips rasterize thin
                xs, ys = seg[0][0::2], seg[0][1::2]  # COCO: the box is the polygon extent
                assert np.allclose([min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                                   ann["bbox"], atol=0.01)
                assert ann["area"] <= bw * bh


def test_classes_separable_by_colour(dataset):
    root, _, cocos = dataset
    means = {}
    for split, coco in cocos.items():
        for img in coco.dataset["images"]:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            cls = _kept_class(anns)
            if not cls or any(a["iscrowd"] for a in anns):
                continue
            with Image.open(root / "images" / f"{split}2017" / img["file_name"]) as im:
                if im.mode != "RGB":
                    continue
                pixels = np.asarray(im, dtype=np.float32)
            for a in anns:
                x, y, w, h = (int(v) for v in a["bbox"])
                means.setdefault(cls, []).append(pixels[y:y + h, x:x + w].reshape(-1, 3).mean(0))
    centres = {c: np.mean(v, axis=0) for c, v in means.items()}
    assert len(centres) == 4
    for a, b in combinations(centres, 2):
        assert np.linalg.norm(centres[a] - centres[b]) > 50, (a, b, centres)


def test_deterministic_per_seed(tmp_path):
    def contents(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    _make(tmp_path / "a", seed=3)
    _make(tmp_path / "b", seed=3)
    _make(tmp_path / "c", seed=4)
    a, b, c = (contents(tmp_path / n) for n in "abc")
    assert len(a) == 60 + 40 + 2
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)
    json_a = (tmp_path / "a" / "annotations" / "instances_val2017.json").read_bytes()
    json_c = (tmp_path / "c" / "annotations" / "instances_val2017.json").read_bytes()
    assert json_a != json_c


def test_cli_and_bad_arguments(tmp_path, capsys):
    args = get_args_parser().parse_args(["--root", str(tmp_path / "cli"), "--num-train", "8",
                                         "--num-val", "8", "--seed", "1"])
    summary = main(args)
    assert summary["train"]["images"] == 8 and all(summary["val"]["cases"].values())
    assert "train: 8 images" in capsys.readouterr().out
    assert get_args_parser().parse_args(["--root", "x", "--coco-size"]).coco_size
    with pytest.raises(Coco4Error, match="num_val"):
        make_synthetic_coco(tmp_path / "bad", num_train=10, num_val=3, progress=False)
    with pytest.raises(Coco4Error, match="image_sizes"):
        make_synthetic_coco(tmp_path / "bad", image_sizes=((20, 20),), progress=False)
    with pytest.raises(Coco4Error, match=r"^seed=-1: must be 0 or more$"):  # was numpy's error
        make_synthetic_coco(tmp_path / "bad", seed=-1, progress=False)


def test_lists_written_without_pycocotools_are_annotation_prepares(dataset, tmp_path):
    """The GPU machine has no pycocotools: the generator's own lists must be the ones the
    real filter (pycocotools, annotation_prepare.py) makes of the same annotations."""
    from coco4.data.coco_filter import prepare_lists

    mine, real = tmp_path / "mine", tmp_path / "real"
    _make(tmp_path / "coco", lists_dir=mine)  # the dataset fixture's images, seed and sizes
    prepare_lists(tmp_path / "coco/annotations/instances_train2017.json",
                  tmp_path / "coco/annotations/instances_val2017.json", real,
                  ["bird", "airplane", "train", "boat"])
    for name in ("annotation_train.txt", "annotation_val.txt"):
        lines = (mine / name).read_text().splitlines()
        assert len(lines) > 20
        assert sorted(lines) == sorted((real / name).read_text().splitlines()), name
        labels = [int(line.split()[1]) for line in lines]
        assert labels == sorted(labels) and set(labels) == {0, 1, 2, 3}  # grouped by label
    assert (mine / "classes.txt").read_text() == (real / "classes.txt").read_text()


def test_hard_images_keep_the_lists_with_smaller_objects(tmp_path):
    """``HARD`` draws the same plan (the same images of the same classes reach the lists)
    with smaller objects, and different pixels; the default look is the images as before."""
    def made(name, look):
        summary = make_synthetic_coco(tmp_path / name, num_train=60, num_val=20, seed=2,
                                      image_sizes=SIZES, progress=False,
                                      lists_dir=tmp_path / name / "data", look=look)
        boxes = json.loads((tmp_path / name / "annotations" /
                            "instances_train2017.json").read_text())["annotations"]
        share = np.mean([a["bbox"][2] * a["bbox"][3] / 56**2 for a in boxes if not a["iscrowd"]])
        return summary, share, (tmp_path / name / "data" / "annotation_train.txt").read_text()

    (plain, plain_share, plain_list), (hard, hard_share, hard_list) = (
        made("plain", Look()), made("hard", HARD))
    assert hard_list == plain_list and hard["train"]["cases"] == plain["train"]["cases"]
    assert hard_share < 0.6 * plain_share
    first = sorted((tmp_path / "plain" / "images" / "train2017").iterdir())[0]
    assert first.read_bytes() != (tmp_path / "hard" / "images" / "train2017" /
                                  first.name).read_bytes()


def test_the_default_images_are_the_ones_every_earlier_run_was_made_from(tmp_path):
    """Pinned: a small default set's annotations, every box and mask area of every drawn
    object (#31 grew the generator a harder look; the default stays what lists, studies and
    checkpoints were made from since 59cb2ed). Its JPEG bytes are left to the encoder's
    version; the digest is of the numpy and Pillow it was taken with (their drawing and random
    streams are theirs to change)."""
    import hashlib

    import PIL

    if (np.__version__, PIL.__version__) != PINNED_WITH:
        pytest.skip(f"the digest was taken with numpy, Pillow {PINNED_WITH}")

    make_synthetic_coco(tmp_path, num_train=40, num_val=10, seed=3, image_sizes=SIZES,
                        progress=False)
    digest = hashlib.sha256()
    for path in sorted((tmp_path / "annotations").glob("*.json")):
        digest.update(path.read_bytes())
    assert digest.hexdigest() == ("8579674cdb3d23a5382ecd882b9daf0cc4642d57c8cca4bf888ddb30"
                                  "59f74302")
