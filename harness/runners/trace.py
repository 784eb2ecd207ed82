"""Traced micro-guest points: the same point again on the variant's trace flavour.

For a guest with `trace: true`, after each point has run as usual (its row in
results.csv, the normal build), it runs once more on `<variant>+trace` with
the stage events on (-trace events=FILE,file=FILE).  The trace, gzipped, and
what the guest reported under tracing go to results/<run>/traces/:

* `<point key>.trace.gz` — the simple-trace file as QEMU wrote it;
* `<point key>.json` — the point, the traced run's own result line, the
  events enabled, the warm-up requests to skip;
* `events-<variant>.txt` — the build's event names by id (the trace's key);
* `build-<variant>.json` — the trace flavour's build manifest (patches, flags, binary).

The report (trace_report.py) reads these and the untraced row of the same
point, so the tracing overhead is the same point with and without tracing.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

from ..build import Builder, built_binary, portable, read_manifest
from ..config import BenchConfig
from ..errors import InfraError, UserError
from ..files import write_json_atomic
from ..matrix import Point
from ..microguest import RESULT_PREFIX, find_line, run_microguest_point
from ..paths import cache_dir
from ..runstate import Run
from ..trace_build import traced
from ..trace_parse import event_names
from ..tracepoints import TRACES_DIR, events_file_text
from ..util import Say


def trace_variants(config: BenchConfig) -> list[str]:
    """The builds whose trace flavour the run needs (variants that are our builds)."""
    if not any(g.trace for g in config.guests):
        return []
    return list(dict.fromkeys(v.build for v in config.variants if v.build))


def ensure_trace_builds(config: BenchConfig, say: Say) -> None:
    """Build the trace flavours a config needs that are not built yet."""
    from .. import DEFAULT_SOURCE
    from ..source import SourceCache
    names = [traced(name) for name in trace_variants(config)]
    missing = [name for name in names if not _is_built(name)]
    if not missing:
        return
    # the same source as `harness build` takes (the cache's clone is reused either way)
    cache = SourceCache(cache_dir(), config.source or os.environ.get("HARNESS_SOURCE")
                        or DEFAULT_SOURCE)
    builder = Builder(cache, jobs=2, progress=say)
    plans, notices = builder.plan(missing)
    for notice in notices:
        say(notice)
    repo = cache.ensure(progress=say)
    for plan in plans:
        say(f"{plan.name}: building the trace flavour (trace: true in the config)")
        builder.build(plan, repo)


def _is_built(name: str) -> bool:
    try:
        built_binary(cache_dir(), name)
    except UserError:
        return False
    return True


class Tracer:
    """Runs the traced twin of each point of one micro-guest."""

    def __init__(self, run: Run, say: Say, kernel: Path, wait: str, memory_mb: int,
                 kick: str = "honour"):
        self.run = run
        self.say = say
        self.kernel = kernel
        self.wait = wait
        self.kick = kick
        self.memory_mb = memory_mb
        self.dir = run.run_dir / TRACES_DIR

    def binary(self, variant: str) -> tuple[Path, tuple[str, ...]] | None:
        """The trace flavour's binary and its event names; None for a system QEMU."""
        spec = self.run.config.variant(variant)
        if not spec.build:
            return None
        binary = built_binary(cache_dir(), traced(spec.build))
        names = event_names(binary.parent.parent / "trace.c")
        return binary, names

    def trace_point(self, point: Point) -> None:
        """Run point on the trace flavour; a failure is said and leaves no trace files."""
        found = self.binary(point.variant)
        if found is None:
            return
        if point.workload.iodepth != 1:
            self.say(f"{point.key}: not traced: the breakdown pairs requests by order, "
                     "so traced points need iodepth 1")
            return
        binary, names = found
        self.dir.mkdir(parents=True, exist_ok=True)
        events_list = self.dir / f"events-{point.variant}.txt"
        if not events_list.exists():
            events_list.write_text("".join(f"{n}\n" for n in names))
            # what the trace flavour is: its patches, configure flags, binary
            wrapped = {"variants": {point.variant: {"build": read_manifest(binary.parent.parent)}}}
            build = portable(wrapped, self.run.run_dir)["variants"][point.variant]["build"]
            write_json_atomic(self.dir / f"build-{point.variant}.json", build or {})
        try:
            self._run(point, binary, names)
        except InfraError as exc:
            self.say(f"{point.key}: traced run failed: {exc}")

    def _run(self, point: Point, binary: Path, names: tuple[str, ...]) -> None:
        config = self.run.config
        warmup = max(1, config.workloads.requests // 10)
        log_file = self.run.log_path(f"{point.key}.traced.console.log")
        with tempfile.TemporaryDirectory(prefix="harness-trace-", dir=_scratch()) as tmp:
            events = Path(tmp) / "events"
            events.write_text(events_file_text(names))
            raw = Path(tmp) / "trace"
            extra = ("-trace", f"events={events},file={raw}")
            result = run_microguest_point(
                binary, self.run.accel, self.run.disks[point.disk], config.variant(point.variant),
                point.workload, config.workloads.requests, self.wait, log_file,
                config.timeouts.point_s, memory_mb=self.memory_mb, kernel=self.kernel,
                warmup=warmup, legacy=self.run.legacy[point.variant], extra=extra,
                kick=self.kick)
            if not raw.exists():
                raise InfraError(f"the trace flavour wrote no trace file (log: {log_file})")
            with open(raw, "rb") as src, gzip.open(self.dir / f"{point.key}.trace.gz", "wb",
                                                    compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            enabled = events.read_text().split()
        line = find_line(log_file.read_text(errors="replace"), RESULT_PREFIX)
        write_json_atomic(self.dir / f"{point.key}.json", {
            "key": point.key, "guest": point.guest, "variant": point.variant,
            "disk": point.disk, "rw": point.workload.rw, "bs": point.workload.bs,
            "iodepth": point.workload.iodepth, "numjobs": point.workload.numjobs,
            "rep": point.rep, "build": traced(config.variant(point.variant).build),
            "binary_sha256": _sha(binary), "warmup": warmup,
            "requests": config.workloads.requests, "wait": self.wait,
            "enabled_events": enabled, "events_list": f"events-{point.variant}.txt",
            "trace": f"{point.key}.trace.gz", "ok": bool(result.ok),
            "result": line, "log": self.run.relative(log_file),
        })
        self.say(f"{point.key}: traced: {result.iops:,.0f} IOPS under tracing")


def _sha(path: Path) -> str:
    from ..files import sha256_file
    return sha256_file(path)


def _scratch() -> str | None:
    """Where QEMU writes the trace while it runs: RAM if there is a tmpfs."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None
