"""Rounds of a run: disturbed points run again, and rounds added until the answer is clear.

A round is one repetition of every session, variants interleaved
(matrix.plan).  Two decisions are taken between rounds, from the rows
results.csv holds so far:

* A point whose foreign load exceeded the threshold (hostload.py) is
  *disturbed*: it is run again at the end of its round, up to
  `host_check.retries` times; its row is replaced each time, so the final row
  is the last attempt, still flagged if the host never became quiet.
* With `repetitions: {min, max, target}`, after round `min` and every round
  after it, each ratio to the baseline (stats.ratios, the same interval the
  report shows) is checked: when every one has an interval within ±target of
  its ratio, the rounds stop; otherwise one more round runs, up to `max`.
  Guests with their own `repetitions` run exactly that many rounds.
"""

from __future__ import annotations

import math
from itertools import groupby

import pandas as pd

from .config import BenchConfig
from .matrix import Point, Session, Workload
from .results import HOST_VARIANT, load_results
from .stats import ok_rows, ratios


def by_round(sessions: list[Session]) -> list[tuple[int, list[Session]]]:
    """The sessions grouped by repetition, in plan order (plan() emits rounds in order)."""
    return [(rep, list(group)) for rep, group in groupby(sessions, key=lambda s: s.rep)]


def disturbed_points(rows: list[dict[str, str]], rep: int) -> list[Point]:
    """The guest points of round rep whose (ok) row is flagged disturbed."""
    return [Point(r["guest"], r["variant"], r["disk"],
                  Workload(r["rw"], r["bs"], int(r["iodepth"]), int(r["numjobs"])), int(r["rep"]),
                  int(r.get("devices") or 1))
            for r in rows
            if r["status"] == "ok" and r.get("disturbed") == "1" and int(r["rep"]) == rep
            and r["variant"] != HOST_VARIANT]


def as_sessions(points: list[Point]) -> list[Session]:
    """Points grouped back into boots (one per guest, variant, disk, devices and repetition)."""
    sessions: dict[tuple, list[Point]] = {}
    for p in points:
        sessions.setdefault((p.guest, p.variant, p.disk, p.rep, p.devices), []).append(p)
    return [Session(guest, variant, disk, rep, tuple(todo), devices)
            for (guest, variant, disk, rep, devices), todo in sessions.items()]


def adaptive_guests(config: BenchConfig) -> set[str]:
    """Guests whose number of rounds the target decides (those without their own repetitions)."""
    if config.target is None:
        return set()
    return {g.id for g in config.guests if g.repetitions is None}


def half_width(ratio: float, low: float, high: float) -> float:
    """How far the interval reaches from its ratio, as a fraction (inf without an interval)."""
    if not (math.isfinite(ratio) and math.isfinite(low) and math.isfinite(high)) or ratio <= 0:
        return math.inf
    return max(high / ratio - 1.0, 1.0 - low / ratio)


def precision(frame: pd.DataFrame, baseline: str, guests: set[str]) -> pd.DataFrame:
    """Each ratio of the given guests with the half-width of its interval."""
    rows = ok_rows(frame)
    table = ratios(rows[rows["guest"].isin(guests)], baseline)
    table["half_width"] = [half_width(r.ratio, r.ci_low, r.ci_high) for r in table.itertuples()]
    return table


def off_target(frame: pd.DataFrame, baseline: str, guests: set[str],
               target: float) -> list[str]:
    """One label per ratio whose interval is wider than ±target (empty: the target is met)."""
    table = precision(frame, baseline, guests)
    wide = table[table["half_width"] > target]
    return [f"{r.guest} {r.variant} {r.disk} {r.rw} {r.bs} qd{r.iodepth} j{r.numjobs}: "
            + ("no interval" if math.isinf(r.half_width) else f"±{r.half_width:.0%}")
            for r in wide.itertuples()]


def run_off_target(config: BenchConfig, run_dir) -> list[str]:
    """The ratios of the run's adaptive guests still wider than ±target."""
    return off_target(load_results(run_dir), config.baseline, adaptive_guests(config),
                      config.target)


def round_wanted(config: BenchConfig, run_dir, rep: int) -> tuple[bool, list[str]]:
    """Before round rep: whether the adaptive guests still need it, and the ratios off target.

    Rounds up to `min` are always wanted; beyond `max` never.  Asked before each
    round (not after), so that a resumed run takes the same decision.
    """
    if rep <= config.min_repetitions:
        return True, []
    wide = run_off_target(config, run_dir)
    return bool(wide) and rep <= config.max_repetitions, wide
