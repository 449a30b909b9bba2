# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``benchmarks`` is a plain package: no module changes ``sys.path``, cross-imports are package imports of public
names, every module imports, and no function is longer than a screen and a half."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
MODULES = sorted(p for p in BENCHMARKS.glob("*.py"))
MAX_FUNCTION_LINES = 80


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def path_changes(tree: ast.Module) -> list[int]:
    """Lines that touch ``sys.path`` (any use of the attribute: insert, append, assignment, ...) or call
    ``site.addsitedir``."""
    lines = []
    for node in ast.walk(tree):
        if (
            (isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys")
            or (isinstance(node, ast.Attribute) and node.attr == "addsitedir")
            or (isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names))
        ):
            lines.append(node.lineno)
    return sorted(lines)


def long_functions(tree: ast.Module, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function or method longer than ``limit`` lines (decorators excluded)."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit
    ]


def private_cross_imports(tree: ast.Module) -> list[str]:
    """Names starting with ``_`` imported from another module of ``benchmarks``, and imports that are not
    ``benchmarks.<module>`` (a bare ``import bench_network`` works only with the folder on ``sys.path``)."""
    local = {p.stem for p in MODULES}
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in local or node.level:
                bad.append(f"from {'.' * node.level}{node.module} import ...")
            elif root == "benchmarks":
                bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in local]
    return bad


def test_the_checks_catch_what_they_look_for():
    bad = ast.parse(
        "import sys\nfrom sys import path\nsys.path.insert(0, 'x')\nsys.path = []\nimport site\nsite.addsitedir('x')\n"
        "import bench_network\nfrom common import roi_str\nfrom benchmarks.common import _no_sync\n"
        "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    )
    assert path_changes(bad) == [2, 3, 4, 6]
    assert long_functions(bad) == [("f", MAX_FUNCTION_LINES + 1)]
    assert private_cross_imports(bad) == ["bench_network", "from common import ...", "benchmarks.common._no_sync"]
    good = ast.parse("import os\nos.path.join('a')\nfrom benchmarks.common import roi_str\ndef g():\n    return 1\n")
    assert path_changes(good) == [] and long_functions(good) == [] and private_cross_imports(good) == []


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_module_is_a_plain_package_module(path):
    tree = _tree(path)
    assert path_changes(tree) == [], f"{path.name} changes sys.path at lines {path_changes(tree)}"
    assert long_functions(tree) == [], f"{path.name}: functions over {MAX_FUNCTION_LINES} lines"
    assert private_cross_imports(tree) == [], f"{path.name}: imports {private_cross_imports(tree)}"
    importlib.import_module(f"benchmarks.{path.stem}")
