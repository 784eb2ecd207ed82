"""Sessions with the bare-metal micro-guest: one short boot per point; the hostile cases.

The micro-guest drives virtio-blk itself and reports on the serial port, so
there is no SSH and no guest OS between the benchmark and the host I/O path.
A point with N disks boots with N devices and `disks=N` (micro_disks.py).
"""

from __future__ import annotations

import csv
import json
import shlex
from dataclasses import replace
from pathlib import Path

from ..config import GuestSpec
from ..devices import image_paths
from ..errors import InfraError
from ..matrix import Point, Session
from ..files import append_csv_row
from ..microguest import (HOSTILE_CASES, HOSTILE_COLUMNS, RESULT_PREFIX, HostileResult, find_line,
                         micro_row, run_hostile_case, run_microguest_point)
from ..microguest.cmdline import guest_cmdline, microguest_spec
from ..runstate import Advance, Run, is_host_lost
from ..util import Say, now_iso
from ..vm import qemu_argv
from .base import GuestAssets, PointLoop
from .micro_disks import device_columns, extra_args, short_of_disks
from .registry import register
from .trace import Tracer


HOSTILE_CSV = "hostile.csv"


@register("microguest")
class MicroRunner:
    def __init__(self, run: Run, spec: GuestSpec, say: Say, assets: GuestAssets):
        self.run = run
        self.spec = spec
        self.say = say
        self.kernel = assets.kernel
        self.description = (f"bare-metal micro-guest ({spec.wait}, kick {spec.kick}), "
                            f"{self.kernel.name}")
        self.tracer = Tracer(run, say, self.kernel, spec.wait, spec.memory_mb,
                             spec.kick) if spec.trace else None

    def run_session(self, session: Session, advance: Advance) -> None:
        """Each point is its own boot; an InfraError fails that point only."""
        log_file = self.run.log_path(f"{session.key}.console.log")
        with PointLoop(self.run, session, advance, self.say, log_file) as loop:
            loop.for_each(self._point)

    def _point(self, point: Point) -> None:
        log_file = self.run.log_path(f"{point.key}.console.log")
        extra = self._disk_args(point)
        self._record_command_line(point, log_file, extra)
        started_at = now_iso()
        watch = self.run.watch.start()
        try:
            result = run_microguest_point(
                self.run.binaries[point.variant], self.run.accel, self.run.disks[point.disk],
                self.run.config.variant(point.variant), point.workload,
                self.run.config.workloads.requests, self.spec.wait,
                self.run.host_path(log_file), self.run.config.timeouts.point_s,
                memory_mb=self.spec.memory_mb, kernel=self.kernel, warmup=self._warmup,
                legacy=self.run.legacy[point.variant], host=self.run.host,
                kick=self.spec.kick, extra=extra, disks=point.devices)
            self.run.collect_vm_logs(log_file)
        except InfraError as exc:
            if is_host_lost(self.run, exc):  # PointLoop hands it to the scheduler
                raise
            self.run.collect_vm_logs(log_file)
            self.say(f"{point.key}: failed: {exc}")
            row = self._failed(point, started_at, str(exc), self.run.relative(log_file))
        else:
            line = find_line(log_file.read_text(errors="replace"), RESULT_PREFIX)
            raw = self.run.writer.save_raw(point.key, json.dumps(line, indent=1))
            row = self._row(point, result, started_at, self.run.relative(raw))
        self.run.writer.append({**row, **self.run.watch.stop(watch).columns()})
        if self.tracer and row["status"] == "ok":
            self.tracer.trace_point(point)

    @property
    def _warmup(self) -> int:
        return max(1, self.run.config.workloads.requests // 10)

    def _cmdline(self, point: Point) -> str:
        """The guest's -append line as run_microguest_point builds it."""
        return guest_cmdline(point.workload, self.run.config.workloads.requests, self.spec.wait,
                             warmup=self._warmup, kick=self.spec.kick, disks=point.devices)

    def _disk_args(self, point: Point) -> tuple[str, ...]:
        """Devices 1…N-1 for a point with N disks (micro_disks.py)."""
        images = image_paths(self.run.disks[point.disk], point.devices)
        return extra_args(self.run.config.variant(point.variant), images)

    def _row(self, point: Point, result, started_at: str, log_path: str) -> dict:
        short = short_of_disks(result, point.devices)
        if short:
            return self._failed(point, started_at, short, log_path)
        row = micro_row(self.run.run_id, point, self.run.accel, result,
                        started_at=started_at, log_path=log_path)
        return {**row, **device_columns(result, point.devices)}

    def _failed(self, point: Point, started_at: str, error: str, log_path: str) -> dict:
        row = micro_row(self.run.run_id, point, self.run.accel, None, started_at=started_at,
                        error=error, log_path=log_path)
        return {**row, **device_columns(None, 1), "devices": point.devices}

    def _record_command_line(self, point: Point, log_file: Path, extra: tuple[str, ...]) -> None:
        if point.variant in self.run.command_lines:
            return
        variant = point.variant
        spec = microguest_spec(self.run.binaries[variant], self.run.accel,
                               self.run.disks[point.disk], self.run.config.variant(variant),
                               self._cmdline(point), log_file, kernel=self.kernel,
                               memory_mb=self.spec.memory_mb, legacy=self.run.legacy[variant])
        self.run.command_lines[variant] = shlex.join(qemu_argv(replace(spec, extra=extra)))


def hostile_todo(run: Run) -> list[tuple[str, str]]:
    """(case, variant) pairs not yet in hostile.csv."""
    path = run.run_dir / HOSTILE_CSV
    done = set()
    if path.exists():
        with open(path, newline="") as handle:
            done = {(r["case"], r["variant"]) for r in csv.DictReader(handle)}
    return [(case, v.name) for case in HOSTILE_CASES for v in run.config.variants
            if (case, v.name) not in done]


def run_hostile(run: Run, say: Say, kernel: Path, advance: Advance) -> None:
    """Every malformed-request case against every variant → hostile.csv (resumable)."""
    disk = next(iter(run.disks.values()))
    for case, name in hostile_todo(run):
        log_file = run.log_path(f"hostile.{case}.{name}.console.log")
        result = run_hostile_case(run.binaries[name], run.accel, disk, run.config.variant(name),
                                  case, log_file, run.config.timeouts.point_s, kernel=kernel,
                                  legacy=run.legacy[name])
        say(f"hostile {case} on {name}: {record_hostile(run, result, log_file)}")
        advance(f"hostile {case} {name}")


def record_hostile(run: Run, result: HostileResult, log_file: Path) -> str:
    """result as a hostile.csv line; the verdict in words."""
    row = result.as_row()
    row["log"] = run.relative(log_file)
    append_csv_row(run.run_dir / HOSTILE_CSV, HOSTILE_COLUMNS, row)
    verdict = "survived" if result.qemu_survived else f"QEMU {result.qemu_state}"
    return f"{verdict}, guest saw {result.observed}"
