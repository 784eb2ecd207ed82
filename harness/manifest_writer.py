"""A run's manifest.json: what ran, on what, with which builds — written early and at the end.

It is written when the run starts (so a killed run leaves one) and again when
it stops, each time atomically, and holds no path of this machine: the run
directory becomes $RUN_DIR, the cache $HARNESS_CACHE, and a local source
clone is named only as such (the pinned commit identifies the source).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import __version__
from .build import portable, read_manifest
from .files import write_json_atomic
from .paths import cache_dir
from .hostinfo import cpu_share, cpu_times, host_facts
from .qemuinfo import qemu_info
from .results_writer import SCHEMA_VERSION
from .runstate import Run
from .util import now_iso


def manifest_path(run_dir: Path) -> Path:
    return run_dir / "manifest.json"


def read_run_manifest(run_dir: Path) -> dict:
    try:
        return json.loads(manifest_path(run_dir).read_text())
    except (OSError, ValueError):
        return {}


def write_manifest(run: Run, status: str, guest_description: str = "") -> None:
    previous = read_run_manifest(run.run_dir)
    cpu_start = previous.get("host_cpu_times_at_start") or cpu_times()
    builds = {v.name: read_manifest(cache_dir() / "build" / v.build)
              for v in run.config.variants if v.build}
    manifest = {
        **previous,
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "status": status,
        "harness_version": __version__,
        "config": run.config.model_dump(mode="json"),
        "accel": run.accel.name,
        "notices": run.notices,
        "host": host_facts(),
        # remote hosts the points ran on (hosts.check.manifest_facts), by their label
        "hosts": {**previous.get("hosts", {}), **run.host_facts},
        "variants": {v.name: {"binary": str(run.binaries[v.name]), "build": builds.get(v.name),
                              "qemu_version": qemu_info(run.binaries[v.name]).version}
                     for v in run.config.variants},
        "qemu_command_lines": {**previous.get("qemu_command_lines", {}), **run.command_lines},
        "guest": guest_description or previous.get("guest", ""),
        "boot_to_ssh_seconds": {**previous.get("boot_to_ssh_seconds", {}), **run.boot_seconds},
        "host_cpu_times_at_start": cpu_start,
        "host_cpu_during_run": cpu_share(cpu_start, cpu_times()),
        # the quiet check, what could disturb the host, re-runs, adaptive precision
        "host_check": {**previous.get("host_check", {}), **run.host_check},
        "updated_at": now_iso(),
    }
    manifest.setdefault("started_at", now_iso())
    write_json_atomic(manifest_path(run.run_dir), portable(manifest, run.run_dir))
