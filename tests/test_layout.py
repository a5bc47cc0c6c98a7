"""The layout the style guide fixes ("Layout shows the architecture"), read from the source
text (``ast``), nothing imported: no package of the project imports itself in a circle,
the store's leaves (``store.schema``, ``store.errors``) import no other store module, and
the floors ``benchmarks -> icl_cli -> store`` have no arrow back up.

An import inside a function counts as an arrow like one at the top of a module (a lazy
import only postpones the circle), and so does one under ``if TYPE_CHECKING``. Imports of
the standard library and of third-party libraries are never arrows: a lazy ``import
torch`` is how a command stays fast, not a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("benchmarks", "icl_cli", "store")  # each may import those after it, never before
LEAVES = ("store.schema", "store.errors")


def modules(package: str, root: Path = ROOT) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imported(name: str, path: Path) -> list[list[str]]:
    """What the module ``name`` at ``path`` imports, anywhere in it, relative imports
    resolved: one list of candidates per imported name, most specific first (``from X
    import a``: ``X.a`` if that is a module, else a name defined in ``X``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[list[str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found += [[f"{base}.{alias.name}", base] for alias in node.names]
    return found


def edges(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: the modules of package it imports}``. ``from . import x`` is an arrow to
    ``x`` alone; ``from pkg import Name`` (a name defined in ``pkg/__init__.py``) one to
    ``pkg``."""
    mods = modules(package, root)
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        for candidates in imported(name, path):
            target = next((c for c in candidates if c in mods), candidates[-1])
            while target and target not in mods:  # pkg.mod.Name -> pkg.mod
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One line per group of modules that import each other in a circle (a strongly
    connected component), with its shortest circle through its first module: ``a, b, c:
    a -> b -> a``. Empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [f"{', '.join(g)}: {' -> '.join(_circle(graph, g))}" for g in sorted(groups)]


def _circle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """The shortest path from ``group[0]`` back to itself within ``group`` (breadth first)."""
    start, paths = group[0], [[group[0]]]
    while paths:
        path = paths.pop(0)
        for target in sorted(graph[path[-1]] & set(group)):
            if target == start:
                return [*path, start]
            if target not in path:
                paths.append([*path, target])
    raise AssertionError(f"no circle through {start}")


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .c import h\n")
    (pkg / "a.py").write_text("from . import b\nimport torch\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n    import numpy\n")
    (pkg / "c.py").write_text("from pkg.b import f\nfrom pkg import VERSION\n")
    graph = edges("pkg", tmp_path)
    assert graph == {"pkg": {"pkg.c"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"},
                     "pkg.c": {"pkg", "pkg.b"}}
    assert cycles(graph) == ["pkg, pkg.c: pkg -> pkg.c -> pkg",
                             "pkg.a, pkg.b: pkg.a -> pkg.b -> pkg.a"]
    (pkg / "b.py").write_text("def f():\n    import numpy\n")  # a lazy third-party import
    (pkg / "c.py").write_text("from pkg.b import f\n")
    assert cycles(edges("pkg", tmp_path)) == []


@pytest.mark.parametrize("package", FLOORS)
def test_no_package_imports_itself_in_a_circle(package):
    assert cycles(edges(package)) == []


@pytest.mark.parametrize("leaf", LEAVES)
def test_the_store_leaves_import_no_other_store_module(leaf):
    assert edges("store")[leaf] == set()


def test_no_floor_imports_a_floor_above_it():
    upward = []
    for i, floor in enumerate(FLOORS):
        for name, path in modules(floor).items():
            above = {c[-1] for c in imported(name, path) if c[-1].split(".")[0] in FLOORS[:i]}
            upward += [f"{name} imports {t}" for t in sorted(above)]
    assert upward == []
