"""Image lists (``<file_name> <label>`` per line, the original project's format) and classes.txt."""
import re
from pathlib import Path

import pytest

from coco4.data.lists import DEFAULT_CLASSES, read_classes, read_list, write_classes, write_list
from coco4.errors import Coco4Error

# The first 40 and last 20 lines of the val list the original project published.
ORIGINAL_VAL = Path(__file__).parent / "fixtures" / "original_annotation_val.txt"


def test_reads_the_original_projects_list():
    lst = read_list(ORIGINAL_VAL, num_classes=4)
    raw = [line.split() for line in ORIGINAL_VAL.read_text().splitlines()]
    assert len(lst) == len(raw) == 60
    assert list(lst.files) == [name for name, _ in raw]
    assert list(lst.labels) == [int(label) for _, label in raw]
    assert all(type(y) is int for y in lst.labels)
    assert all(re.fullmatch(r"\d{12}\.jpg", f) for f in lst.files)
    assert lst.files[0] == "000000523811.jpg" and lst.labels[0] == 0
    assert len(set(lst.labels)) >= 2
    assert lst.path == ORIGINAL_VAL


def test_write_list_reproduces_the_original_format_byte_for_byte(tmp_path):
    lst = read_list(ORIGINAL_VAL)
    out = tmp_path / "sub" / "annotation_val.txt"
    write_list(out, lst.files, lst.labels)
    assert out.read_bytes() == ORIGINAL_VAL.read_bytes()
    again = read_list(out, num_classes=4)
    assert (again.files, again.labels) == (lst.files, lst.labels)


def test_round_trip_any_labels(tmp_path):
    files = [f"img_{i}.png" for i in range(7)]
    labels = [3, 0, 1, 2, 2, 0, 6]
    write_list(tmp_path / "l.txt", files, labels)
    lst = read_list(tmp_path / "l.txt", num_classes=7)
    assert list(lst.files) == files and list(lst.labels) == labels
    assert not [p for p in tmp_path.iterdir() if p.name != "l.txt"], "no temporary file left"


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("\na.jpg 1\n   \nb.jpg 0\n\n\t\nc.jpg 2  \n")
    lst = read_list(path, num_classes=3)
    assert lst.files == ("a.jpg", "b.jpg", "c.jpg") and lst.labels == (1, 0, 2)


def test_read_classes_default_is_the_original_four(tmp_path):
    assert tuple(read_classes(tmp_path)) == ("bird", "airplane", "train", "boat")
    assert tuple(DEFAULT_CLASSES) == ("bird", "airplane", "train", "boat")


def test_read_classes_from_file(tmp_path):
    (tmp_path / "classes.txt").write_text("boat\n\n  dog \ntraffic light\n")
    assert tuple(read_classes(tmp_path)) == ("boat", "dog", "traffic light")


def test_write_classes_round_trip(tmp_path):
    write_classes(tmp_path, ["train", "person", "bird"])
    assert (tmp_path / "classes.txt").read_text() == "train\nperson\nbird\n"
    assert tuple(read_classes(tmp_path)) == ("train", "person", "bird")


def test_read_classes_needs_two(tmp_path):
    (tmp_path / "classes.txt").write_text("bird\n")
    with pytest.raises(Coco4Error, match="classes.txt"):
        read_classes(tmp_path)


BAD_LINES = {
    "missing_label": "000000000003.jpg",
    "non_integer_label": "000000000003.jpg bird",
    "float_label": "000000000003.jpg 1.0",
    "negative_label": "000000000003.jpg -1",
    "label_too_large": "000000000003.jpg 4",
    "extra_column": "000000000003.jpg 1 2",
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_malformed_line_names_file_and_line(tmp_path, case):
    path = tmp_path / "annotation_train.txt"
    # line 4 is the bad one: a blank line before it still counts, as in an editor
    path.write_text(f"000000000001.jpg 0\n\n000000000002.jpg 3\n{BAD_LINES[case]}\n"
                    "000000000004.jpg 2\n")
    with pytest.raises(Coco4Error) as err:
        read_list(path, num_classes=4)
    assert f"{path}:4" in str(err.value)


def test_label_range_only_checked_against_num_classes(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("a.jpg 0\nb.jpg 4\n")
    assert read_list(path).labels == (0, 4)
    assert read_list(path, num_classes=5).labels == (0, 4)
    with pytest.raises(Coco4Error, match=re.escape(f"{path}:2")):
        read_list(path, num_classes=4)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_list_is_an_error(tmp_path, text):
    path = tmp_path / "annotation_val.txt"
    path.write_text(text)
    with pytest.raises(Coco4Error) as err:
        read_list(path)
    assert str(path) in str(err.value)


def test_missing_list_says_run_annotation_prepare(tmp_path):
    path = tmp_path / "data" / "annotation_train.txt"
    with pytest.raises(Coco4Error) as err:
        read_list(path)
    assert str(path) in str(err.value)
    assert "annotation_prepare.py" in str(err.value)


def test_a_byte_order_mark_is_not_part_of_the_first_file_name(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbfa.jpg 0\nb.jpg 1\n")  # as Windows Notepad saves UTF-8
    assert read_list(path).files == ("a.jpg", "b.jpg")
    (tmp_path / "classes.txt").write_bytes(b"\xef\xbb\xbfcat\ndog\n")
    assert read_classes(tmp_path) == ("cat", "dog")


@pytest.mark.parametrize("data, fragment", [
    ("a.jpg 0\nb.jpg 1\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    ("caf\u00e9.jpg 0\n".encode("latin-1"), r"is not UTF-8 text (byte 3: b'\xe9')"),
    (b"a.jpg 0\n\x00\x01\x02", "holds NUL bytes: not a text file"),
], ids=["utf-16", "latin-1", "binary"])
def test_a_list_that_is_not_utf8_text_is_a_one_line_error(tmp_path, data, fragment):
    path = tmp_path / "list.txt"
    path.write_bytes(data)
    with pytest.raises(Coco4Error, match=re.escape(f"image list {path} {fragment}")):
        read_list(path)
    (tmp_path / "classes.txt").write_bytes(data)
    with pytest.raises(Coco4Error, match=re.escape(f"class file {tmp_path / 'classes.txt'}")):
        read_classes(tmp_path)


@pytest.mark.parametrize("second", ["a.jpg 0", "a.jpg 2"], ids=["same-label", "other-label"])
def test_an_image_listed_twice_is_refused(tmp_path, second):
    """Else it could land in both the training and the held-out validation split."""
    path = tmp_path / "list.txt"
    path.write_text(f"a.jpg 0\nb.jpg 1\n\n{second}\n")
    with pytest.raises(Coco4Error, match=re.escape(f"{path}:4: a.jpg is listed again (first on "
                                                   "line 1); list each image once")):
        read_list(path)


def test_a_name_is_refused_only_where_it_leaves_the_image_folder():
    from coco4.data.lists import file_name_problem

    outside = "it is an absolute path, outside the image folder"
    assert file_name_problem("C:/photos/a.jpg") == outside
    assert file_name_problem("/photos/a.jpg") == outside
    # a colon is a legal character of a file name here, not a drive
    assert file_name_problem("a:1.jpg") is None and file_name_problem("sub/a:b.jpg") is None
