"""The package's architecture as tests: imports run only down the layers, no module grows past
the size one can read, and the public API lists what it promises."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ddnn_jax"
# bottom to top, as the package docstring lists them
LAYERS = ("common", "data", "core", "rundir", "stages", "deploy", "interop", "jobs", "benchmarks", "cli")
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def _imported(tree: ast.AST) -> set[str]:
    """Every ``ddnn_jax...`` module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "ddnn_jax":
                names.update(f"ddnn_jax.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("ddnn_jax.")}


def test_every_subpackage_is_a_layer():
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert found == set(LAYERS)
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py"}, "every module belongs to a layer"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_only_down_the_layers(path: Path):
    rank = LAYERS.index(_layer(path))
    upward = [
        name for name in _imported(ast.parse(path.read_text())) if LAYERS.index(name.split(".")[1]) > rank
    ]
    assert not upward, f"{path.relative_to(PACKAGE)} imports from a higher layer: {upward}"


def test_the_layering_check_sees_an_upward_import():
    tree = ast.parse("def f():\n    from ddnn_jax.stages.report import report\n")
    assert _imported(tree) == {"ddnn_jax.stages.report"}
    assert _imported(ast.parse("from ddnn_jax import cli")) == {"ddnn_jax.cli"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_too_long_to_read(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines: split it along a seam"


def test_the_public_api_lists_and_loads_its_names():
    # a fresh interpreter: importing the package loads nothing heavy until a name is used
    script = (
        "import sys, ddnn_jax as d\n"
        "assert 'jax' not in sys.modules, 'import ddnn_jax started JAX'\n"
        "missing = [n for n in d.__all__ if getattr(d, n, None) is None]\n"
        "assert not missing, missing\n"
        "from ddnn_jax.common import runtime\n"
        "assert runtime._configured, 'first use did not configure the runtime'\n"
        "print(len(d.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 30
