"""The package's layout: no import cycle, late imports included, and every module importable
on its own in a fresh interpreter."""
import ast
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "coco4"


def module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, modules):
    """coco4 modules that ``path`` imports anywhere, inside functions too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from . import cache" names a module; "from .x import f" names x
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def find_cycle(graph):
    """One cycle of ``graph`` as a list of nodes, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_graph():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imported_modules(path, paths) for name, path in paths.items()}
    # importing a.b imports package a first
    for name in paths:
        if "." in name and name.rsplit(".", 1)[0] in paths:
            graph[name].add(name.rsplit(".", 1)[0])
    return graph


def test_the_graph_sees_late_imports():
    graph = package_graph()
    assert "coco4.checkpoint" in graph["coco4.trainer"]
    assert "coco4.synthetic" in graph["coco4.bench"]  # imported in a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    assert find_cycle(package_graph()) is None


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    names = sorted(package_graph())
    script = (f"import importlib, sys; sys.path.insert(0, {str(REPO)!r})\n"
              f"for name in {names!r}:\n"
              "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'coco4']:\n"
              "        del sys.modules[loaded]\n"
              "    importlib.import_module(name)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""  # no printing on import


def reachable(graph, start):
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_data_preparation_does_not_reach_up_to_the_training_config():
    graph = package_graph()
    data = [name for name in graph if name.startswith("coco4.data.")]
    assert data
    for name in data:
        assert "coco4.config" not in reachable(graph, name), name
    assert "coco4.config" in reachable(graph, "coco4.trainer")  # the check can see an import


ROOT_SCRIPTS = {p.stem for p in REPO.glob("*.py")}


def imports_of(path):
    """Every module name ``path`` imports (absolute, as written), and every name it uses."""
    modules, names = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules.add(node.module)
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name):
            names.add(node.id)
    return modules, names


def test_the_package_never_imports_or_runs_a_root_script_or_the_test_suite():
    """The demo calls package functions, the scripts call the package: never the other way."""
    assert {"train", "evaluate", "predict"} <= ROOT_SCRIPTS
    for path in PACKAGE.rglob("*.py"):
        name = str(path.relative_to(REPO))
        modules, names = imports_of(path)
        assert not modules & ROOT_SCRIPTS, (name, modules & ROOT_SCRIPTS)
        assert not any(m.split(".")[0] in ("pytest", "tools", "tests") for m in modules), name
        # the ways to run another file: a module run as a script, a file imported by its path
        assert "runpy" not in modules and "spec_from_file_location" not in names, name
        if "subprocess" in modules:  # the benchmark's --load: busy loops of its own
            assert name == "coco4/bench.py", name
        assert "pytest" not in path.read_text(), name


def test_the_repository_tools_live_outside_the_package():
    tools = {p.stem for p in (REPO / "tools").glob("*.py")} - {"__init__"}
    assert {"mutants", "balance_study", "unknowns"} <= tools
    assert not {p.stem for p in PACKAGE.rglob("*.py")} & tools
    assert not (PACKAGE / "devtools").exists()


def test_every_text_file_is_read_and_written_as_utf_8():
    """#35: atomic_write_text wrote in the locale's encoding while every reader expects UTF-8
    (under ISO-8859-1 an image named 鳥.jpg ended in a traceback). Each text-mode open(),
    read_text() and write_text() in the package names its encoding."""
    import ast

    unnamed = []
    for path in sorted((REPO / "coco4").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if isinstance(func, ast.Attribute) and name == "open" and not (
                    isinstance(func.value, ast.Name) and func.value.id in ("io",)):
                continue  # Image.open, os.open, gzip.open: not text files
            if name not in ("open", "read_text", "write_text") or (
                    name != "open" and not isinstance(func, ast.Attribute)):
                continue  # lists.read_text(path, what): the guarded helper itself
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode"
                      and isinstance(k.value, ast.Constant)]
            if any("b" in m for m in modes):
                continue
            if not any(k.arg == "encoding" for k in node.keywords):
                unnamed.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not unnamed, unnamed
