"""The docs against the code, so they cannot drift: every flag of every script is in its page's
flag table and every flag a table names exists; every relative link and image resolves (an
anchor to a heading that is there); every page is reachable from the README; and the snippets
the pages show are the ones run here, on an exported model, against predict.py."""
import contextlib
import importlib
import io
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import predict
from conftest import REPO, read_csv

PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
# every command line a page documents, by its flag table's marker: <!-- flags of NAME -->
SCRIPTS = {"annotation_prepare.py": "annotation_prepare", "train.py": "train",
           "evaluate.py": "evaluate", "visualize.py": "visualize", "predict.py": "predict",
           "export.py": "export", "serve.py": "serve", "coco4.demo": "coco4.demo",
           "coco4.bench": "coco4.bench"}


def flag_tables() -> dict[str, list[str]]:
    """Each marked flag table's first column, by the command it documents."""
    tables = {}
    for page in PAGES:
        for name, table in re.findall(r"<!-- flags of (\S+) -->\n((?:\|.*\n)+)",
                                      page.read_text()):
            assert name not in tables, f"two flag tables of {name}"
            rows = table.splitlines()[2:]  # after the header and its rule
            tables[name] = [re.split(r"(?<!\\)\|", row)[1] for row in rows]
    return tables


def documented_flags(cells: list[str]) -> set[str]:
    """The flags (and positional arguments) a table's first column names, in backticks."""
    return {token for cell in cells for token in re.findall(r"`([^`]+)`", cell)}


def parser_flags(module: str) -> tuple[set[str], set[str]]:
    """(the flags a user must find in the table, every name the parser accepts)."""
    parser = importlib.import_module(module).get_args_parser()
    needed, accepted = set(), set()
    for action in parser._actions:
        if action.dest == "help":
            continue
        names = [s for s in action.option_strings if s.startswith("--")] or [action.dest]
        needed.add(names[0])  # --x of a --x/--no-x pair
        accepted.update(names)
    return needed, accepted


def test_every_script_has_one_flag_table():
    assert set(flag_tables()) == set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_flag_table_names_every_flag_and_only_real_ones(name):
    documented = documented_flags(flag_tables()[name])
    needed, accepted = parser_flags(SCRIPTS[name])
    assert not needed - documented, f"{name}: flags missing from its table"
    assert not documented - accepted, f"{name}: the table names flags that do not exist"


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation but - and _ dropped,
    spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # comments in code blocks
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_and_image_resolves(page):
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert resolved.suffix == ".md" and anchor in anchors(resolved), \
                f"{page.name}: {target} names no heading of {resolved.name}"


def test_every_page_is_linked_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(REPO / "README.md")}
    assert not set(PAGES[1:]) - linked


def test_the_readme_is_a_front_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_the_link_check_sees_a_broken_link_and_anchor(tmp_path):
    """The checks above can fail: a renamed file and a heading that is not there."""
    page = tmp_path / "page.md"
    page.write_text("# A title\n[x](gone.md) [y](#a-title) [z](#no-such)\n")
    assert links(page) == ["gone.md", "#a-title", "#no-such"]
    assert anchors(page) == {"a-title"}
    assert not (tmp_path / "gone.md").exists()
    assert slug("Other backbones: `--arch`") == "other-backbones---arch"


# ---------------------------------------------------------------- the snippets, run


def snippets() -> dict[str, str]:
    """Each code block a page marks ``<!-- snippet: NAME -->``, by name."""
    found = {}
    for page in PAGES:
        for name, code in re.findall(r"<!-- snippet: (\S+) -->\n```python\n(.*?)```",
                                     page.read_text(), re.S):
            found[name] = code
    return found


@pytest.fixture(scope="module")
def exported(trained, demo_data, tmp_path_factory):
    """The shared checkpoint as ONNX and TorchScript, and predict.py's rows for 3 val images."""
    import export

    out = tmp_path_factory.mktemp("exported")
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        export.main(export.get_args_parser().parse_args(
            ["--checkpoint", str(trained), "--format", fmt, "--out", str(out / name)]))
    images = sorted((demo_data / "coco" / "images" / "val2017").iterdir())[:3]
    predict.main(predict.get_args_parser().parse_args(
        ["--checkpoint", str(trained), "--device", "cpu", "--workers", "0",
         *map(str, images), "--out", str(out / "preds.csv")]))
    return out, read_csv(out / "preds.csv")


def agrees(printed: str, row: dict):
    name, prob = printed.split()
    assert name == row["class"] and float(prob) == pytest.approx(float(row["prob"]), abs=1e-4)


def test_the_snippets_the_pages_show_are_the_ones_run_here():
    assert set(snippets()) == {"classify_onnx.py", "classify_opencv.py",
                               "classify_torchscript.py", "python_api.py"}
    readme = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert readme == [snippets()["classify_onnx.py"]]  # the front page shows the same one


def test_the_onnx_snippet_needs_no_torch_and_agrees_with_predict(exported, tmp_path):
    out, rows = exported
    (tmp_path / "classify.py").write_text(snippets()["classify_onnx.py"])
    (tmp_path / "blocked").mkdir()  # importing torch or torchvision there fails
    for name in ("torch", "torchvision"):
        (tmp_path / "blocked" / f"{name}.py").write_text(
            f"raise ImportError('the snippet must not need {name}')\n")
    env = {"PYTHONPATH": str(tmp_path / "blocked"), "PATH": "/usr/bin:/bin"}
    for row in rows:
        proc = subprocess.run([sys.executable, str(tmp_path / "classify.py"),
                               str(out / "model.onnx"), row["path"]], capture_output=True,
                              text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        agrees(proc.stdout, row)


def run_snippet(code: str, tmp_path: Path, *argv) -> str:
    """A snippet run as a script in this process (its imports are this suite's): its output."""
    script = tmp_path / "snippet.py"
    script.write_text(code)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", [str(script), *map(str, argv)])
        runpy.run_path(str(script), run_name="__main__")
    return printed.getvalue()


def test_the_opencv_snippet_agrees_with_predict(exported, tmp_path):
    pytest.importorskip("cv2")
    out, rows = exported
    meta = predict_classes_and_side(out)
    for row in rows:
        agrees(run_snippet(snippets()["classify_opencv.py"], tmp_path, out / "model.onnx",
                           meta[1], ",".join(meta[0]), row["path"]), row)


def test_the_torchscript_snippet_reads_the_metadata_and_agrees_with_predict(exported, tmp_path):
    out, rows = exported
    for row in rows:
        agrees(run_snippet(snippets()["classify_torchscript.py"], tmp_path,
                           out / "model.torchscript.pt", row["path"]), row)


def predict_classes_and_side(out: Path) -> tuple[list, int]:
    import json

    from coco4.exporting import read_metadata

    meta = read_metadata(out / "model.onnx", "onnx")
    return json.loads(meta["classes"]), int(meta["input_size"])


def test_the_python_api_snippet_agrees_with_predict(trained, exported, tmp_path):
    _, rows = exported
    row = rows[0]
    printed = run_snippet(snippets()["python_api.py"], tmp_path, trained, row["path"],
                          row["path"]).splitlines()
    assert printed[0] == "['bird', 'airplane', 'train', 'boat'] 32"
    path, label, score = printed[1].split()
    assert (path, label) == (row["path"], row["class"])
    assert float(score) == pytest.approx(float(row["prob"]), abs=1e-5)
    assert len(printed) == 4 and all(line.startswith(row["class"] + " {") for line in printed[2:])
