"""COCO instances JSON -> single-class lists: the original project's rule, annotation_prepare.py.

The rule: an image is kept for class C when the set of category ids over ALL its annotations
(crowd annotations included) is exactly {C}.
"""
import json
import re

import pytest

from coco4.data.coco_categories import COCO_CATEGORIES
from coco4.data.coco_filter import load_coco, prepare_lists, select_images
from coco4.data.lists import read_classes, read_list
from coco4.errors import Coco4Error

import annotation_prepare
from conftest import run_script

DEFAULT = ("bird", "airplane", "train", "boat")
CAT_ID = {c["name"]: c["id"] for c in COCO_CATEGORIES}


def make_coco(images):
    """A COCO instances dict with the official categories.

    ``images`` maps an image id to a list of (category name, iscrowd) pairs, one per annotation,
    or (category name, iscrowd, area) triples; the area is 40 where not given.
    """
    data = {"info": {}, "licenses": [], "categories": [dict(c) for c in COCO_CATEGORIES],
            "images": [], "annotations": []}
    ann_id = 1
    for image_id, anns in images.items():
        data["images"].append({"id": image_id, "file_name": f"{image_id:012d}.jpg",
                               "width": 64, "height": 48})
        for k, (name, crowd, *area) in enumerate(anns):
            seg = ({"counts": [0, 64 * 48], "size": [48, 64]} if crowd
                   else [[1.0 + k, 1.0, 10.0 + k, 1.0, 10.0 + k, 10.0]])
            data["annotations"].append({"id": ann_id, "image_id": image_id,
                                        "category_id": CAT_ID[name], "iscrowd": int(crowd),
                                        "bbox": [1.0 + k, 1.0, 9.0, 9.0],
                                        "area": area[0] if area else 40.0,
                                        "segmentation": seg})
            ann_id += 1
    return data


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def fname(image_id):
    return f"{image_id:012d}.jpg"


# (annotations of one image, the class it is kept for among DEFAULT, or None when dropped)
CASES = {
    "target_only": ([("bird", 0)], "bird"),
    "several_same_target": ([("airplane", 0), ("airplane", 0), ("airplane", 0)], "airplane"),
    "target_and_distractor": ([("bird", 0), ("person", 0)], None),
    "two_targets": ([("bird", 0), ("boat", 0)], None),
    "distractor_only": ([("dog", 0), ("car", 0)], None),
    "no_annotations": ([], None),
    "target_and_crowd_same_class": ([("boat", 0), ("boat", 1)], "boat"),
    "target_and_crowd_of_distractor": ([("boat", 0), ("person", 1)], None),
    "crowd_only_of_target": ([("train", 1)], "train"),
    "crowd_only_of_distractor": ([("person", 1)], None),
    "crowd_of_other_target": ([("train", 0), ("bird", 1)], None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_per_case(tmp_path, case):
    anns, kept_for = CASES[case]
    # a second, plainly kept image of another class so no case is judged on an empty split
    other = "airplane" if kept_for != "airplane" else "bird"
    path = write_json(tmp_path / "inst.json", make_coco({7: anns, 8: [(other, 0)]}))
    files, labels = select_images(load_coco(path), DEFAULT)
    got = dict(zip(files, labels))
    assert len(files) == len(got), "an image is listed twice"
    assert got.get(fname(8)) == DEFAULT.index(other)
    if kept_for is None:
        assert fname(7) not in got
    else:
        assert got.get(fname(7)) == DEFAULT.index(kept_for)


def all_cases_json(tmp_path):
    images = {i: anns for i, (anns, _) in enumerate(CASES.values(), start=1)}
    return write_json(tmp_path / "all.json", make_coco(images))


def expected_for(classes, images):
    """The rule recomputed here: image id -> label for every kept image."""
    ids = [CAT_ID[c] for c in classes]
    out = {}
    for image_id, anns in images.items():
        cats = {CAT_ID[name] for name, _ in anns}
        if len(cats) == 1 and next(iter(cats)) in ids:
            out[fname(image_id)] = ids.index(next(iter(cats)))
    return out


def test_all_cases_together_and_grouped_by_class_order(tmp_path):
    path = all_cases_json(tmp_path)
    files, labels = select_images(load_coco(path), DEFAULT)
    expected = {fname(i): DEFAULT.index(kept) for i, (_, kept) in
                enumerate(CASES.values(), start=1) if kept}
    assert dict(zip(files, labels)) == expected and len(files) == len(expected)
    assert labels == sorted(labels), "images are grouped by label in class order"


def test_labels_follow_classes_order(tmp_path):
    coco = load_coco(all_cases_json(tmp_path))
    forward = dict(zip(*select_images(coco, DEFAULT)))
    reversed_classes = tuple(reversed(DEFAULT))
    backward = dict(zip(*select_images(coco, reversed_classes)))
    assert forward.keys() == backward.keys()
    assert all(backward[f] == len(DEFAULT) - 1 - forward[f] for f in forward)
    assert set(forward.values()) == {0, 1, 2, 3}
    labels = select_images(coco, reversed_classes)[1]
    assert labels == sorted(labels)


def test_any_coco_class_and_a_subset(tmp_path):
    """The rule is relative to the chosen classes: a person-only image counts for 'person'."""
    images = {i: anns for i, (anns, _) in enumerate(CASES.values(), start=1)}
    coco = load_coco(write_json(tmp_path / "all.json", make_coco(images)))
    classes = ("person", "boat")
    files, labels = select_images(coco, classes)
    assert dict(zip(files, labels)) == expected_for(classes, images)
    assert 0 in labels and 1 in labels


def test_unknown_class_lists_valid_names(tmp_path):
    coco = load_coco(all_cases_json(tmp_path))
    with pytest.raises(Coco4Error) as err:
        select_images(coco, ("bird", "aeroplane"))
    msg = str(err.value)
    assert "aeroplane" in msg
    for name in ("bird", "airplane", "train", "boat", "person", "toothbrush"):
        assert name in msg


def test_duplicated_class_is_an_error(tmp_path):
    coco = load_coco(all_cases_json(tmp_path))
    with pytest.raises(Coco4Error, match="bird"):
        select_images(coco, ("bird", "boat", "bird"))


def test_missing_json_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "instances_val2017.json"
    with pytest.raises(Coco4Error) as err:
        load_coco(missing)
    assert str(missing) in str(err.value)


def test_missing_json_through_prepare_lists(tmp_path):
    train = all_cases_json(tmp_path)
    missing = tmp_path / "missing_val.json"
    with pytest.raises(Coco4Error) as err:
        prepare_lists(train, missing, tmp_path / "out", DEFAULT)
    assert str(missing) in str(err.value)


def test_truncated_json_is_a_coco4_error(tmp_path):
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(make_coco({1: [("bird", 0)]}))[:-40])  # an interrupted unzip
    with pytest.raises(Coco4Error) as err:
        load_coco(path)
    assert str(path) in str(err.value)


def test_json_that_is_not_an_object_is_a_coco4_error(tmp_path):
    path = tmp_path / "instances_val2017.json"
    path.write_text("[]")
    with pytest.raises(Coco4Error, match="instances_val2017.json"):
        load_coco(path)


def test_captions_json_instead_of_instances_is_a_coco4_error(tmp_path):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps({"info": {}, "images": [{"id": 1, "file_name": fname(1),
                                                        "width": 8, "height": 8}],
                                "annotations": [{"id": 1, "image_id": 1, "caption": "a bird"}]}))
    with pytest.raises(Coco4Error, match="captions_val2017.json"):
        select_images(load_coco(path), DEFAULT)


def test_failed_run_leaves_previous_outputs_consistent(tmp_path):
    train = write_json(tmp_path / "t.json", make_coco({1: [("bird", 0)], 2: [("dog", 0)]}))
    out = tmp_path / "data"
    prepare_lists(train, train, out, DEFAULT)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(Coco4Error):
        prepare_lists(train, tmp_path / "typo.json", out, ("dog", "bird"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _prepare_args(*argv):
    return annotation_prepare.get_args_parser().parse_args([str(a) for a in argv])


def test_annotation_prepare_main_writes_lists(tmp_path, capsys):
    train_images = {i: anns for i, (anns, _) in enumerate(CASES.values(), start=1)}
    val_images = {100: [("boat", 0)], 101: [("bird", 0), ("boat", 0)], 102: [("train", 0)],
                  103: []}
    root = tmp_path / "coco"
    write_json(root / "annotations" / "instances_train2017.json", make_coco(train_images))
    write_json(root / "annotations" / "instances_val2017.json", make_coco(val_images))
    out = tmp_path / "data"
    counts = annotation_prepare.main(_prepare_args("--coco-root", root, "--out-dir", out))

    assert sorted(p.name for p in out.iterdir()) == [
        "annotation_train.txt", "annotation_val.txt", "classes.txt", "report.json", "report.png"]
    assert (out / "classes.txt").read_text().split("\n") == [*DEFAULT, ""]
    assert read_classes(out) == DEFAULT
    for split, images in (("train", train_images), ("val", val_images)):
        text = (out / f"annotation_{split}.txt").read_text()
        lines = text.splitlines()
        assert text.endswith("\n") and all(len(line.split(" ")) == 2 for line in lines)
        got = {f: int(y) for f, y in (line.split(" ") for line in lines)}
        expected = expected_for(DEFAULT, images)
        assert got == expected and len(lines) == len(expected)
        parsed = read_list(out / f"annotation_{split}.txt", num_classes=4)
        assert dict(zip(parsed.files, parsed.labels)) == expected
        assert counts[split] == {c: sum(1 for y in expected.values() if y == i)
                                 for i, c in enumerate(DEFAULT)}
    printed = capsys.readouterr().out
    assert "val: 2 images (bird 0, airplane 0, train 1, boat 1)" in printed


def test_annotation_prepare_explicit_jsons_and_classes(tmp_path):
    images = {1: [("boat", 0)], 2: [("bird", 0)], 3: [("bird", 0), ("bird", 1)], 4: [("dog", 0)]}
    train = write_json(tmp_path / "t.json", make_coco(images))
    val = write_json(tmp_path / "v.json", make_coco({9: [("dog", 0)], 10: [("bird", 0)]}))
    out = tmp_path / "lists"
    annotation_prepare.main(_prepare_args("--coco-root", tmp_path / "absent", "--train-json",
                                          train, "--val-json", val, "--out-dir", out,
                                          "--classes", "dog", "bird"))
    assert read_classes(out) == ("dog", "bird")
    train_list = read_list(out / "annotation_train.txt", num_classes=2)
    assert dict(zip(train_list.files, train_list.labels)) == expected_for(("dog", "bird"), images)
    val_list = read_list(out / "annotation_val.txt", num_classes=2)
    assert list(zip(val_list.files, val_list.labels)) == [(fname(9), 0), (fname(10), 1)]


def test_annotation_prepare_unknown_class_writes_nothing(tmp_path):
    path = all_cases_json(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(Coco4Error, match="valid names"):
        annotation_prepare.main(_prepare_args("--train-json", path, "--val-json", path,
                                              "--out-dir", out, "--classes", "bird", "plane"))
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def synthetic_root(demo_data):
    """The session's generated COCO folder (annotations and images), made once for all tests."""
    return demo_data / "coco"


def test_annotation_prepare_script_on_synthetic_coco(synthetic_root, tmp_path):
    out = tmp_path / "data"
    ran = run_script("annotation_prepare", "--coco-root", synthetic_root, "--out-dir", out)
    assert ran.status == 0, ran.err
    assert (out / "classes.txt").read_text().splitlines() == list(DEFAULT)
    for split in ("train", "val"):
        data = json.loads((synthetic_root / "annotations" / f"instances_{split}2017.json")
                          .read_text())
        cats_of = {img["file_name"]: set() for img in data["images"]}
        id_to_file = {img["id"]: img["file_name"] for img in data["images"]}
        for a in data["annotations"]:  # crowd or not, every annotation counts
            cats_of[id_to_file[a["image_id"]]].add(a["category_id"])
        target_ids = [CAT_ID[c] for c in DEFAULT]
        rule = {f: target_ids.index(next(iter(c))) for f, c in cats_of.items()
                if len(c) == 1 and next(iter(c)) in target_ids}

        lines = (out / f"annotation_{split}.txt").read_text().splitlines()
        written = []
        for line in lines:  # each line checked on its own against the JSON
            name, label = line.split(" ")
            assert name in cats_of, line
            assert cats_of[name] == {target_ids[int(label)]}, line
            written.append((name, int(label)))
        assert len(set(written)) == len(written)
        assert dict(written) == rule
        assert [y for _, y in written] == sorted(y for _, y in written)
        assert set(rule.values()) == {0, 1, 2, 3}, "synthetic data has every class"
        # the synthetic data holds crowd-of-same-class images: at least one must be kept
        crowd_files = {id_to_file[a["image_id"]] for a in data["annotations"] if a["iscrowd"]}
        assert crowd_files & rule.keys()
        assert f"{split}: {len(rule)} images" in ran.out


def test_annotation_prepare_script_unknown_class(synthetic_root, tmp_path):
    out = tmp_path / "data"
    ran = run_script("annotation_prepare", "--coco-root", synthetic_root, "--out-dir", out,
                     "--classes", "bird", "zeppelin")
    assert ran.status == 2 and ran.err.count("\n") == 1
    assert "zeppelin" in ran.error and "airplane" in ran.error
    assert not (out / "annotation_train.txt").exists()


def test_annotation_prepare_script_missing_coco(tmp_path):
    ran = run_script("annotation_prepare", "--coco-root", tmp_path / "no_coco",
                     "--out-dir", tmp_path / "data")
    assert ran.status == 2 and ran.err.count("\n") == 1
    assert str(tmp_path / "no_coco" / "annotations" / "instances_train2017.json") in ran.error


@pytest.mark.parametrize("script", ["annotation_prepare", "train", "evaluate", "visualize",
                                    "predict", "export"])
def test_script_help(script):
    ran = run_script(script, "--help")
    assert ran.status == 0, ran.err
    assert ran.out.startswith("usage:") and "--help" in ran.out


def _broken(change):
    data = make_coco({1: [("bird", 0)], 2: [("boat", 0)]})
    change(data)
    return data


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["annotations"][1].update(image_id=99),
     "annotations[1] (id 2) names image_id 99, but there is no such image"),
    (lambda d: d["annotations"][0].update(category_id=1000),
     "annotations[0] (id 1) names category_id 1000, but there is no such category"),
    (lambda d: d["annotations"][0].pop("category_id"),
     "annotations[0] has category_id None; expected an integer"),
    (lambda d: d["images"][0].update(id="1"), "images[0] has id '1'; expected an integer"),
    (lambda d: d["images"][1].update(id=1), "images[1] repeats id 1; each id names one entry"),
    (lambda d: d["images"][1].update(file_name=fname(1)),
     "images repeat the file_name '000000000001.jpg'"),
    (lambda d: d["images"][0].update(file_name="my bird.jpg"),
     "images[0] (id 1) has the file name 'my bird.jpg', which a list line cannot hold"),
    (lambda d: d["categories"].append({"id": 999, "name": "bird", "supercategory": "animal"}),
     "categories repeat the name 'bird'; the rule could not tell which is meant"),
    (lambda d: d["categories"][0].update(id=True), "categories[0] has id True; expected an"),
    (lambda d: d["annotations"].append("bird"), "annotations[2] is a str, not an object"),
    (lambda d: d.update(images={}), "'images' is a dict, not a list"),
], ids=["dangling-image", "dangling-category", "missing-field", "id-of-wrong-type",
        "repeated-image-id", "repeated-file-name", "unlistable-file-name", "repeated-category",
        "bool-id", "entry-not-an-object", "section-not-a-list"])
def test_every_entry_the_rule_reads_is_checked_and_named(tmp_path, change, fragment):
    path = write_json(tmp_path / "instances_val2017.json", _broken(change))
    with pytest.raises(Coco4Error, match="^" + re.escape(f"{path}: {fragment}")):
        load_coco(path)


# --rule dominant: (annotations as (name, iscrowd, area), the class kept for, or None), at 0.5
DOMINANT = {"rule": "dominant", "min_area_fraction": 0.5}
DOMINANT_CASES = {
    "target_only": ([("bird", 0, 40)], "bird"),
    "target_covers_more": ([("bird", 0, 60), ("person", 0, 40)], "bird"),
    "target_covers_too_little": ([("bird", 0, 40), ("person", 0, 60)], None),
    "exactly_the_fraction": ([("train", 0, 50), ("car", 0, 50)], "train"),
    "same_class_areas_summed": ([("airplane", 0, 30), ("airplane", 0, 30), ("person", 0, 50)],
                                "airplane"),
    "two_targets_whatever_the_areas": ([("bird", 0, 90), ("boat", 0, 10)], None),
    "crowd_of_distractor_weighs_in": ([("boat", 0, 40), ("person", 1, 60)], None),
    "crowd_of_target_weighs_in": ([("boat", 0, 20), ("boat", 1, 40), ("person", 0, 50)], "boat"),
    "crowd_of_other_target": ([("train", 0, 90), ("bird", 1, 10)], None),
    "distractor_only": ([("dog", 0, 40)], None),
    "no_annotations": ([], None),
}


@pytest.mark.parametrize("case", sorted(DOMINANT_CASES))
def test_dominant_rule_per_case(tmp_path, case):
    anns, kept_for = DOMINANT_CASES[case]
    other = "airplane" if kept_for != "airplane" else "bird"
    path = write_json(tmp_path / "inst.json", make_coco({7: anns, 8: [(other, 0)]}))
    got = dict(zip(*select_images(load_coco(path), DEFAULT, DOMINANT)))
    assert got.get(fname(8)) == DEFAULT.index(other)
    assert got.get(fname(7)) == (None if kept_for is None else DEFAULT.index(kept_for))


@pytest.mark.parametrize("fraction, kept", [(0.07, True), (0.08, False), (0.06, True)])
def test_dominant_boundary_is_inclusive(tmp_path, fraction, kept):
    """7 of 100 at 0.07 is kept, though 0.07 * 100 is 7.000000000000001 in floats."""
    path = write_json(tmp_path / "inst.json", make_coco({
        1: [("bird", 0, 7), ("person", 0, 93)], 2: [("boat", 0)]}))
    rule = {"rule": "dominant", "min_area_fraction": fraction}
    files, _ = select_images(load_coco(path), DEFAULT, rule)
    assert (fname(1) in files) == kept


def test_dominant_keeps_everything_exact_keeps(tmp_path):
    images = {i: anns for i, (anns, _) in enumerate(CASES.values(), start=1)}
    coco = load_coco(write_json(tmp_path / "all.json", make_coco(images)))
    exact = dict(zip(*select_images(coco, DEFAULT)))
    dominant = dict(zip(*select_images(coco, DEFAULT, DOMINANT)))
    assert exact.items() <= dominant.items()
    # every annotation is 40 px: a target beside one distractor is exactly half, kept
    added = {"target_and_distractor", "target_and_crowd_of_distractor"}
    assert dominant.keys() - exact.keys() == {fname(list(CASES).index(c) + 1) for c in added}


@pytest.mark.parametrize("area", ["40", None, -1.0, float("nan"), True])
def test_dominant_needs_a_numeric_area(tmp_path, area):
    data = make_coco({1: [("bird", 0)], 2: [("boat", 0), ("person", 0)]})
    data["annotations"][2]["area"] = area
    if area is None:
        del data["annotations"][2]["area"]
    path = write_json(tmp_path / "inst.json", data)
    with pytest.raises(Coco4Error, match=re.escape(f"{path}: annotations[2] (id 3) has area")):
        prepare_lists(path, path, tmp_path / "out", DEFAULT, DOMINANT)
    assert not (tmp_path / "out").exists()
    prepare_lists(path, path, tmp_path / "out", DEFAULT)  # the exact rule reads no area
