"""`harness bench`: run a config's matrix and keep every finished point.

The flow is one way: config → variants' binaries → disks → accelerator →
guest → sessions (one boot each) → rows in results.csv → report.  A point that
fails (guest does not boot, SSH or fio fails, a timeout) becomes a failed row
with its log's path and the run goes on; Ctrl-C stops after writing what has
finished, and `--resume RUN` goes on from there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from . import __version__
from .build import built_binary, read_manifest
from .config import BenchConfig, GuestSpec, VariantSpec, load_config
from .errors import HarnessError, InfraError, UserError
from .matrix import Point, Session, plan, skipped
from .paths import cache_dir, results_dir
from .results import ResultsStore, failed_row
from .files import write_json_atomic

log = logging.getLogger("harness.bench")
Progress = Callable[[str], None]


@dataclass
class Run:
    """Everything one run needs, resolved before the first boot."""

    config: BenchConfig
    run_dir: Path
    accel: str
    binaries: dict[str, Path]
    disks: dict[str, Path]
    store: ResultsStore
    notices: list[str] = field(default_factory=list)
    command_lines: dict[str, str] = field(default_factory=dict)
    boot_seconds: dict[str, float] = field(default_factory=dict)  # launch → SSH ready, per boot

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    def log_path(self, name: str) -> Path:
        path = self.run_dir / "logs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.run_dir))


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_binary(variant: VariantSpec) -> Path:
    """A built variant's binary, or a system QEMU; a UserError says how to get it."""
    if variant.build:
        return built_binary(cache_dir(), variant.build)
    found = shutil.which(variant.binary) if "/" not in variant.binary else variant.binary
    if not found or not Path(found).exists():
        raise UserError(f"variant {variant.name!r}: QEMU binary {variant.binary!r} not found "
                        "(apt-get install qemu-system-x86, or give its full path)")
    return Path(found)


def new_run_dir(config: BenchConfig, base: Path | None = None) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = (base or results_dir()) / f"{config.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def find_run(run: str) -> Path:
    """A run given by path or by its name under results/."""
    for candidate in (Path(run), results_dir() / run):
        if (candidate / "results.csv").exists() or (candidate / "manifest.json").exists():
            return candidate
    raise UserError(f"no run {run!r}: give a results/<run-id> directory (ls results/)")


def prepare(config: BenchConfig, config_path: Path, resume: str | None, accel: str | None,
            progress: Progress) -> Run:
    from .accel import choose_accel
    from .hostinfo import ensure_space, prepare_disk

    binaries = {v.name: resolve_binary(v) for v in config.variants}
    for disk in config.disks:
        ensure_space(disk.path, disk.size_bytes)
    run_dir = find_run(resume) if resume else new_run_dir(config)
    if not resume:
        shutil.copy(config_path, run_dir / "config.yaml")
    reference = binaries[config.baseline]
    chosen, notice = choose_accel(accel or config.accel, str(reference))
    run = Run(config, run_dir, chosen, binaries, {}, ResultsStore(run_dir))
    if notice:
        run.notices.append(notice)
        progress(notice)
    for disk in config.disks:
        progress(f"disk {disk.name}: preallocated raw image {disk.path} ({disk.size})")
        prepare_disk(disk.path, disk.size_bytes)
        run.disks[disk.name] = disk.path
    return run


def write_manifest(run: Run, status: str, guest_description: str = "") -> None:
    from .hostinfo import cpu_share, cpu_times, host_facts

    path = run.run_dir / "manifest.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    cpu_start = previous.get("host_cpu_times_at_start") or cpu_times()
    builds = {}
    for variant in run.config.variants:
        if variant.build:
            builds[variant.name] = read_manifest(cache_dir() / "build" / variant.build)
    manifest = {
        **previous,
        "run_id": run.run_id,
        "status": status,
        "harness_version": __version__,
        "config": run.config.model_dump(mode="json"),
        "accel": run.accel,
        "notices": run.notices,
        "host": host_facts(),
        "variants": {v.name: {"binary": str(run.binaries[v.name]), "build": builds.get(v.name),
                              "qemu_version": _qemu_version(run.binaries[v.name])}
                     for v in run.config.variants},
        "qemu_command_lines": {**previous.get("qemu_command_lines", {}), **run.command_lines},
        "guest": guest_description or previous.get("guest", ""),
        "boot_to_ssh_seconds": {**previous.get("boot_to_ssh_seconds", {}), **run.boot_seconds},
        "host_cpu_times_at_start": cpu_start,
        "host_cpu_during_run": cpu_share(cpu_start, cpu_times()),
        "updated_at": now_iso(),
    }
    manifest.setdefault("started_at", now_iso())
    write_json_atomic(path, portable(manifest, run.run_dir))


def portable(manifest: dict, run_dir: Path | None = None) -> dict:
    """The manifest without this machine's paths, so that a run can be shared.

    The run directory becomes $RUN_DIR, the cache prefix $HARNESS_CACHE, and a local source clone is named
    only as such (the pinned commit is what identifies the source).
    """
    text = json.dumps(manifest)
    if run_dir is not None:
        text = text.replace(json.dumps(str(run_dir.resolve()))[1:-1], "$RUN_DIR")
    text = text.replace(json.dumps(str(cache_dir()))[1:-1], "$HARNESS_CACHE")
    for source in _local_sources(manifest):
        text = text.replace(json.dumps(source)[1:-1], "(local clone)")
    return json.loads(text)


def _local_sources(manifest: dict) -> set[str]:
    from .source import is_local

    found = set()
    for variant in manifest.get("variants", {}).values():
        url = ((variant or {}).get("build") or {}).get("source_url")
        if url and is_local(url):
            found.add(url)
    return found


_VERSIONS: dict[Path, str] = {}


def _qemu_version(binary: Path) -> str:
    from .proc import run as run_cmd

    if binary not in _VERSIONS:
        text = run_cmd([binary, "-version"], check=False, timeout=30).output.strip()
        _VERSIONS[binary] = text.splitlines()[0].split(", Copyright")[0] if text else "unknown"
    return _VERSIONS[binary]


def pending_sessions(run: Run) -> list[Session]:
    """The plan minus the points already finished ok (what --resume skips)."""
    done = run.store.done_keys()
    sessions = []
    for session in plan(run.config):
        todo = tuple(p for p in session.points if p.key not in done)
        if todo:
            sessions.append(Session(session.guest, session.variant, session.disk, session.rep, todo))
    return sessions


def fail_points(run: Run, points: tuple[Point, ...] | list[Point], error: str, log_file: Path) -> None:
    for point in points:
        run.store.append(failed_row(
            run_id=run.run_id, guest=point.guest, variant=point.variant, accel=run.accel,
            disk=point.disk, workload=point.workload, rep=point.rep, error=error,
            log=run.relative(log_file), started_at=now_iso()))


def run_bench(config_path: Path, resume: str | None = None, accel: str | None = None,
              progress: Progress = print, bar=None) -> Path:
    """The whole run; returns the run directory (report written there)."""
    config = load_config(config_path)
    run = prepare(config, config_path, resume, accel, progress)
    runners = {guest.id: _runner_for(run, guest, progress) for guest in config.guests}
    description = "; ".join(f"{kind}: {r.description}" for kind, r in runners.items())
    write_manifest(run, "running", description)
    for line in skipped(config):
        progress(line)
    sessions = pending_sessions(run)
    total = sum(len(s.points) for s in sessions)
    progress(f"run {run.run_id}: {total} points in {len(sessions)} boots, accel={run.accel}")
    status = "interrupted"
    try:
        with _progress_bar(bar, total) as advance:
            for session in sessions:
                runners[session.guest].run_session(session, advance)
        if config.host_ceiling:
            run_host_ceiling(run, progress)
        if config.hostile:
            from .microbench import run_hostile
            run_hostile(run, progress)
        status = "complete"
    finally:
        write_manifest(run, status, description)
        if status != "complete":
            progress(f"stopped; finished points are in {run.run_dir / 'results.csv'}; "
                     f"go on with: harness bench --config {config_path} --resume {run.run_id}")
    _report(run, progress)
    return run.run_dir


def run_host_ceiling(run: Run, progress: Progress) -> None:
    """fio on the host against each image: the ceiling any guest can reach."""
    from .matrix import workloads
    from .microguest import host_fio_ceiling
    from .results import HOST_VARIANT

    done = run.store.done_keys()
    for rep in range(1, run.config.repetitions + 1):
        for disk in run.config.disks:
            for workload in workloads(run.config):
                point = Point("host", HOST_VARIANT, disk.name, workload, rep)
                if point.key in done:
                    continue
                log_file = run.log_path(f"{point.key}.fio.json")
                try:
                    row = host_fio_ceiling(run.disks[disk.name], workload, run.config.workloads.runtime_s,
                                           run_id=run.run_id, disk=disk.name, rep=rep, log_file=log_file)
                    row["log"] = run.relative(log_file)
                except HarnessError as exc:
                    fail_points(run, [point], str(exc), log_file)
                    continue
                run.store.append(row)
        progress(f"host fio ceiling, repetition {rep} done")


def _report(run: Run, progress: Progress) -> None:
    from .report import write_report

    if run.store.path.exists():
        write_report(run.run_dir, run.config.baseline)
        progress(f"report: {run.run_dir / 'report.md'}")


def _runner_for(run: Run, guest: GuestSpec, progress: Progress):
    if guest.kind == "microguest":
        from .microbench import MicroRunner
        return MicroRunner(run, guest, progress)
    from .fiobench import FioRunner
    return FioRunner(run, guest, progress)


class _progress_bar:
    """A rich progress bar with ETA when stderr is a terminal; plain lines otherwise."""

    def __init__(self, bar, total: int):
        self.bar = bar
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def __enter__(self) -> Callable[[str], None]:
        if self.bar is not None:
            self.bar.__enter__()
            self.task = self.bar.add_task("points", total=self.total)
        return self.advance

    def advance(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=label)
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done}/{self.total}] {label} (eta {eta / 60:.1f} min)", flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
