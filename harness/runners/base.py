"""What every runner shares: the Runner shape, the guests' files, and the one point loop.

A runner turns a session (one guest × variant × disk × repetition, planned by
matrix.py) into rows of results.csv.  How it boots differs — one Linux boot
for the whole session, one micro-guest boot per point, an L1 that boots an L2 —
but what happens when something fails does not, and is written once here:

* a point that fails on its own (fio exits non-zero, QEMU still up) becomes a
  failed row and the session goes on (`fio_point`);
* an InfraError that ends the session (the guest does not boot, QEMU dies,
  the guest's disk stalls) fails every point not yet run, each with the
  error and the log that shows it (`PointLoop`);
* an error that means the host is gone is raised as HostLost, so the
  scheduler moves the points to another host;
* every point is counted once for the progress display, whatever its fate;
* a UserError is never caught: it is the same for every boot, so the run stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from ..errors import HostLost, InfraError
from ..fio_jobs import GuestStalled
from ..guest import GuestAssets
from ..matrix import Point, Session
from ..runstate import Advance, Run, fail_points, host_lost, is_host_lost
from ..util import Say


class Runner(Protocol):
    """Runs the sessions of one guest of the config."""

    description: str  # for the manifest: what boots, e.g. the image's description

    def run_session(self, session: Session, advance: Advance) -> None:
        """Every point of the session, a row each; advance once per point."""


__all__ = ["GuestAssets", "PointLoop", "Runner", "SessionEnded", "fio_point"]


class SessionEnded(InfraError):
    """The session cannot go on, and the point that found out has its row already."""


class PointLoop:
    """The points of one session in order, with the failure handling of the module docstring.

    Used around the boot, so that a boot that fails fails the points too:

        with PointLoop(run, session, advance, say, log_file) as loop:
            with VM(...) as vm:
                loop.for_each(lambda point: measure(vm, point))

    A point whose measurement raises an InfraError gets a failed row with it,
    and so does every point after it (unless it raised SessionEnded: then it
    wrote its own row).
    """

    def __init__(self, run: Run, session: Session, advance: Advance, say: Say,
                 log_file: Path):
        self.run = run
        self.session = session
        self.advance = advance
        self.say = say
        self.log_file = log_file  # the log a failed row names
        self.remaining: list[Point] = list(session.points)
        self.current: Point | None = None

    def for_each(self, one_point: Callable[[Point], None]) -> None:
        while self.remaining:
            point = self.current = self.remaining.pop(0)
            try:
                one_point(point)
                self.current = None
            finally:
                self.advance(point.key)

    def __enter__(self) -> PointLoop:
        return self

    def __exit__(self, kind, exc, traceback) -> bool:
        if exc is None or not isinstance(exc, InfraError):
            return False
        if is_host_lost(self.run, exc):  # the scheduler moves the points to another host
            raise host_lost(self.run, exc) from exc
        self.say(f"{self.session.key}: failed: {exc}")
        unfinished = [self.current] if self.current and not isinstance(exc, SessionEnded) else []
        fail_points(self.run, unfinished + self.remaining, str(exc), self.log_file)
        for point in self.remaining:
            self.advance(point.key)
        self.remaining, self.current = [], None
        return True


def fio_point(run: Run, say: Say, point: Point, log_file: Path, measure: Callable[[], None],
              qemu_alive: Callable[[], None] = lambda: None) -> None:
    """One fio point of a booted guest; a failure marks only its point failed.

    Unless the guest's disk stalled (later fio runs of the boot would only wait)
    or QEMU itself has gone (qemu_alive raises): then the session ends."""
    try:
        measure()
    except GuestStalled as exc:
        fail_points(run, [point], str(exc), log_file)
        raise SessionEnded(f"not run: the guest stalled earlier in this boot ({point.key})") \
            from exc
    except InfraError as exc:
        if is_host_lost(run, exc):
            raise
        say(f"{point.key}: failed: {exc}")
        fail_points(run, [point], str(exc), log_file)
        try:
            qemu_alive()
        except HostLost:
            raise
        except InfraError as dead:
            raise SessionEnded(str(dead)) from dead
