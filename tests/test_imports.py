"""The ``workbench`` package's modules import each other one way: no import cycle.

The graph is built statically (every module ast-parsed, relative imports resolved), with the
imports inside functions included: a function-local import runs later, but a cycle it closes is
still a cycle (the two modules cannot be understood, tested or moved apart), and moving an import
into a function is the usual way of hiding one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import workbench

PACKAGE = "workbench"
ROOT = Path(workbench.__file__).resolve().parent


def module_name(path: Path, root: Path = ROOT, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name of the module a `from ... import` in `module` imports from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(
    path: Path, modules: set[str], root: Path = ROOT, package: str = PACKAGE
) -> set[str]:
    """The package's modules that `path` imports, anywhere in it (functions included)."""
    name = module_name(path, root, package)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        # `import a.b.c` and `from a.b import c` run a/__init__ and a/b/__init__ first, but an
        # edge to every parent package would make each package's __init__ a hub of cycles it is
        # not part of: the edge goes to the most specific module named, and a parent package
        # counts where it is what is imported from.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else base)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root, package) for p in paths}
    return {module_name(p, root, package): imports_of(p, modules, root, package) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], set[str]]]:
    """Per strongly connected component of more than one module (Tarjan): a shortest cycle
    through it, as a path a -> b -> ... -> a, and every module of the component (what imports
    what among them is all tangled together, also where one path shows only two)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_path_through(c, graph), c) for c in components]


def _path_through(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside it)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strong component always has one


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, "import cycle(s) among workbench modules:\n" + "\n".join(
        f"{' -> '.join(path)}  (the modules tangled together: {', '.join(sorted(component))})"
        for path, component in found
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_workbench_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "workbench.harness.runner" in graph and graph["workbench.harness.runner"]
    assert_no_cycle(graph)


def test_the_graph_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    # the shape of the cycle runner.py once hid: a top-level relative import one way, a
    # function-local one back
    _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "sub/__init__.py": "",
            "sub/runner.py": "from .measure import CaseFailure\n",
            "sub/measure.py": (
                "class CaseFailure(Exception): ...\ndef run():\n    from . import convergence\n"
            ),
            "sub/convergence.py": "def f():\n    from ..sub.runner import CaseFailure\n",
            "sub/alone.py": "import pkg.sub.measure\nfrom pkg import sub\n",
        },
    )
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph["pkg.sub.convergence"] == {"pkg.sub.runner"}
    assert graph["pkg.sub.measure"] == {"pkg.sub.convergence"}
    assert graph["pkg.sub.alone"] == {"pkg.sub.measure", "pkg.sub"}
    ((cycle, component),) = cycles(graph)
    assert component == {"pkg.sub.convergence", "pkg.sub.runner", "pkg.sub.measure"}
    assert cycle == [
        "pkg.sub.convergence",
        "pkg.sub.runner",
        "pkg.sub.measure",
        "pkg.sub.convergence",
    ]
    message = "pkg.sub.convergence -> pkg.sub.runner -> pkg.sub.measure -> pkg.sub.convergence"
    with pytest.raises(AssertionError, match=re.escape(message)):
        assert_no_cycle(graph)
    graph["pkg.sub.convergence"].clear()  # the local import gone, so is the cycle
    assert_no_cycle(graph)
