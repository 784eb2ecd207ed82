"""Imports go one way (config → build → guest → vm → runners → results → report)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"


def harness_imports(module: str) -> set[str]:
    """The harness modules that harness/<module>.py imports, anywhere in the file."""
    tree = ast.parse((HARNESS / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import nested
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness."):
            found.add(node.module.split(".")[1])
    return found


@pytest.mark.parametrize("module, above", [
    ("nestedbench", {"report"}),            # the watchdog file's name is results'
    ("accelprobe", {"nested", "nestedbench"}),  # L0's QEMU is accel's
    ("vm", {"nested", "runstate", "results", "report"}),
    ("qmp", {"vm", "nested"}),
])
def test_no_import_against_the_flow(module, above):
    assert harness_imports(module) & above == set()


def test_the_check_sees_relative_and_lazy_imports():
    assert {"nested", "vm", "accel", "qmp"} <= harness_imports("nestedbench") | \
        harness_imports("nested")
