"""popevit's import graph: no cycles between its modules, and every module imports on its own.

The graph is read from the source with ``ast``: every ``import`` of a popevit module counts, at module level, inside
a function or under ``if TYPE_CHECKING`` alike, so that moving an import to the top of a module cannot create a
cycle. Importing ``popevit.a.b`` from outside ``popevit.a`` also runs ``popevit/a/__init__.py``, so that is an edge
too.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "popevit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(module: str, path: Path) -> set[str]:
    """The popevit modules that ``module`` imports (the longest importable prefix of each name)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names |= {f"{base}.{a.name}" for a in node.names}  # a submodule, or a name of the module ``base``
    found = set()
    for name in (n for n in names if n == "popevit" or n.startswith("popevit.")):
        while name not in MODULES:
            name = name.rpartition(".")[0]
        found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the popevit modules it imports, with the package ``__init__`` each cross-package import runs."""
    graph = {}
    for module, path in MODULES.items():
        deps = _imported(module, path)
        for dep in list(deps):
            parts = dep.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent in MODULES and not (module == parent or module.startswith(parent + ".")):
                    deps.add(parent)
        deps.discard(module)
        deps.discard("popevit")  # the root package holds only the version
        graph[module] = deps
    return graph


def test_the_graph_reader_sees_imports_of_every_kind(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from popevit.models.spec import MODELS\n"
        "from . import inputs\n"
        "if TYPE_CHECKING:\n"
        "    from popevit.config import PreprocessConfig\n"
        "def f():\n"
        "    import popevit.data.preprocess\n"
        "    from popevit.evaluation import metrics, Predictions\n"
    )
    assert _imported("popevit.explain.probe", source) == {
        "popevit.models.spec",  # module level
        "popevit.explain.inputs",  # relative
        "popevit.config",  # under TYPE_CHECKING
        "popevit.data.preprocess",  # inside a function
        "popevit.evaluation.metrics",  # a submodule named in ``from``
        "popevit.evaluation",  # a name of the package
    }
    assert "popevit.data" in import_graph()["popevit.explain.inputs"]  # the package __init__ that import runs
    try:
        tuple(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
    except CycleError as err:
        assert set(err.args[1]) == {"a", "b"}
    else:
        raise AssertionError("graphlib missed a two-module cycle")


def test_popevit_imports_form_no_cycle():
    try:
        tuple(TopologicalSorter(import_graph()).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


ISOLATED = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "popevit" or m.startswith("popevit.")]:
        del sys.modules[loaded]  # third-party modules stay loaded: only popevit's own order is under test
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own():
    """Each module imports in a fresh state of popevit (no other popevit module loaded before it)."""
    res = subprocess.run(
        [sys.executable, "-c", ISOLATED, *MODULES],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
