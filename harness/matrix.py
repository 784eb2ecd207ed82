"""The benchmark matrix: which points run, in which order.

A point is one measurement: guest × variant × disk × workload × repetition.
Points are grouped into sessions (one VM boot runs every workload of one guest,
variant, disk and repetition), and sessions are interleaved across variants — A B A B, with the
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

    @property
    def key(self) -> str:
        """Unique within a run; names the raw output files and the resume state."""
        return f"{self.guest}.{self.variant}.{self.disk}.{self.workload.label}.r{self.rep}"


@dataclass(frozen=True)
class Session:
    """One VM boot: a guest and a variant on a disk, running several workloads for one repetition."""

    guest: str
    variant: str
    disk: str
    rep: int
    points: tuple[Point, ...]

    @property
    def key(self) -> str:
        return f"{self.guest}.{self.variant}.{self.disk}.r{self.rep}"


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
                for variant in order:
                    points = tuple(Point(guest.id, variant, disk.name, w, rep) for w in runnable)
                    if points:
                        sessions.append(Session(guest.id, variant, disk.name, rep, points))
    return sessions
