"""`harness bench` with accel kvm-nested: sessions whose points run in L2 inside an L1.

One L1 boot per session (guest × variant × disk × repetition), the same
results.csv rows as any other accelerator with accel = "kvm-nested".  An L2
micro-guest run that hangs (see README, "accel: kvm-nested") is caught by a
watchdog, diagnosed, retried up to nested.MICRO_RETRIES times, and every hang
is written to watchdog.csv and counted on the point's row, so that a hang never
passes as a data-plane result.  So is a run during which L1 stopped answering
(a new L1 is booted) or froze (L1's heartbeat shows the gap).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from .. import nested
from ..config import GuestSpec, check_kvm_nested
from ..errors import InfraError, UserError
from ..fio_jobs import run_fio
from ..matrix import Point, Session
from ..files import append_csv_row
from ..microguest import RESULT_PREFIX, find_line, guest_cmdline, micro_row
from ..results import WATCHDOG_COLUMNS, WATCHDOG_CSV, row_from_fio
from ..runstate import Advance, Run
from ..util import Say, now_iso
from ..vm import qemu_argv
from .base import GuestAssets, PointLoop, fio_point
from .micro import hostile_todo, record_hostile
from .registry import L1, register


def _image(run: Run, fio_guest: bool, say: Say) -> nested.L1Image:
    builds = {v.build: run.binaries[v.name] for v in run.config.variants if v.build}
    return nested.prepare_l1_image(builds, fio_guest=fio_guest, say=say)


def _l1(run: Run, image: nested.L1Image, session_key: str, disk: str) -> nested.L1:
    return nested.L1(image, run.disks[disk], run.log_path(f"{session_key}.l1.console.log"),
                     boot_timeout=run.config.timeouts.boot_s)


class _NestedRunner:
    """One L1 boot per session; its image carries the fio guest when fio_guest."""

    fio_guest = False

    def __init__(self, run: Run, spec: GuestSpec, say: Say, assets: GuestAssets | None = None):
        try:
            check_kvm_nested(run.config.variants, run.config.guests)  # also when --accel chose it
        except ValueError as exc:
            raise UserError(f"accel kvm-nested: {exc}") from None
        self.run = run
        self.spec = spec
        self.say = say
        self.image = _image(run, fio_guest=self.fio_guest, say=say)
        self.description = f"{self.what()} in L2; {self.image.description}"

    def what(self) -> str:
        raise NotImplementedError

    def record_command_line(self, l1: nested.L1, variant: str, l2_argv: list[str]) -> None:
        """The manifest's command line of a variant: L0's for L1, then the variant's in L1."""
        self.run.command_lines.setdefault(
            variant, f"{shlex.join(qemu_argv(l1.spec))} ; in L1: {shlex.join(l2_argv)}")


@register("microguest", where=L1)
class NestedMicroRunner(_NestedRunner):
    def what(self) -> str:
        return f"bare-metal micro-guest ({self.spec.wait})"

    def run_session(self, session: Session, advance: Advance) -> None:
        l1_log = self.run.log_path(f"{session.key}.l1.console.log")
        with PointLoop(self.run, session, advance, self.say, l1_log) as loop:
            with _l1(self.run, self.image, session.key, session.disk) as l1:
                self.run.boot_seconds[f"{session.key}.l1"] = round(l1.boot_seconds, 2)
                cmdline = guest_cmdline(session.points[0].workload,
                                        self.run.config.workloads.requests, self.spec.wait,
                                        kick=self.spec.kick)
                self.record_command_line(l1, session.variant, nested.l2_micro_argv(
                    self.run.config.variant(session.variant), cmdline, self.spec.memory_mb))
                loop.for_each(lambda point: self._point(l1, point))

    def _point(self, l1: nested.L1, point: Point) -> None:
        config = self.run.config
        log_file = self.run.log_path(f"{point.key}.console.log")
        attempts = nested.Attempts()
        started_at = now_iso()
        try:
            result = nested.run_micro_with_watchdog(
                l1, config.variant(point.variant), point.workload, config.workloads.requests,
                self.spec.wait, log_file, attempts, memory_mb=self.spec.memory_mb,
                warmup=max(1, config.workloads.requests // 10), kick=self.spec.kick,
                watchdog_s=min(float(config.timeouts.point_s), nested.MICRO_WATCHDOG_S))
            # the console of the attempt that reported (a retry has its own file)
            line = find_line(Path(result.log).read_text(errors="replace"), RESULT_PREFIX)
        except InfraError as exc:
            self.say(f"{point.key}: failed: {exc}")
            row = micro_row(self.run.run_id, point, nested.ACCEL, None, started_at=started_at,
                            error=str(exc), log_path=self.run.relative(log_file))
            outcome = "failed"
        else:
            raw = self.run.writer.save_raw(point.key, json.dumps(line, indent=1))
            row = micro_row(self.run.run_id, point, nested.ACCEL, result, started_at=started_at,
                            log_path=self.run.relative(raw))
            outcome = "ok after retry" if attempts.retries else "ok"
            if attempts.retries and row["status"] == "ok":
                row["error"] = (f"note: ok on attempt {attempts.retries + 1}; "
                                f"{attempts.retries} disturbed run(s) caught by the watchdog "
                                f"(L2 hang, L1 stalled or frozen: {WATCHDOG_CSV})")
        if attempts.retries:
            record_hangs(self.run, point, attempts, outcome)
        self.run.writer.append(row)


def record_hangs(run: Run, point: Point, attempts: nested.Attempts, outcome: str) -> None:
    """One watchdog.csv line per point that hung at least once."""
    append_csv_row(run.run_dir / WATCHDOG_CSV, WATCHDOG_COLUMNS,
                   {"point": point.key, "variant": point.variant, "hangs": attempts.retries,
                    "outcome": outcome,
                    "diagnoses": " ".join(run.relative(Path(p)) for p in attempts.hangs)})


@register("fio", where=L1)
class NestedFioRunner(_NestedRunner):
    fio_guest = True

    def what(self) -> str:
        return "fio guest"

    def run_session(self, session: Session, advance: Advance) -> None:
        l1_log = self.run.log_path(f"{session.key}.l1.console.log")
        timeouts = self.run.config.timeouts
        variant = self.run.config.variant(session.variant)
        with PointLoop(self.run, session, advance, self.say, l1_log) as loop:
            with _l1(self.run, self.image, session.key, session.disk) as l1:
                self.record_command_line(l1, session.variant, nested.l2_fio_argv(
                    variant, l1.login, self.spec.memory_mb, self.spec.vcpus))
                started = time.monotonic()
                conn = nested.boot_l2_fio(l1, variant, timeouts.boot_s, self.spec.memory_mb,
                                          self.spec.vcpus)
                self.run.boot_seconds[session.key] = round(time.monotonic() - started, 2)
                try:
                    loop.for_each(lambda point: fio_point(
                        self.run, self.say, point, self.run.log_path(f"{point.key}.log"),
                        lambda: self._point(conn, point)))
                finally:
                    conn.close()
                    self.run.log_path(f"{session.key}.console.log").write_text(
                        l1.l2_file("console.log"))

    def _point(self, conn, point: Point) -> None:
        config = self.run.config
        started_at = now_iso()
        result = run_fio(conn, point.workload, config.workloads.runtime_s,
                         config.workloads.ramp_s, config.timeouts.point_s)
        raw = self.run.writer.save_raw(point.key, result.json_text)
        self.run.writer.append(row_from_fio(
            result.data, run_id=self.run.run_id, guest=point.guest, variant=point.variant,
            accel=nested.ACCEL, disk=point.disk, workload=point.workload, rep=point.rep,
            guest_cpu_pct=result.guest_cpu_pct, host_cpu_pct=None,
            log=self.run.relative(raw), started_at=started_at))


def run_hostile(run: Run, say: Say, advance: Advance) -> None:
    """Every malformed-request case against every variant in L2 → hostile.csv (resumable):
    one L1 boot per variant, the cases one L2 boot each."""
    disk = next(iter(run.config.disks)).name
    todo = hostile_todo(run)
    image = _image(run, fio_guest=False, say=say)
    for variant in run.config.variants:
        cases = [case for case, name in todo if name == variant.name]
        if not cases:
            continue
        with _l1(run, image, f"hostile.{variant.name}", disk) as l1:
            for case in cases:
                log_file = run.log_path(f"hostile.{case}.{variant.name}.console.log")
                result = nested.retry_after_l1_stall(
                    l1, lambda: nested.run_hostile_case(l1, variant, case, run.disks[disk],
                                                        log_file,
                                                        timeout=run.config.timeouts.point_s),
                    nested.Attempts(), log_file)
                say(f"hostile {case} on {variant.name} (kvm-nested): "
                    f"{record_hostile(run, result, log_file)}")
                advance(f"hostile {case} {variant.name}")
