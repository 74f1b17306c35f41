"""The package layers: ``jobs`` -> ``serve_apps`` -> ``raylib``. Imports point down only, and
no module of the three grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("jobs", "serve_apps", "raylib")  # each may import the ones after it
MAX_LINES = 400


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level package names of every import in ``path`` (function-local ones too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def upward(path: Path, layer: str) -> set[str]:
    """Layers above ``layer`` that ``path`` imports."""
    above = set(LAYERS[: LAYERS.index(layer)])
    return imported(path) & above


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down(layer):
    bad = {str(p.relative_to(ROOT)): sorted(upward(p, layer)) for p in modules(layer) if upward(p, layer)}
    assert bad == {}


def test_the_walker_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from serve_apps.deploy import deploy\n    import jobs.cli\n")
    assert upward(probe, "raylib") == {"serve_apps", "jobs"} and upward(probe, "jobs") == set()


@pytest.mark.parametrize("layer", LAYERS)
def test_modules_stay_small(layer):
    big = {str(p.relative_to(ROOT)): n for p in modules(layer) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_the_loop_entrypoint_is_thin():
    assert len((ROOT / "jobs" / "self_learning_loop.py").read_text().splitlines()) < 150
