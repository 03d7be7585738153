"""The error table (docs/troubleshooting.md) against the program: each case below provokes one
documented message by running a script as a user would (through the runner of its ``__main__``
block, in a fresh folder, with the default relative paths), and compares the line it prints
with the table's row. The rows are read from the page, so a change to either side fails here.
In a row, ``...`` stands for text the page leaves out; everything else must be the program's
text exactly."""
import builtins
import json
import re

import pytest
import torch
from PIL import Image

from conftest import HAVE_PYCOCOTOOLS, REPO, run_script


def readme_rows() -> dict[str, list[str]]:
    """Each row of the table: its first message -> every backticked message in its first
    column (a row may give several: "A / B", "(also: C)")."""
    text = (REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    table = text.split("\n| message (after `error:`) |", 1)[1]
    rows = {}
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        first_column = re.split(r"(?<!\\)\|", line)[1]
        messages = re.findall(r"`([^`]+)`", first_column)
        rows[messages[0]] = messages
    return rows


def documented(row_start: str) -> list[str]:
    """The messages of the one row whose first message starts with ``row_start``."""
    found = [messages for first, messages in readme_rows().items()
             if first.startswith(row_start)]
    assert len(found) == 1, f"no row (or several) of the error table starts with {row_start!r}"
    return found[0]


def matches(pattern: str, line: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("..."))
    return re.fullmatch(regex, line) is not None


def run(monkeypatch, tmp_path, script, *argv, env=None):
    """The script's exit status and its one error line, run in ``tmp_path`` with ``env`` set."""
    monkeypatch.chdir(tmp_path)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    ran = run_script(script.removesuffix(".py"), *argv)
    return ran.status, ran.error


def write_list(tmp_path, lines, name="annotation_train.txt", encoding="utf-8"):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / name).write_text("".join(f"{line}\n" for line in lines),
                                          encoding=encoding)


def instances(tmp_path, data):
    ann = tmp_path / "coco" / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (ann / f"instances_{split}2017.json").write_text(json.dumps(data))


CATEGORIES = [{"id": i, "name": n} for i, n in enumerate(("bird", "airplane", "train", "boat"), 1)]
needs_pycocotools = pytest.mark.skipif(not HAVE_PYCOCOTOOLS, reason="annotation_prepare.py "
                                       "needs pycocotools")


def setup_nothing(tmp_path):
    pass


def setup_valid_list(tmp_path):
    write_list(tmp_path, [f"{i:012d}.jpg {i % 4}" for i in range(20)])


def setup_bad_label(tmp_path):
    write_list(tmp_path, [f"{i:012d}.jpg {i % 4}" for i in range(16)] + ["a.jpg x"])


def setup_repeated(tmp_path):
    lines = [f"{i:012d}.jpg {i % 4}" for i in range(11)]
    lines[2] = "000000000139.jpg 1"
    write_list(tmp_path, lines + ["000000000139.jpg 1"])


def setup_utf16(tmp_path):
    write_list(tmp_path, ["a.jpg 0"], encoding="utf-16")


def setup_empty(tmp_path):
    write_list(tmp_path, [])


def setup_captions(tmp_path):
    instances(tmp_path, {"images": [], "annotations": []})


def setup_keypoints(tmp_path):
    instances(tmp_path, {"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "person", "keypoints": ["nose"], "skeleton": []}]})


def setup_instances(tmp_path):
    instances(tmp_path, {"images": [], "annotations": [], "categories": CATEGORIES})


def setup_earlier_run(tmp_path):
    setup_valid_list(tmp_path)
    (tmp_path / "checkpoint").mkdir()
    for name in ("last.pt", "best.pt", "metrics.csv"):
        (tmp_path / "checkpoint" / name).write_text("x")
    (tmp_path / "checkpoint" / "tensorboard").mkdir()


def setup_pickled_callable(tmp_path):
    torch.save({"model_state_dict": {}, "hook": builtins.eval}, tmp_path / "model.pt")


def setup_garbage_checkpoint(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"<html>not found</html>")


def setup_file_in_the_way(tmp_path):
    setup_valid_list(tmp_path)
    (tmp_path / "checkpoint").write_text("a file where the output folder goes")


def setup_existing_out(tmp_path):
    setup_garbage_checkpoint(tmp_path)
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.jpg")
    (tmp_path / "preds.csv").write_text("file,label\n")


def setup_checkpoint_folder(tmp_path):
    setup_valid_list(tmp_path)
    (tmp_path / "checkpoint").mkdir()


def setup_repeated_class(tmp_path):
    setup_valid_list(tmp_path)
    (tmp_path / "data" / "classes.txt").write_text("bird\nairplane\nbird\nboat\n")


def setup_climbing_name(tmp_path):
    write_list(tmp_path, [f"{i:012d}.jpg {i % 4}" for i in range(3)] + ["../x.jpg 1"])


def setup_deep_json(tmp_path):
    ann = tmp_path / "coco" / "annotations"
    ann.mkdir(parents=True)
    for split in ("train", "val"):
        (ann / f"instances_{split}2017.json").write_text("[" * 100_000 + "]" * 100_000)


# (the start of the row, the script and its arguments, the setup, extra environment,
# the exit status)
CASES = [
    ("image list data/annotation_train.txt not found", ["train.py"], setup_nothing, None, 2),
    ("COCO annotations coco/annotations/", ["annotation_prepare.py"], setup_nothing, None, 2),
    ("... is not a COCO instances file: it has", ["annotation_prepare.py"], setup_captions, None,
     2),
    ("... is not a COCO instances file: it has", ["annotation_prepare.py"], setup_keypoints,
     None, 2),
    ("unknown COCO categories", ["annotation_prepare.py", "--classes", "brid"],
     setup_instances, None, 2),
    ("image folder coco/images/train2017 not found", ["train.py", "--device", "cpu"],
     setup_valid_list, None, 2),
    ("data/annotation_train.txt:17: label", ["train.py"], setup_bad_label, None, 2),
    ("data/annotation_train.txt:12: ", ["train.py"], setup_repeated, None, 2),
    ("image list data/annotation_train.txt is UTF-16", ["train.py"], setup_utf16, None, 2),
    ("image list ... is empty", ["train.py"], setup_empty, None, 2),
    ("--device must be", ["train.py", "--device", "gpu"], setup_nothing, None, 2),
    ("--device must be", ["train.py", "--batch-size", "0"], setup_nothing, None, 2),
    ("--image-size must be at most", ["train.py", "--image-size", "2048"], setup_nothing, None,
     2),
    ("--image-size must be at most", ["train.py", "--seed", "-1"], setup_nothing, None, 2),
    ("--image-size must be at most", ["train.py", "--workers", "500"], setup_nothing, None, 2),
    ("--accum-steps 5 splits", ["train.py", "--batch-size", "8", "--accum-steps", "5"],
     setup_nothing, None, 2),
    ("WORLD_SIZE=2 is set", ["train.py"], setup_valid_list, {"WORLD_SIZE": "2"}, 2),
    ("checkpoint already holds a run (last.pt", ["train.py", "--device", "cpu"],
     setup_earlier_run, None, 2),
    ("refusing model.pt", ["evaluate.py", "--checkpoint", "model.pt"], setup_pickled_callable,
     None, 2),
    ("model.pt is not a readable", ["evaluate.py", "--checkpoint", "model.pt"],
     setup_garbage_checkpoint, None, 2),
    ("cannot write to", ["train.py", "--device", "cpu"], setup_file_in_the_way, None, 2),
    ("--image my_brid.jpg", ["visualize.py", "--checkpoint", "model.pt", "--image",
                             "my_brid.jpg"], setup_garbage_checkpoint, None, 2),
    ("photos/nope.jpg: no such file", ["predict.py", "photos/nope.jpg", "--checkpoint",
                                       "model.pt"], setup_garbage_checkpoint, None, 2),
    ("preds.csv exists", ["predict.py", "photos", "--checkpoint", "model.pt", "--out",
                          "preds.csv"], setup_existing_out, None, 2),
    ("--min-class-acc must be", ["evaluate.py", "--min-class-acc", "nan"], setup_nothing, None,
     2),
    ("--min-class-acc must be", ["evaluate.py", "--min-class-acc", "95"], setup_nothing, None,
     2),
    ("--min-class-acc must be", ["predict.py", "photo.jpg", "--min-prob", "80"], setup_nothing,
     None, 2),
    ("checkpoint is a folder, not a checkpoint file", ["evaluate.py", "--checkpoint",
                                                       "checkpoint"], setup_checkpoint_folder,
     None, 2),
    ("--out ... is also an input image", ["predict.py", "photos/a.jpg", "--checkpoint",
                                            "model.pt", "--out", "photos/a.jpg", "--overwrite"],
     setup_existing_out, None, 2),
    ("data/classes.txt names the class 'bird' twice", ["train.py"], setup_repeated_class, None,
     2),
    ("data/annotation_train.txt:4: the file name '../x.jpg'", ["train.py"], setup_climbing_name,
     None, 2),
    ("... is not a COCO instances file (JSON nested", ["annotation_prepare.py"],
     setup_deep_json, None, 2),
    ("--negatives nope.txt: no such file", ["evaluate.py", "--negatives", "nope.txt"],
     setup_nothing, None, 2),
    ("--other 2000 asks for", ["annotation_prepare.py", "--other-holdout", "food"],
     setup_instances, None, 2),
]
if not torch.cuda.is_available():
    CASES.append(("--device cuda asked for CUDA", ["train.py", "--device", "cuda"],
                  setup_valid_list, None, 2))
if not torch.backends.mps.is_available():
    CASES.append(("--device mps asked for an Apple GPU", ["train.py", "--device", "mps"],
                  setup_valid_list, None, 2))


@pytest.mark.parametrize("row, argv, setup, env, status", [
    pytest.param(*case, id=f"{case[1][0]}:{case[0][:30]}:{case[2].__name__}",
                 marks=[needs_pycocotools] if case[1][0] == "annotation_prepare.py" else [])
    for case in CASES])
def test_the_program_prints_what_the_readme_documents(monkeypatch, tmp_path, row, argv, setup,
                                                      env, status):
    setup(tmp_path)
    code, line = run(monkeypatch, tmp_path, *argv, env=env)
    messages = documented(row)
    assert any(matches(m, line) for m in messages), (line, messages)
    assert code == status


def test_the_readme_names_each_case_it_tests_once():
    """Every row the cases above name exists once; a row renamed on the page fails here
    without running anything."""
    for row, *_ in CASES:
        documented(row)


def test_the_matching_rule():
    assert matches("a ... b", "a x y b") and not matches("a ... b", "a x y b c")
    assert not matches("cannot write to checkpoint: ...", "cannot write to /tmp/checkpoint: x")
