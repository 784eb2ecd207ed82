"""Sessions with the bare-metal micro-guest: one short boot per point.

The micro-guest drives virtio-blk itself and reports on the serial port, so
there is no SSH and no guest OS between the benchmark and the host I/O path.
"""

from __future__ import annotations

import json
from typing import Callable

from .bench import Progress, Run, now_iso
from .config import GuestSpec
from .errors import HarnessError
from .matrix import Session
from .microguest import RESULT_PREFIX, build_microguest, find_line, micro_row, run_microguest_point


class MicroRunner:
    def __init__(self, run: Run, spec: GuestSpec, progress: Progress):
        self.run = run
        self.spec = spec
        self.progress = progress
        self.kernel = build_microguest()
        self.description = f"bare-metal micro-guest ({spec.wait}), {self.kernel.name}"

    def run_session(self, session: Session, advance: Callable[[str], None]) -> None:
        config = self.run.config
        variant = config.variant(session.variant)
        for point in session.points:
            log_file = self.run.log_path(f"{point.key}.console.log")
            started_at = now_iso()
            try:
                result = run_microguest_point(
                    self.run.binaries[point.variant], self.run.accel, self.run.disks[point.disk],
                    variant, point.workload, config.workloads.requests, self.spec.wait, log_file,
                    config.timeouts.point_s, memory_mb=self.spec.memory_mb, kernel=self.kernel,
                    warmup=max(1, config.workloads.requests // 10))
            except HarnessError as exc:
                self.progress(f"{point.key}: failed: {exc}")
                row = micro_row(self.run.run_id, point, self.run.accel, None, started_at=started_at,
                                error=str(exc), log_path=self.run.relative(log_file))
            else:
                line = find_line(log_file.read_text(errors="replace"), RESULT_PREFIX)
                raw = self.run.store.save_raw(point.key, json.dumps(line, indent=1))
                row = micro_row(self.run.run_id, point, self.run.accel, result, started_at=started_at,
                                log_path=self.run.relative(raw))
            self.run.store.append(row)
            advance(point.key)


def run_hostile(run: Run, progress: Progress) -> None:
    """Every malformed-request case against every variant → hostile.csv (resumable)."""
    import csv

    from .microguest import HOSTILE_CASES, HOSTILE_COLUMNS, run_hostile_case

    path = run.run_dir / "hostile.csv"
    done = set()
    if path.exists():
        with open(path, newline="") as handle:
            done = {(r["case"], r["variant"]) for r in csv.DictReader(handle)}
    disk = next(iter(run.disks.values()))
    kernel = build_microguest()
    for case in HOSTILE_CASES:
        for variant in run.config.variants:
            if (case, variant.name) in done:
                continue
            log_file = run.log_path(f"hostile.{case}.{variant.name}.console.log")
            result = run_hostile_case(run.binaries[variant.name], run.accel, disk, variant, case,
                                      log_file, run.config.timeouts.point_s, kernel=kernel)
            row = result.as_row()
            row["log"] = run.relative(log_file)
            new_file = not path.exists()
            with open(path, "a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(HOSTILE_COLUMNS))
                if new_file:
                    writer.writeheader()
                writer.writerow(row)
            verdict = "survived" if result.qemu_survived else f"QEMU {result.qemu_state}"
            progress(f"hostile {case} on {variant.name}: {verdict}, guest saw {result.observed}")
