"""Spreading a run over several hosts: one point at a time per host, failover, nothing lost.

The plan's points are cut into units; a unit is every variant of one guest,
disk and repetition (for the micro-guest, which boots once per point: also of
one workload), so each host that takes a unit measures every variant of its
workloads and ratios stay within a host.  Each host has one worker thread that
takes the next unit from a shared queue and runs its sessions one after the
other: two benchmarks never share a host.

A host whose connection drops (HostLost) is out of the run: the points of its
unit that have no ok row go back to the front of the queue for the other
hosts; when no host is left they become failed rows naming the loss.  A host
that can be brought back (`revive`: kvm-nested boots a new L1) takes its place
and goes on with the queue, the unfinished points first.  Rows
already written stay.  `--resume` plans only the points without an ok row,
whichever host wrote it, so it continues across hosts.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

from ..errors import HostLost
from ..matrix import Point, Session
from ..runstate import Advance, Run, fail_points
from ..util import Say, now_iso


@dataclass(frozen=True)
class Unit:
    """What one host runs in one go: sessions (all variants) and host-fio ceiling points."""

    sessions: tuple[Session, ...] = ()
    ceiling: tuple[Point, ...] = ()

    @property
    def points(self) -> list[Point]:
        return [p for s in self.sessions for p in s.points] + list(self.ceiling)

    def without(self, done: set[str]) -> "Unit | None":
        """The unit minus the points in done (None when nothing is left)."""
        sessions = tuple(replace(s, points=todo) for s in self.sessions
                         if (todo := tuple(p for p in s.points if p.key not in done)))
        ceiling = tuple(p for p in self.ceiling if p.key not in done)
        return Unit(sessions, ceiling) if sessions or ceiling else None


def units(sessions: list[Session], ceiling: list[Point], per_point: set[str]) -> list[Unit]:
    """Sessions grouped by guest, disk and repetition (per workload for guests in per_point)."""
    grouped: dict[tuple, list[Session]] = {}
    for session in sessions:
        if session.guest in per_point:
            for point in session.points:
                key = (session.guest, session.disk, session.rep, point.workload.label)
                grouped.setdefault(key, []).append(replace(session, points=(point,)))
        else:
            grouped.setdefault((session.guest, session.disk, session.rep), []).append(session)
    found = [Unit(tuple(group)) for group in grouped.values()]
    by_rep: dict[tuple, list[Point]] = {}
    for point in ceiling:
        by_rep.setdefault((point.disk, point.rep), []).append(point)
    return found + [Unit(ceiling=tuple(points)) for points in by_rep.values()]


#: Runs one unit on one host's Run (bench.run_unit).
RunUnit = Callable[[Run, Unit, Advance], None]
#: A lost host's Run → a new Run on a host brought back, or None (it stays lost).
Revive = Callable[[Run], "Run | None"]


class Scheduler:
    """The shared queue and one worker per host (see the module docstring)."""

    def __init__(self, hosted: list[Run], work: list[Unit], run_unit: RunUnit, say: Say,
                 advance: Advance, revive: Revive | None = None):
        self.hosted = list(hosted)  # a revived host's new Run replaces its old one
        self.revive = revive
        self.queue: deque[Unit] = deque(work)
        self.run_unit = run_unit
        self.say = say
        self._advance = advance
        self.lock = threading.Lock()
        self.alive = {run.host.label for run in hosted}
        self.stopping = False
        self.errors: list[BaseException] = []
        self.work_done: dict[str, int] = {run.host.label: 0 for run in hosted}
        self.lost: dict[str, str] = {}
        self._last_lost: Run | None = None

    def advance(self, label: str) -> None:
        with self.lock:
            self._advance(label)

    def run(self) -> None:
        """Until the queue is empty or no host is left; Ctrl-C stops every host."""
        workers = [threading.Thread(target=self._worker, args=(run,), daemon=True,
                                    name=f"host {run.host.label}") for run in self.hosted]
        for worker in workers:
            worker.start()
        try:
            while any(w.is_alive() for w in workers):
                for worker in workers:
                    worker.join(0.2)
        except BaseException:
            self.stopping = True
            for run in self.hosted:  # closing the connection kills QEMU there (ssh.py)
                run.host.close()
            for worker in workers:
                worker.join(30)
            raise
        if self.errors:
            raise self.errors[0]
        self._fail_leftovers()

    def _next(self) -> Unit | None:
        with self.lock:
            return self.queue.popleft() if self.queue and not self.stopping else None

    def _worker(self, run: Run) -> None:
        label = run.host.label
        while (unit := self._next()) is not None:
            try:
                self.run_unit(run, unit, self.advance)
                self.work_done[label] += len(unit.points)
            except HostLost as exc:
                revived = self._revived(run, unit, exc)
                if revived is None:
                    self._host_lost(run, unit, exc)
                    return
                run = revived
            except BaseException as exc:  # noqa: BLE001 - a UserError stops the run
                if self.stopping:
                    return
                self.errors.append(exc)
                self.stopping = True
                return

    def _revived(self, run: Run, unit: Unit, exc: HostLost) -> Run | None:
        """The host brought back, its unit's unfinished points first in the queue; or None."""
        if self.stopping or self.revive is None:
            return None
        run.host.close()
        try:
            revived = self.revive(run)
        except BaseException as exc2:  # noqa: BLE001 - then it is lost, for this reason
            self.say(f"{exc}; bringing it back failed: {exc2}")
            return None
        if revived is None:
            return None
        left = unit.without(run.writer.done_keys())
        with self.lock:
            if left is not None:
                self.queue.appendleft(left)
            self.hosted[next(i for i, r in enumerate(self.hosted) if r is run)] = revived
        self.say(f"{exc}; brought back, its {len(left.points) if left else 0} unfinished "
                 "point(s) run again there")
        with self.lock, open(run.log_path("hosts.log"), "a") as log:
            log.write(f"{now_iso()} {exc}; brought back; unfinished point(s) run again: "
                      f"{', '.join(p.key for p in left.points) if left else ''}\n")
        return revived

    def _host_lost(self, run: Run, unit: Unit, exc: HostLost) -> None:
        if self.stopping:
            return
        left = unit.without(run.writer.done_keys())
        with self.lock:
            self.alive.discard(run.host.label)
            self.lost[run.host.label] = str(exc)
            self._last_lost = run
            if left is not None:
                self.queue.appendleft(left)
            elsewhere = sorted(self.alive)
        moved = len(left.points) if left else 0
        where = f"move to {', '.join(elsewhere)}" if elsewhere else "fail: no host is left"
        self.say(f"{exc}; its {moved} unfinished point(s) {where}")
        with self.lock, open(run.log_path("hosts.log"), "a") as log:
            log.write(f"{now_iso()} {exc}; {moved} unfinished point(s) {where}: "
                      f"{', '.join(p.key for p in left.points) if left else ''}\n")
        run.host.close()

    def _fail_leftovers(self) -> None:
        """Points no host could take (every host was lost): failed rows with the reason."""
        if not self.queue:
            return
        reason = "; ".join(self.lost.values()) or "no host left"
        run = self._last_lost or self.hosted[0]
        while self.queue:
            unit = self.queue.popleft()
            fail_points(run, unit.points, f"not run: {reason}", run.log_path("hosts.log"))
            for point in unit.points:
                self.advance(point.key)

