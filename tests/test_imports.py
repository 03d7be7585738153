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
