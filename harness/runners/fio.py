"""Sessions with a Linux guest: one boot, one SSH connection, several fio runs.

A session with N devices (the guest's disks_per_guest) boots with N test
disks and runs one fio job per device (fio_jobs.fio_argv); the row sums them
(fio_merge.py).  Each point's row carries QEMU's host CPU over the fio command (host_cpu_pct),
its CPU µs per I/O split by thread kind (threads.py; the CPU rate over the
command, ramp included, divided by fio's IOPS) and `bound` "guest" when the
guest's own CPU was saturated (stats.GUEST_BOUND_PCT of its vCPUs).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from .. import stats
from ..config import GuestSpec
from ..devices import guest_devices, image_paths
from ..fio_jobs import open_connection, run_fio
from ..guest import GuestImage, custom_guest, prepare_fio_guest
from ..matrix import Point, Session
from ..results import row_from_fio
from ..runstate import Advance, Run
from ..util import Say, now_iso
from ..vm import VM, VMSpec, linux_spec, qemu_argv
from .base import GuestAssets, PointLoop, fio_point
from .registry import register


def linux_image(spec: GuestSpec, say: Say) -> GuestImage:
    """The guest a config names: the harness's fio guest or the user's own."""
    return custom_guest(spec) if spec.kind == "custom" else prepare_fio_guest(say)


@register("fio", "custom")
class FioRunner:
    def __init__(self, run: Run, spec: GuestSpec, say: Say, assets: GuestAssets):
        self.run = run
        self.spec = spec
        self.say = say
        self.image = assets.images[spec.id]
        self.description = self.image.description

    def vm_spec(self, session: Session, log_file: Path) -> VMSpec:
        """The boot of one session with its session.devices test disks (a UserError if
        the guest cannot fit in its memory)."""
        images = image_paths(self.run.disks[session.disk], session.devices)
        return linux_spec(self.run.binaries[session.variant], self.run.accel, self.image,
                          console_log=log_file, legacy=self.run.legacy[session.variant],
                          memory_mb=self.spec.memory_mb, vcpus=self.spec.vcpus,
                          disk=images[0], more_disks=images[1:],
                          variant=self.run.config.variant(session.variant),
                          ssh_port=self.run.host.free_port())

    def run_session(self, session: Session, advance: Advance) -> None:
        """One boot, one SSH connection, every point of the session (base.PointLoop)."""
        log_file = self.run.log_path(f"{session.key}.console.log")
        spec = self.vm_spec(session, self.run.host_path(log_file))
        self.run.command_lines.setdefault(session.variant, shlex.join(qemu_argv(spec)))
        timeouts = self.run.config.timeouts
        with PointLoop(self.run, session, advance, self.say, log_file) as loop:
            with VM(spec, host=self.run.host) as vm:
                if self.image.marker:
                    vm.wait_for_marker(self.image.marker, timeouts.boot_s)
                connection = open_connection(spec.ssh_port, self.image, timeouts.boot_s,
                                             via=self.run.host.channel_to)
                ready = time.monotonic() - vm.started_at
                self.run.boot_seconds[session.key] = round(ready, 2)
                self.say(f"{session.key}: SSH ready {ready:.1f} s after launch")
                try:
                    loop.for_each(lambda point: fio_point(
                        self.run, self.say, point, log_file,
                        lambda: self._point(vm, connection, point), vm.check_alive))
                finally:
                    connection.close()
                vm.shutdown(timeouts.shutdown_s)
        # reached whether the session went well or failed; a lost host raised past it
        self.run.collect_vm_logs(log_file)

    def _point(self, vm: VM, connection, point: Point) -> None:
        config = self.run.config
        started_at = now_iso()
        threads_before = vm.thread_sample()
        cpu_before, wall_before = vm.host_cpu_seconds(), time.monotonic()
        watch = self.run.watch.start()
        result = run_fio(connection, point.workload, config.workloads.runtime_s,
                         config.workloads.ramp_s, config.timeouts.point_s,
                         guest_devices(self.image.device, point.devices), self.spec.vcpus)
        wall = time.monotonic() - wall_before
        host_cpu = 100.0 * (vm.host_cpu_seconds() - cpu_before) / wall
        split = vm.cpu_split(threads_before, vm.thread_sample(), wall)
        self.run.watch.stop(watch)
        raw = self.run.writer.save_raw(point.key, result.json_text)
        row = row_from_fio(
            result.data, run_id=self.run.run_id, guest=point.guest, variant=point.variant,
            accel=self.run.accel.name, disk=point.disk, workload=point.workload, rep=point.rep,
            guest_cpu_pct=result.guest_cpu_pct, host_cpu_pct=host_cpu,
            log=self.run.relative(raw), started_at=started_at,
            bound=stats.guest_bound(result.guest_cpu_pct), devices=point.devices,
            vcpus=self.spec.vcpus)
        # QEMU's CPU rate over the whole fio command (ramp included) ÷ fio's IOPS
        row.update(split.per_io_us(wall, row["iops"]))
        self.run.writer.append({**row, **watch.columns()})
