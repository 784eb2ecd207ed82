"""Sessions with the Linux fio guest: one boot, one SSH connection, several fio runs."""

from __future__ import annotations

import shlex
import time
from typing import Callable

from .bench import Progress, Run, fail_points, now_iso
from .config import GuestSpec
from .errors import HarnessError
from .matrix import Point, Session
from .results import row_from_fio


class FioRunner:
    def __init__(self, run: Run, spec: GuestSpec, progress: Progress):
        from .guest import custom_guest, prepare_fio_guest

        self.run = run
        self.spec = spec
        self.progress = progress
        self.image = custom_guest(spec) if spec.kind == "custom" else prepare_fio_guest(progress)
        self.description = self.image.description

    def _spec(self, session: Session, port: int, log_file):
        from .vm import VMSpec

        config = self.run.config
        return VMSpec(
            binary=str(self.run.binaries[session.variant]), accel=self.run.accel,
            memory_mb=self.spec.memory_mb, vcpus=self.spec.vcpus, guest=self.image,
            disk_path=self.run.disks[session.disk], variant=config.variant(session.variant),
            ssh_port=port, qmp_socket=log_file.with_suffix(".qmp"), console_log=log_file)

    def run_session(self, session: Session, advance: Callable[[str], None]) -> None:
        from .fio import open_connection
        from .vm import VM, free_port, qemu_argv

        log_file = self.run.log_path(f"{session.key}.console.log")
        spec = self._spec(session, free_port(), log_file)
        self.run.command_lines.setdefault(session.variant, shlex.join(qemu_argv(spec)))
        timeouts = self.run.config.timeouts
        remaining = list(session.points)
        try:
            with VM(spec) as vm:
                vm.launch()
                booted = time.monotonic()
                if self.image.marker:
                    vm.wait_for_marker(self.image.marker, timeouts.boot_s)
                connection = open_connection(spec.ssh_port, self.image, timeouts.boot_s)
                self.progress(f"{session.key}: SSH ready {time.monotonic() - booted:.1f} s after launch")
                try:
                    while remaining:
                        self._point_or_fail(vm, connection, remaining[0], log_file)
                        advance(remaining.pop(0).key)
                finally:
                    connection.close()
                vm.shutdown(timeouts.shutdown_s)
        except HarnessError as exc:
            self.progress(f"{session.key}: failed: {exc}")
            fail_points(self.run, remaining, str(exc), log_file)
            for point in remaining:
                advance(point.key)

    def _point_or_fail(self, vm, connection, point: Point, log_file) -> None:
        """A failed fio marks only its point failed, unless QEMU itself has gone."""
        try:
            self._point(vm, connection, point, log_file)
        except HarnessError as exc:
            vm.check_alive()
            self.progress(f"{point.key}: failed: {exc}")
            fail_points(self.run, [point], str(exc), log_file)

    def _point(self, vm, connection, point: Point, log_file) -> None:
        from .fio import run_fio

        config = self.run.config
        started_at = now_iso()
        cpu_before, wall_before = vm.host_cpu_seconds(), time.monotonic()
        result = run_fio(connection, point.workload, config.workloads.runtime_s,
                         config.workloads.ramp_s, config.timeouts.point_s)
        host_cpu = 100.0 * (vm.host_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        raw = self.run.store.save_raw(point.key, result.json_text)
        row = row_from_fio(
            result.data, run_id=self.run.run_id, guest=point.guest, variant=point.variant,
            accel=self.run.accel, disk=point.disk, workload=point.workload, rep=point.rep,
            guest_cpu_pct=result.guest_cpu_pct, host_cpu_pct=host_cpu,
            log=self.run.relative(raw), started_at=started_at)
        self.run.store.append(row)
