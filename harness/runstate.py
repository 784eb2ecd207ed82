"""What every runner of a run shares: the resolved run, and how a point fails.

bench.py resolves a Run before the first boot; the runners (runners/) read
it and write rows through it.  Data flows one way:
config → build → guest → vm → runners (this state) → results → report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .accel import Accel
from .config import BenchConfig
from .errors import HostLost
from .hosts.executor import LOCAL, Executor
from .hostload import PointWatch
from .matrix import Point
from .results import failed_row
from .results_writer import ResultsWriter
from .util import now_iso

#: Called once per unit of work done (a point, a hostile case), with its label.
Advance = Callable[[str], None]


@dataclass
class Run:
    """Everything one run needs, resolved before the first boot."""

    config: BenchConfig
    run_dir: Path
    accel: Accel
    binaries: dict[str, Path]
    legacy: dict[str, bool]  # per variant: the binary speaks the 2012 dialect
    disks: dict[str, Path]
    writer: ResultsWriter
    notices: list[str] = field(default_factory=list)
    command_lines: dict[str, str] = field(default_factory=dict)  # per variant, one boot's
    boot_seconds: dict[str, float] = field(default_factory=dict)  # launch → SSH ready, per boot
    #: where this Run's points run: LOCAL, or (fleet.prepare.prepare_host) a remote host whose
    #: binaries, disks and accel the fields above then hold
    host: Executor = LOCAL
    host_facts: dict[str, dict] = field(default_factory=dict)  # per remote host, for the manifest
    #: the foreign load around each point (hostload.py); off until bench.prepare sets it
    watch: PointWatch = field(default_factory=lambda: PointWatch(10.0, enabled=False))
    #: what the host check found, for the manifest (quiet wait, disturbers, re-runs)
    host_check: dict = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    def log_path(self, name: str) -> Path:
        path = self.run_dir / "logs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.run_dir))

    def host_path(self, local: Path) -> Path:
        """Where a file of the run directory is written on the host running the point."""
        return Path(self.host.path(local, self.run_dir))

    def collect(self, *local: Path) -> None:
        """Bring files written on the host back into the run directory (no-op here)."""
        for path in local:
            self.host.collect(self.host_path(path), path)

    def collect_vm_logs(self, console_log: Path) -> None:
        """A boot's console log and QEMU's own log (vm.VMSpec.stderr_log) back here."""
        self.collect(console_log, console_log.with_name(console_log.name + ".stderr"))


def is_host_lost(run: Run, exc: BaseException) -> bool:
    """The error means the run's host is gone (not that the point failed)."""
    return isinstance(exc, HostLost) or not run.host.alive()


def host_lost(run: Run, exc: BaseException) -> HostLost:
    """exc as a HostLost naming the run's host (the scheduler moves its points elsewhere)."""
    if isinstance(exc, HostLost):
        return exc
    return HostLost(f"host {run.host.label}: connection lost ({exc})")


def guest_vcpus(run: Run, guest_id: str) -> int | None:
    """The vCPUs of a config's guest (None for rows that are no guest's: the host ceiling);
    the micro-guest always boots with one."""
    found = [1 if g.kind == "microguest" else g.vcpus for g in run.config.guests
             if g.id == guest_id]
    return found[0] if found else None


def fail_points(run: Run, points: Iterable[Point], error: str, log_file: Path) -> None:
    """A failed row for each point, naming the error and the log."""
    for point in points:
        run.writer.append(failed_row(
            run_id=run.run_id, guest=point.guest, variant=point.variant, accel=run.accel.name,
            disk=point.disk, workload=point.workload, rep=point.rep, error=error,
            log=run.relative(log_file), started_at=now_iso(), devices=point.devices,
            vcpus=guest_vcpus(run, point.guest)))
