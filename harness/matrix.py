"""The benchmark matrix: which points run, in which order.

A point is one measurement: guest × variant × disk × devices × workload ×
repetition, devices being how many virtio-blk test disks the boot attaches
(the guest's `disks_per_guest`; devices.py).  Points are grouped into sessions
(one VM boot runs every workload of one guest, variant, disk, device count and
repetition), and sessions are interleaved across variants — A B A B, with the
order of variants rotated on each repetition — so that drift of the machine
over the run cancels out instead of favouring whichever variant ran first.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from .config import BenchConfig, GuestSpec


@dataclass(frozen=True)
class Workload:
    rw: str
    bs: str
    iodepth: int
    numjobs: int

    @property
    def label(self) -> str:
        return f"{self.rw}-{self.bs}-qd{self.iodepth}-j{self.numjobs}"


@dataclass(frozen=True)
class Point:
    guest: str
    variant: str
    disk: str
    workload: Workload
    rep: int
    devices: int = 1

    @property
    def key(self) -> str:
        """Unique within a run; names the raw output files and the resume state (one
        device: the key of before devices existed, so older runs resume)."""
        return (f"{self.guest}.{self.variant}.{disk_label(self.disk, self.devices)}."
                f"{self.workload.label}.r{self.rep}")


@dataclass(frozen=True)
class Session:
    """One VM boot: a guest and a variant on a disk, running several workloads for one repetition."""

    guest: str
    variant: str
    disk: str
    rep: int
    points: tuple[Point, ...]
    devices: int = 1

    @property
    def key(self) -> str:
        return f"{self.guest}.{self.variant}.{disk_label(self.disk, self.devices)}.r{self.rep}"


def disk_label(disk: str, devices: int) -> str:
    """A disk in a key: its name, with `-x<N>` when a boot attaches N > 1 devices."""
    return disk if devices == 1 else f"{disk}-x{devices}"


def workloads(config: BenchConfig) -> list[Workload]:
    spec = config.workloads
    return [Workload(rw, bs, qd, jobs)
            for rw, bs, qd, jobs in product(spec.rw, spec.bs, spec.iodepth, spec.numjobs)]


# The micro-guest drives one legacy virtqueue of 128 entries with three
# descriptors per request.
MICROGUEST_MAX_IODEPTH = 42


def unsupported(guest: GuestSpec, workload: Workload) -> str | None:
    """Why a guest cannot run a workload, or None if it can."""
    if guest.kind == "microguest" and workload.numjobs > 1:
        return "the micro-guest drives one queue (numjobs 1 only)"
    if guest.kind == "microguest" and workload.iodepth > MICROGUEST_MAX_IODEPTH:
        return f"the micro-guest keeps at most {MICROGUEST_MAX_IODEPTH} requests in flight"
    return None


def skipped(config: BenchConfig) -> list[str]:
    """One line per (guest, workload) the plan leaves out, with the reason."""
    return [f"{guest.id}: {w.label} left out: {reason}"
            for guest in config.guests for w in workloads(config)
            if (reason := unsupported(guest, w))]


def plan(config: BenchConfig) -> list[Session]:
    """All sessions of a run in execution order (variants interleaved and rotated)."""
    names = [v.name for v in config.variants]
    most = max([config.max_repetitions] + [g.repetitions or 0 for g in config.guests])
    sessions = []
    for rep in range(1, most + 1):
        shift = (rep - 1) % len(names)
        order = names[shift:] + names[:shift]
        for guest in config.guests:
            if rep > (guest.repetitions or config.max_repetitions):
                continue
            runnable = [w for w in workloads(config) if not unsupported(guest, w)]
            for disk in config.disks:
                for devices in guest.disks_per_guest:
                    sessions += _sessions(guest.id, order, disk.name, devices, runnable, rep)
    return sessions


def _sessions(guest: str, variants: list[str], disk: str, devices: int,
              runnable: list[Workload], rep: int) -> list[Session]:
    """One session per variant (in the round's order) for a guest, disk and device count."""
    sessions = []
    for variant in variants:
        points = tuple(Point(guest, variant, disk, w, rep, devices) for w in runnable)
        if points:
            sessions.append(Session(guest, variant, disk, rep, points, devices))
    return sessions
