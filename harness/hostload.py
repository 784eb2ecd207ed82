"""Foreign load: the host CPU used by processes that are not the run's own.

A benchmark on a 2-core host is only as good as the host is quiet: a compiler
or a second benchmark beside it takes the core the data-plane thread or the
vCPU wanted, and the numbers then say the opposite of a quiet run.  This
module measures that load, so that a point can be marked *disturbed* and run
again (bench.py, rounds.py), and a run can wait for a quiet host first.

How: the host's busy time (/proc/stat: user, nice, system, irq, softirq; not
idle, iowait or steal) minus the CPU time of this process tree (this process
with its reaped children, and every live descendant with theirs: QEMU, fio,
ssh, an L1).  Between two samples that difference is CPU that somebody else
used, expressed in percent of one core.  Children reaped by a process of the
tree move their time into its cutime/cstime, so nothing of the tree's own work
is counted as foreign; kernel threads working for the tree (a kworker flushing
its writes) are counted as foreign, which errs on the side of calling a point
disturbed.  Clock-tick resolution (10 ms a process): a point of a few seconds
is measured to a few percent of a core.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .hostinfo import cpu_times
from .proc import split_stat

_TICK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat this module needs, times in seconds."""

    pid: int
    ppid: int
    comm: str
    own_s: float       # utime + stime
    children_s: float  # cutime + cstime (reaped children)


def parse_stat(text: str) -> ProcStat:
    """One /proc/PID/stat line (proc.split_stat)."""
    pid, comm, fields = split_stat(text)
    # fields start at proc(5)'s field 3 (state): ppid is [1], utime..cstime [11..14]
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcStat(pid, int(fields[1]), comm, (utime + stime) / _TICK, (cutime + cstime) / _TICK)


def all_processes(proc: Path = _PROC) -> dict[int, ProcStat]:
    """Every process's stat; those that exit while we read are skipped."""
    found = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return found


def host_busy_seconds(proc: Path = _PROC) -> float:
    """All CPUs' busy time since boot (user nice system irq softirq), in seconds."""
    user, nice, system, _idle, _iowait, irq, softirq, _steal = cpu_times(proc)
    return (user + nice + system + irq + softirq) / _TICK


def descendants(processes: dict[int, ProcStat], root: int) -> set[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in processes.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


@dataclass(frozen=True)
class LoadSample:
    at: float                 # time.monotonic()
    busy_s: float             # the host's busy CPU seconds
    own_s: float              # CPU seconds of the run's process tree
    per_process: dict[int, tuple[str, float]] = field(default_factory=dict)  # foreign ones


def sample(root: int | None = None, proc: Path = _PROC, keep_foreign: bool = False) -> LoadSample:
    """One reading; keep_foreign also keeps every other process's CPU (to name the busy ones)."""
    root = os.getpid() if root is None else root
    processes = all_processes(proc)
    tree = descendants(processes, root)
    own = sum(processes[pid].own_s + processes[pid].children_s for pid in tree if pid in processes)
    foreign = {pid: (s.comm, s.own_s) for pid, s in processes.items() if pid not in tree} \
        if keep_foreign else {}
    return LoadSample(time.monotonic(), host_busy_seconds(proc), own, foreign)


def foreign_pct(before: LoadSample, after: LoadSample) -> float:
    """Percent of one core used by others between two samples (never below 0)."""
    wall = after.at - before.at
    if wall <= 0:
        return float("nan")
    foreign = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, 100.0 * foreign / wall)


def busiest(before: LoadSample, after: LoadSample, limit: int = 3) -> list[tuple[str, int, float]]:
    """The foreign processes that used most CPU between two samples: (name, pid, % of a core)."""
    wall = after.at - before.at
    if wall <= 0:
        return []
    used = []
    for pid, (comm, seconds) in after.per_process.items():
        earlier = before.per_process.get(pid)
        delta = seconds - (earlier[1] if earlier and earlier[0] == comm else 0.0)
        if delta > 0:
            used.append((comm, pid, 100.0 * delta / wall))
    return sorted(used, key=lambda item: -item[2])[:limit]


@dataclass
class Watch:
    """The foreign load over one point (see PointWatch.watch)."""

    threshold_pct: float
    before: LoadSample | None = None
    foreign_pct: float = float("nan")

    @property
    def disturbed(self) -> bool:
        return self.foreign_pct > self.threshold_pct

    def columns(self) -> dict:
        """The row fields this watch fills (results.TRUST_COLUMNS)."""
        measured = not math.isnan(self.foreign_pct)
        return {"foreign_cpu_pct": round(self.foreign_pct, 1) if measured else math.nan,
                "disturbed": int(self.disturbed)}


class PointWatch:
    """Measures the foreign load around each point; `enabled` False on a remote host."""

    def __init__(self, threshold_pct: float, enabled: bool = True):
        self.threshold_pct = threshold_pct
        self.enabled = enabled

    def start(self) -> Watch:
        watch = Watch(self.threshold_pct)
        if self.enabled:
            watch.before = sample()
        return watch

    def stop(self, watch: Watch) -> Watch:
        if watch.before is not None:
            watch.foreign_pct = foreign_pct(watch.before, sample())
        return watch


@dataclass(frozen=True)
class QuietCheck:
    """What the wait for a quiet host found."""

    quiet: bool
    foreign_pct: float
    waited_s: float
    busiest: list[tuple[str, int, float]]

    def line(self, threshold_pct: float) -> str:
        names = ", ".join(f"{comm} (pid {pid}, {pct:.0f}%)" for comm, pid, pct in self.busiest)
        if self.quiet:
            return (f"host check: quiet (others used {self.foreign_pct:.1f}% of a core, "
                    f"threshold {threshold_pct:g}%)")
        return (f"warning: host check: not quiet after {self.waited_s:.0f} s: others use "
                f"{self.foreign_pct:.0f}% of a core (threshold {threshold_pct:g}%)"
                + (f"; busiest: {names}" if names else "")
                + "; going on — disturbed points will be re-run, and flagged if they stay so")


def wait_for_quiet(threshold_pct: float, limit_s: float, window_s: float = 2.0,
                   sleep: Callable[[float], None] = time.sleep) -> QuietCheck:
    """Sample windows of window_s until one is below threshold_pct, or limit_s has passed."""
    started = time.monotonic()
    while True:
        before = sample(keep_foreign=True)
        sleep(window_s)
        after = sample(keep_foreign=True)
        load = foreign_pct(before, after)
        waited = time.monotonic() - started
        if load <= threshold_pct or waited >= limit_s:
            return QuietCheck(load <= threshold_pct, load, waited, busiest(before, after))
