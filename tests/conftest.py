"""Shared fixtures: where a real qemu-kvm source or build can be found, if anywhere."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness import PINNED_COMMIT
from harness.paths import cache_dir


def qemu_kvm_source() -> str | None:
    """$HARNESS_SOURCE, else the clone an earlier `harness build` left in the cache."""
    explicit = os.environ.get("HARNESS_SOURCE")
    if explicit:
        return explicit
    cached = cache_dir() / "src" / "qemu-kvm.git"
    return str(cached) if (cached / "HEAD").exists() else None


@pytest.fixture
def source_or_skip() -> str:
    source = qemu_kvm_source()
    if not source:
        pytest.skip(f"no qemu-kvm source with {PINNED_COMMIT[:12]}: set HARNESS_SOURCE to a clone "
                    f"(or run `harness build` once to fill {cache_dir()})")
    return source


def built_binary_or_skip(variant: str) -> Path:
    binary = cache_dir() / "build" / variant / "x86_64-softmmu" / "qemu-system-x86_64"
    if not binary.exists():
        pytest.skip(f"variant {variant} is not built in {cache_dir()}: run `harness build`")
    return binary


def system_qemu_or_skip() -> str:
    binary = shutil.which("qemu-system-x86_64")
    if not binary:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    return binary


@pytest.fixture(scope="session")
def fio_guest():
    """The harness's Linux fio guest (assembled once, cached); skips if it cannot be."""
    from harness.errors import UserError
    from harness.guest import prepare_fio_guest

    try:
        return prepare_fio_guest()
    except UserError as exc:
        pytest.skip(f"cannot assemble the fio guest: {exc}")
