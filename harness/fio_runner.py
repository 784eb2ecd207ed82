"""Sessions with a Linux guest: one boot, one SSH connection, several fio runs."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from .config import GuestSpec
from .errors import InfraError
from .fio_jobs import GuestStalled, open_connection, run_fio
from .guest import GuestImage, custom_guest, prepare_fio_guest
from .matrix import Point, Session
from .results import row_from_fio
from .runstate import Advance, Run, fail_points, host_lost, is_host_lost
from .util import Say, now_iso
from .vm import VM, VMSpec, linux_spec, qemu_argv


def linux_image(spec: GuestSpec, say: Say) -> GuestImage:
    """The guest a config names: the harness's fio guest or the user's own."""
    return custom_guest(spec) if spec.kind == "custom" else prepare_fio_guest(say)


class FioRunner:
    def __init__(self, run: Run, spec: GuestSpec, say: Say, image: GuestImage):
        self.run = run
        self.spec = spec
        self.say = say
        self.image = image
        self.description = image.description

    def vm_spec(self, session: Session, log_file: Path) -> VMSpec:
        """The boot of one session (a UserError if the guest cannot fit in its memory)."""
        return linux_spec(self.run.binaries[session.variant], self.run.accel, self.image,
                          console_log=log_file, legacy=self.run.legacy[session.variant],
                          memory_mb=self.spec.memory_mb, vcpus=self.spec.vcpus,
                          disk=self.run.disks[session.disk],
                          variant=self.run.config.variant(session.variant),
                          ssh_port=self.run.host.free_port())

    def run_session(self, session: Session, advance: Advance) -> None:
        """Every point of the session; an InfraError fails the points not yet done.

        A UserError is not caught: it is the same for every boot, so the run stops.
        """
        log_file = self.run.log_path(f"{session.key}.console.log")
        spec = self.vm_spec(session, self.run.host_path(log_file))
        self.run.command_lines.setdefault(session.variant, shlex.join(qemu_argv(spec)))
        timeouts = self.run.config.timeouts
        remaining = list(session.points)
        try:
            with VM(spec, host=self.run.host) as vm:
                if self.image.marker:
                    vm.wait_for_marker(self.image.marker, timeouts.boot_s)
                connection = open_connection(spec.ssh_port, self.image, timeouts.boot_s,
                                             via=getattr(self.run.host, "channel_to", None))
                ready = time.monotonic() - vm.started_at
                self.run.boot_seconds[session.key] = round(ready, 2)
                self.say(f"{session.key}: SSH ready {ready:.1f} s after launch")
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
        except InfraError as exc:
            if is_host_lost(self.run, exc):  # the scheduler moves them to another host
                raise host_lost(self.run, exc) from exc
            self.run.collect_vm_logs(log_file)
            self.say(f"{session.key}: failed: {exc}")
            fail_points(self.run, remaining, str(exc), log_file)
            for point in remaining:
                advance(point.key)
        else:
            self.run.collect_vm_logs(log_file)

    def _point_or_fail(self, vm: VM, connection, point: Point, log_file: Path) -> None:
        """A failed fio marks only its point failed, unless QEMU itself has gone."""
        try:
            self._point(vm, connection, point)
        except GuestStalled as exc:
            # the guest's disk stopped answering: later fio runs in this boot would only wait
            fail_points(self.run, [point], str(exc), log_file)
            raise InfraError(f"not run: the guest stalled earlier in this boot ({point.key})") from exc
        except InfraError as exc:
            if is_host_lost(self.run, exc):
                raise
            self.say(f"{point.key}: failed: {exc}")
            fail_points(self.run, [point], str(exc), log_file)
            vm.check_alive()

    def _point(self, vm: VM, connection, point: Point) -> None:
        config = self.run.config
        started_at = now_iso()
        cpu_before, wall_before = vm.host_cpu_seconds(), time.monotonic()
        watch = self.run.watch.start()
        result = run_fio(connection, point.workload, config.workloads.runtime_s,
                         config.workloads.ramp_s, config.timeouts.point_s, self.image.device)
        host_cpu = 100.0 * (vm.host_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        self.run.watch.stop(watch)
        raw = self.run.writer.save_raw(point.key, result.json_text)
        row = row_from_fio(
            result.data, run_id=self.run.run_id, guest=point.guest, variant=point.variant,
            accel=self.run.accel.name, disk=point.disk, workload=point.workload, rep=point.rep,
            guest_cpu_pct=result.guest_cpu_pct, host_cpu_pct=host_cpu,
            log=self.run.relative(raw), started_at=started_at)
        self.run.writer.append({**row, **watch.columns()})
