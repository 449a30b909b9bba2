# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""No import circle in ``monai_fine``, function-level imports included.

Every module of the package is parsed with ``ast`` (not imported), and every ``import monai_fine.x`` /
``from monai_fine.x import y`` / relative import at any depth is an edge of the module graph:

- ``from monai_fine.x import y`` is an edge to ``monai_fine.x.y`` when that is a module, else to ``monai_fine.x``;
- a package is its ``__init__``: ``import monai_fine.a.b`` runs ``monai_fine/a/__init__.py`` first, so it is an
  edge to ``monai_fine.a.b`` and, unless the importing module is inside ``monai_fine.a``, to ``monai_fine.a``;
- a package's ``__init__`` re-exporting its submodules gives edges package -> submodule; a submodule importing from
  its own package (``monai_fine.networks.blocks.x`` doing ``from monai_fine.networks import FINE``) is then a cycle,
  while the same import in another package's module (``monai_fine.bundle_tools``) is not.

A cycle is reported as ``a -> b -> ... -> a`` with the file and line of each import.
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "monai_fine"
ROOT = "monai_fine"


def _modules() -> dict[str, Path]:
    """Module name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _targets(name: str, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The package modules an ``import`` node of module ``name`` runs (the deepest one and its parent packages)."""
    found: list[str] = []
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the importing module's package
            package = name.split(".") if _is_package(name, modules) else name.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            found.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    out = []
    for target in found:
        if target != ROOT and not target.startswith(ROOT + "."):
            continue
        while target not in modules:  # e.g. `import monai_fine.x.attr`-like spellings: the module that holds it
            target = target.rsplit(".", 1)[0]
        parts = target.split(".")
        # the parent packages run first, except the importing module's own (already running: no edge for them on
        # the way; as the target itself, e.g. `from monai_fine.networks import FINE` in monai_fine.networks.x, an edge)
        for i in range(2, len(parts)):
            module = ".".join(parts[:i])
            if not (name + ".").startswith(module + "."):
                out.append(module)
        out.append(target)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first such import}}`` over ``monai_fine``."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(name, node, modules):
                    if target != name:
                        graph[name].setdefault(target, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_module_graph_has_no_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        modules = _modules()
        steps = [f"{a} -> {b}  ({modules[a].relative_to(PACKAGE.parent)}:{graph[a][b]})" for a, b in pairwise(cycle)]
        pytest.fail("import cycle in monai_fine:\n  " + "\n  ".join(steps))


def test_the_graph_sees_function_level_package_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a package with each kind of import, and the cycles it must (and must not) report."""
    pkg = tmp_path / ROOT
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from monai_fine.sub.leaf import thing\n")
    (pkg / "sub" / "leaf.py").write_text("thing = 1\n")
    (pkg / "user.py").write_text("from monai_fine.sub import thing\n")  # another package's module: fine
    (pkg / "a.py").write_text("def f():\n    from monai_fine import b\n")
    (pkg / "b.py").write_text("from . import user\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", pkg)
    graph = import_graph()
    assert graph["monai_fine.a"] == {"monai_fine.b": 2}  # a function-level import, resolved to the module
    assert graph["monai_fine.b"] == {"monai_fine.user": 1}  # a relative one
    assert graph["monai_fine.user"] == {"monai_fine.sub": 1}
    assert graph["monai_fine.sub"] == {"monai_fine.sub.leaf": 1}
    assert find_cycle(graph) is None
    (pkg / "sub" / "leaf.py").write_text("def g():\n    from monai_fine.sub import thing\n")  # its own package
    assert find_cycle(import_graph()) == ["monai_fine.sub", "monai_fine.sub.leaf", "monai_fine.sub"]
    (pkg / "sub" / "other.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("def g():\n    from monai_fine.sub import other\n")  # a sibling module
    graph = import_graph()
    assert graph["monai_fine.sub.leaf"] == {"monai_fine.sub.other": 2} and find_cycle(graph) is None
    (pkg / "b.py").write_text("from . import user\nimport monai_fine.a\n")
    assert find_cycle(import_graph()) == ["monai_fine.a", "monai_fine.b", "monai_fine.a"]
