"""Imports go one way (config → build → guest → vm → runners → results → report)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"


def harness_imports(module: str) -> set[str]:
    """The harness modules that harness/<module>.py imports, anywhere in the file;
    module may be dotted (runners.nested), and so are the names of a package's modules."""
    parts = module.split(".")
    if HARNESS.joinpath(*parts).is_dir():  # a package: what its modules import from outside it
        inside = {".".join(parts + [p.stem]) for p in HARNESS.joinpath(*parts).glob("*.py")}
        found = set().union(*(harness_imports(name) for name in inside))
        return {name for name in found if not name.startswith(module + ".")}
    tree = ast.parse((HARNESS.joinpath(*parts[:-1]) / f"{parts[-1]}.py").read_text())
    package = parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join(base + node.module.split(".")[:1]))
            else:  # from . import nested
                found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness."):
            found.add(node.module.split(".")[1])
    return found


@pytest.mark.parametrize("module, above", [
    ("runners.nested", {"report"}),         # the watchdog file's name is results'
    ("runners.trace", {"manifest_writer"}),  # portable() is the build manifests'
    ("accelprobe", {"nested", "runners.nested"}),  # L0's QEMU is accel's
    ("vm", {"nested", "runstate", "results", "report"}),
    ("nested", {"runners", "bench", "report"}),  # L1 is a host the runners are handed
    ("qmp", {"vm", "nested"}),
    ("hosts", {"runstate", "runners", "fleet", "bench", "nested"}),  # low: vm uses its executor
    ("fleet", {"bench", "report"}),
])
def test_no_import_against_the_flow(module, above):
    assert harness_imports(module) & above == set()


def test_the_check_sees_relative_and_lazy_imports():
    assert "nested" in harness_imports("runners.nested")          # from .. import nested
    assert {"vm", "runners.base"} <= harness_imports("runners.micro")
    assert {"accel", "qmp"} <= harness_imports("nested")


@pytest.mark.parametrize("module", ["config", "matrix", "build", "guest", "vm", "hosts", "fleet",
                                    "accelprobe", "nested", "runstate",
                                    "results", "results_writer"])
def test_nothing_below_the_runners_imports_them(module):
    assert not {name for name in harness_imports(module) if name.split(".")[0] == "runners"}
