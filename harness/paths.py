"""Where the harness keeps its cache (clones, worktrees, builds, guest images)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """$HARNESS_CACHE, else $XDG_CACHE_HOME/dataplane-harness, else ~/.cache/dataplane-harness."""
    explicit = os.environ.get("HARNESS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "dataplane-harness"


def patches_dir() -> Path:
    return PROJECT_ROOT / "patches"


def results_dir() -> Path:
    """$HARNESS_RESULTS, else results/ of the project."""
    explicit = os.environ.get("HARNESS_RESULTS")
    return Path(explicit).expanduser() if explicit else PROJECT_ROOT / "results"
