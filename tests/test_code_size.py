"""popevit's source stays readable: no function over 80 lines, no module over 400, imports at the top.

A module may break a rule only when it says why: a long module in its docstring (and in :data:`LONG_MODULES`), an
import inside a function when the module docstring names it a heavy import, or with a comment on the import's line,
or inside ``try`` (an optional or private API).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "popevit"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400

LONG_MODULES = {"serve/inputs.py"}  # modules over MAX_MODULE_LINES whose docstring says why

MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _length(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first decorator (or ``def``) to the last line of the body, docstring included."""
    return fn.end_lineno - min([fn.lineno, *(d.lineno for d in fn.decorator_list)]) + 1


def _nested_imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import inside a function, with whether it sits in the body of a ``try``."""
    found = []
    for fn in _functions(tree):
        tried = {id(n) for t in ast.walk(fn) if isinstance(t, ast.Try) for s in t.body for n in ast.walk(s)}
        found += [(n, id(n) in tried) for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


@pytest.mark.parametrize("module", MODULES)
def test_functions_and_modules_are_short_and_imports_at_the_top(module):
    source = (PACKAGE / module).read_text(encoding="utf-8")
    tree = ast.parse(source)
    lines = source.splitlines()
    n = len(lines)
    assert n <= MAX_MODULE_LINES or module in LONG_MODULES, f"{module} has {n} lines (> {MAX_MODULE_LINES}): split it"
    long = {fn.name: _length(fn) for fn in _functions(tree) if _length(fn) > MAX_FUNCTION_LINES}
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines {long}: split them"
    heavy_doc = "heavy import" in (ast.get_docstring(tree) or "")
    unexplained = [
        f"line {node.lineno}: {lines[node.lineno - 1].strip()}"
        for node, tried in _nested_imports(tree)
        if not (heavy_doc or tried or "#" in lines[node.lineno - 1])
    ]
    assert not unexplained, f"{module} imports inside functions without saying why: {unexplained}"


def test_the_rules_catch_what_they_forbid():
    long_fn = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    nested = "def g():\n    import json\n    try:\n        import tomllib\n    except ImportError:\n        pass\n"
    tree = ast.parse(long_fn + "\n\n" + nested)
    assert {fn.name: _length(fn) for fn in _functions(tree)}["f"] == MAX_FUNCTION_LINES + 1
    assert [(type(n).__name__, tried) for n, tried in _nested_imports(tree)] == [("Import", False), ("Import", True)]
    assert LONG_MODULES.issubset({str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")})  # no stale entries
