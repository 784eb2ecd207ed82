"""How far a run (or a clone) has got: a bar on a terminal, plain lines elsewhere.

Without a terminal, progress lines go through the same Say as every other
message, so a log holds one stream in order.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .util import Say


class RunProgress:
    """Counts units of work (points, host-ceiling points, hostile cases) with an ETA.

    bar: a rich.progress.Progress to draw on a terminal, or None for lines via say.
    """

    def __init__(self, total: int, say: Say, bar=None):
        self.total = total
        self.say = say
        self.bar = bar
        self.done = 0
        self.started = time.monotonic()
        self._task = None

    def __enter__(self) -> "RunProgress":
        if self.bar is not None:
            self.bar.__enter__()
            self._task = self.bar.add_task("points", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def resize(self, change: int) -> None:
        """More work (a disturbed point re-run) or less (rounds an adaptive run no longer needs)."""
        self.total = max(self.done, self.total + change)
        if self.bar is not None:
            self.bar.update(self._task, total=self.total)

    def advance(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self._task, advance=1, description=label)
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * max(0, self.total - self.done)
        self.say(f"[{self.done}/{self.total}] {label} (eta {eta / 60:.1f} min)")


class LiveLine:
    """One line that updates in place on a terminal (clone progress); silent elsewhere."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._shown = False

    def show(self, text: str) -> None:
        if self.live:
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
