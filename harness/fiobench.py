"""Sessions with the Linux fio guest: one boot, one SSH connection, several fio runs."""

from __future__ import annotations

import shlex
import time
from typing import Callable

from .bench import Progress, Run, fail_points, now_iso
from .config import GuestSpec
from .errors import HarnessError, InfraError
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
                ready = time.monotonic() - booted
                self.run.boot_seconds[session.key] = round(ready, 2)
                self.progress(f"{session.key}: SSH ready {ready:.1f} s after launch")
                try:
                    while remaining:
                        point = remaining.pop(0)
                        try:
                            self._point_or_fail(vm, connection, point, log_file)
                        finally:
                            advance(point.key)
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
        from .fio import GuestStalled

        try:
            self._point(vm, connection, point, log_file)
        except GuestStalled as exc:
            # the guest's disk stopped answering: later fio runs in this boot would only wait
            fail_points(self.run, [point], str(exc), log_file)
            raise InfraError(f"not run: the guest stalled earlier in this boot ({point.key})") from exc
        except HarnessError as exc:
            self.progress(f"{point.key}: failed: {exc}")
            fail_points(self.run, [point], str(exc), log_file)
            vm.check_alive()

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
