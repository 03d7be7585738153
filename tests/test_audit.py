"""The data audit annotation_prepare.py writes beside the lists: report.json and report.png.

Counts are worked by hand on hand-made COCO JSON, and checked against the written lists and the
JSON itself on the synthetic data; the rule is read back for a checkpoint (list_rule).
"""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_coco_filter import CAT_ID, DEFAULT, _prepare_args, make_coco, write_json

from coco4.data.audit import list_rule
from coco4.data.prepare import prepare_train_data
from coco4.distributed import DistEnv

import annotation_prepare
from conftest import run_script, train_args

CROWDED = ["person", "car", "dog", "cat", "bench", "bus", "truck", "bicycle", "motorcycle",
              "horse", "sheep"]
# every annotation 40 px (make_coco's default)
HAND = {
    1: [("bird", 0)],
    2: [("bird", 0), ("person", 0)],
    3: [("bird", 0), ("person", 0), ("car", 0)],
    4: [("bird", 0), ("boat", 0)],
    5: [("bird", 0), ("person", 1)],
    6: [("boat", 0)],
    7: [("dog", 0)],
    8: [("bird", 0), ("car", 0), ("car", 0)],
    9: [("bird", 0), ("dog", 0)],
    10: [("train", 0)] + [(name, 0) for name in CROWDED],  # 11 other categories
    11: [("train", 0), ("person", 0)],
    12: [("train", 0), ("car", 0)],
}

# worked by hand from HAND. exact: every image with anything beside the class is dropped.
# bird is in 1-5, 8, 9: kept 1; dropped 2, 3, 5, 8, 9 (other objects) and 4 (boat). Its dropped
# images hold person in 2, 3, 5; car in 3, 8 (once for 8); boat in 4; dog in 9: ties by name.
# train: 10, 11, 12 dropped; person 2, car 2, then nine with 1, of which the first eight by name.
EXACT_EXPECTED = {
    "bird": {"kept": 1, "dropped": 6, "only_this_class": 1, "one_target_plus_others": 5,
             "with_other_targets": 1,
             "top_disqualifiers": {"person": 3, "car": 2, "boat": 1, "dog": 1}},
    "airplane": {"kept": 0, "dropped": 0, "only_this_class": 0, "one_target_plus_others": 0,
                 "with_other_targets": 0, "top_disqualifiers": {}},
    "train": {"kept": 0, "dropped": 3, "only_this_class": 0, "one_target_plus_others": 3,
              "with_other_targets": 0,
              "top_disqualifiers": {"car": 2, "person": 2, "bench": 1, "bicycle": 1, "bus": 1,
                                    "cat": 1, "dog": 1, "horse": 1, "motorcycle": 1,
                                    "sheep": 1}},
    "boat": {"kept": 1, "dropped": 1, "only_this_class": 1, "one_target_plus_others": 0,
             "with_other_targets": 1, "top_disqualifiers": {"bird": 1}},
}
# dominant at 0.5: bird keeps 2, 5, 9 too (40 of 80 px); 3 and 8 (40 of 120) and 4 (boat) stay
# dropped. train keeps 11 and 12 (40 of 80), not 10 (40 of 480).
DOMINANT_CHANGES = {
    "bird": {"kept": 4, "dropped": 3, "top_disqualifiers": {"car": 2, "boat": 1, "person": 1}},
    "train": {"kept": 2, "dropped": 1,
              "top_disqualifiers": dict.fromkeys(sorted(CROWDED)[:10], 1)},
}


def run_prepare(tmp_path, images, *extra):
    path = write_json(tmp_path / "inst.json", make_coco(images))
    out = tmp_path / "data"
    annotation_prepare.main(_prepare_args("--train-json", path, "--val-json", path,
                                          "--out-dir", out, *extra))
    return out, json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("rule", ["exact", "dominant"])
def test_report_counts_and_ranking_worked_by_hand(tmp_path, rule):
    extra = ("--rule", "dominant") if rule == "dominant" else ()
    out, report = run_prepare(tmp_path, HAND, *extra)
    expected = {name: dict(counts) for name, counts in EXACT_EXPECTED.items()}
    if rule == "dominant":
        for name, changes in DOMINANT_CHANGES.items():
            expected[name].update(changes)
    assert report["rule"] == rule
    assert report["min_area_fraction"] == (0.5 if rule == "dominant" else None)
    for split in ("train", "val"):
        entry = report["splits"][split]
        assert entry["images"] == len(HAND) and entry["list"] == f"annotation_{split}.txt"
        assert entry["kept"] == sum(c["kept"] for c in expected.values())
        for name, counts in expected.items():
            got = entry["classes"][name]
            assert got == counts, name
            # the ranking is the order of the keys, not only the counts
            assert list(got["top_disqualifiers"]) == list(counts["top_disqualifiers"]), name


def lines_per_class(list_path):
    return Counter(int(line.split()[1]) for line in list_path.read_text().splitlines())


@pytest.fixture(scope="module")
def synthetic_root(demo_data):
    """The session's generated COCO folder (annotations and images), made once for all tests."""
    return demo_data / "coco"


@pytest.mark.parametrize("rule", ["exact", "dominant"])
def test_report_matches_the_lists_and_the_json(synthetic_root, tmp_path, rule):
    out = tmp_path / "data"
    annotation_prepare.main(_prepare_args("--coco-root", synthetic_root, "--out-dir", out,
                                          "--rule", rule))
    report = json.loads((out / "report.json").read_text())
    for split in ("train", "val"):
        entry = report["splits"][split]
        lines = lines_per_class(out / entry["list"])
        assert entry["kept"] == sum(lines.values())
        data = json.loads((synthetic_root / "annotations" / f"instances_{split}2017.json")
                          .read_text())
        assert entry["images"] == len(data["images"])
        cats_of = {img["id"]: set() for img in data["images"]}
        for a in data["annotations"]:
            cats_of[a["image_id"]].add(a["category_id"])
        targets = {CAT_ID[c] for c in DEFAULT}
        for label, name in enumerate(DEFAULT):
            counts = entry["classes"][name]
            assert counts["kept"] == lines[label], (split, name)
            holding = [c for c in cats_of.values() if CAT_ID[name] in c]
            assert counts["kept"] + counts["dropped"] == len(holding)
            plus_others = sum(1 for c in holding if len(c) > 1 and c & targets == {CAT_ID[name]})
            assert counts["one_target_plus_others"] == plus_others
            assert counts["with_other_targets"] == sum(1 for c in holding if len(c & targets) > 1)
        assert sum(counts["one_target_plus_others"] for counts in entry["classes"].values()) > 0


def test_report_png_is_an_image(tmp_path):
    out, _ = run_prepare(tmp_path, HAND)
    with Image.open(out / "report.png") as img:
        img.load()
        assert img.format == "PNG"
        assert 600 <= img.width <= 3000 and 400 <= img.height <= 3000, img.size


def test_list_rule_reads_the_report_for_that_very_list(tmp_path):
    out, _ = run_prepare(tmp_path, HAND, "--rule", "dominant", "--min-area-fraction", "0.25")
    train_list = out / "annotation_train.txt"
    assert list_rule(train_list) == {"rule": "dominant", "min_area_fraction": 0.25}
    with train_list.open("a") as f:  # edited by hand: the report no longer describes it
        f.write("extra.jpg 0\n")
    assert list_rule(train_list) == {"rule": None, "min_area_fraction": None}
    (out / "report.json").unlink()  # the original project's lists come without one
    assert list_rule(out / "annotation_val.txt")["rule"] is None


def test_a_training_run_records_the_rule_of_its_list(demo_data, tmp_path):
    """What the trainer stores in every checkpoint as "data": demo_data's lists come from
    annotation_prepare.py with the default rule."""
    cfg = train_args(demo_data, tmp_path / "run", cache_dir=str(tmp_path / "cache"))
    data = prepare_train_data(cfg.data_spec, DistEnv(), torch.device("cpu"), False, lambda m: None)
    assert data.report["list_rule"] == {"rule": "exact", "min_area_fraction": None}


@pytest.mark.parametrize("argv, fragment", [
    (["--rule", "dominant", "--min-area-fraction", "0"], "must be in (0, 1], got 0.0"),
    (["--rule", "dominant", "--min-area-fraction", "1.5"], "must be in (0, 1], got 1.5"),
    (["--rule", "dominant", "--min-area-fraction", "nan"], "must be in (0, 1], got nan"),
    (["--min-area-fraction", "0.5"], "--min-area-fraction applies to --rule dominant only"),
], ids=["zero", "above-one", "nan", "with-exact"])
def test_bad_min_area_fraction_is_one_line(tmp_path, argv, fragment):
    out = tmp_path / "data"
    ran = run_script("annotation_prepare", "--coco-root", tmp_path / "no_coco", "--out-dir", out,
                     *argv)
    assert ran.status == 2 and ran.err.count("\n") == 1 and fragment in ran.error
    assert not Path(out).exists()
