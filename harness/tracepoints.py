"""The stages of one virtio-blk request and the trace events that mark them.

Each stage ends at an event on the host (simple-trace timestamps, one clock:
CLOCK_MONOTONIC).  The baseline and the data plane reach the same stage in
different code, so a stage is a set of events, the first of which to fire
within a request marks it:

=========== ==================================== ===========================================
stage       baseline (virtio core, block layer)  dataplane, poll (our trace-dataplane patch)
=========== ==================================== ===========================================
kick        virtio_queue_notify (vCPU thread: the guest's write to the notify register)
picked_up   — (the vCPU runs the handler itself)  virtio_blk_dp_process_vring (thread)
parsed      virtqueue_pop                         virtio_blk_dp_pop
submitted   laio_submit (patches/trace)           virtio_blk_dp_submit (after io_submit)
completed   laio_complete (patches/trace)         virtio_blk_dp_complete
used        virtqueue_flush                       virtio_blk_dp_push
irq         virtio_notify                         virtio_irq (main loop, or poll's thread)
=========== ==================================== ===========================================

A stage's time is from the previous stage seen in the same request to its own
event; the first event of a request is its origin (0: the kick, or the pick-up
when the data plane found the request by polling without a kick).  A stage whose events the binary does not have is "not traced"; one
the binary has but that did not fire (no kick while the data plane polls, no
interrupt for a polling guest) is "not seen"; in both cases its time is part
of the next stage that is seen, never guessed.  The host cannot see the guest
take the completion: `turnaround` is the time from a request's last host
event to the next request's first, the guest's side of the loop at QD1.

Requests are told apart by order, so the pairing needs QD1 (one request in
flight); requests around a drop of records, or missing their pop or their
used-ring update, are left out and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .trace_parse import Trace

#: a run's traced points: results/<run>/traces/ (runners/trace.py writes, trace_report.py reads)
TRACES_DIR = "traces"

STAGES: tuple[str, ...] = ("kick", "picked_up", "parsed", "submitted", "completed", "used", "irq")
STAGE_EVENTS: dict[str, tuple[str, ...]] = {
    "kick": ("virtio_queue_notify",),
    "picked_up": ("virtio_blk_dp_process_vring",),
    "parsed": ("virtio_blk_dp_pop", "virtqueue_pop"),
    "submitted": ("virtio_blk_dp_submit", "laio_submit"),
    "completed": ("virtio_blk_dp_complete", "laio_complete"),
    "used": ("virtio_blk_dp_push", "virtqueue_flush"),
    "irq": ("virtio_irq", "virtio_notify"),
}
STAGE_LABELS: dict[str, str] = {
    "kick": "previous → kick",
    "picked_up": "kick → picked up",
    "parsed": "picked up → descriptors parsed",
    "submitted": "parsed → submitted (io_submit)",
    "completed": "submitted → completed (AIO)",
    "used": "completed → used ring updated",
    "irq": "used ring → interrupt raised",
    "turnaround": "guest: completion → next request (host view)",
}
#: the span of a request on the host, first stage to last, per request
HOST_SPAN = "host_total"
TURNAROUND = "turnaround"
#: a stage is "not seen" when it fired in fewer than this share of requests
SEEN_SHARE = 0.5
_REQUIRED = ("parsed", "used")


def wanted_events() -> list[str]:
    return sorted({name for names in STAGE_EVENTS.values() for name in names})


def events_file_text(available: tuple[str, ...] | list[str]) -> str:
    """The -trace events=FILE content for a binary: the wanted events it has
    (the pinned tree exits on an unknown name)."""
    have = set(available)
    return "".join(f"{name}\n" for name in wanted_events() if name in have)


def traced_stages(available: tuple[str, ...] | list[str]) -> list[str]:
    """The stages a binary can mark."""
    have = set(available)
    return [s for s in STAGES if any(e in have for e in STAGE_EVENTS[s])]


@dataclass(frozen=True)
class Requests:
    """Per request, the time of each stage's event (ns, NaN where not fired)."""

    times: pd.DataFrame  # columns STAGES, one row per complete request, in order
    traced: tuple[str, ...]  # stages the binary can mark
    incomplete: int  # segments left out (no pop or no used-ring update, or cut by a drop)
    dropped: int  # records the backend dropped


def _stage_of(trace: Trace) -> np.ndarray:
    """Stage index per record, -1 for events that mark no stage."""
    lookup = np.full(len(trace.names), -1, dtype=np.int64)
    for index, stage in enumerate(STAGES):
        for event in STAGE_EVENTS[stage]:
            if event in trace.names:
                lookup[trace.names.index(event)] = index
    return lookup[trace.records["event"].astype(np.int64)] if len(trace.records) else \
        np.empty(0, dtype=np.int64)


def segment(trace: Trace) -> Requests:
    """Cut the event stream into requests (QD1: one request in flight).

    A request ends when an event of an earlier or the same stage arrives (the
    next request's kick after this one's interrupt), except that a repeated
    pick-up before the pop replaces the first (the thread looked at an empty
    ring first), and that an interrupt before the next request reached its
    used-ring update is the previous request's when that one has none: a
    guest that checks the used ring before it halts may see the completion
    and kick again before the interrupt is raised.  A drop of records ends the
    request it falls in, unfinished.
    """
    # threads take their timestamps before their ring slots: order by time
    ts_file = trace.records["ts"].astype(np.int64)
    order = np.argsort(ts_file, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    stages, ts = _stage_of(trace)[order], ts_file[order]
    drops = {int(rank[d]) if d < len(rank) else len(rank) for d in trace.drop_at}
    picked, used, irq = (STAGES.index(s) for s in ("picked_up", "used", "irq"))
    rows: list[list[float]] = []
    incomplete = 0
    current: list[float] = [np.nan] * len(STAGES)
    last = -1
    broken = False

    def close() -> None:
        nonlocal incomplete, current, last, broken
        if last >= 0:
            if broken or any(np.isnan(current[STAGES.index(s)]) for s in _REQUIRED):
                incomplete += 1
            else:
                rows.append(current)
        current, last, broken = [np.nan] * len(STAGES), -1, False

    for i, stage in enumerate(stages):
        if i in drops:
            broken = broken or last >= 0
            close()
            broken = True  # the request after a drop may have lost its first events
        if stage < 0:
            continue
        if stage == picked and last == picked:
            current[stage] = float(ts[i])
            continue
        if stage == irq and np.isnan(current[used]) and rows and np.isnan(rows[-1][irq]) \
                and not broken:
            rows[-1][irq] = float(ts[i])  # late: the guest saw the used ring and went on
            continue
        if stage <= last:
            close()
        current[stage] = float(ts[i])
        last = stage
    close()
    times = pd.DataFrame(rows, columns=list(STAGES))
    have = set(trace.names)
    traced = tuple(s for s in STAGES if any(e in have for e in STAGE_EVENTS[s]))
    return Requests(times, traced, incomplete, trace.dropped)


def spans(requests: Requests, skip: int = 0) -> pd.DataFrame:
    """Per request the time (µs) of each stage seen, the host total and the turnaround.

    skip: the first requests to leave out (the guest's warm-up).  A stage
    that did not fire in a request has NaN; its time is in the next one seen.
    """
    times = requests.times.iloc[skip:].reset_index(drop=True)
    out = pd.DataFrame(index=times.index)
    previous = pd.Series(np.nan, index=times.index)
    first = pd.Series(np.nan, index=times.index)
    for stage in STAGES:
        at = times[stage]
        out[stage] = (at - previous) / 1000.0
        out[stage] = out[stage].where(previous.notna() | at.isna(), 0.0)  # the first: origin
        previous = previous.where(at.isna(), at)
        first = first.where(first.notna() | at.isna(), at)
    out[HOST_SPAN] = (times.max(axis=1) - first) / 1000.0
    out[TURNAROUND] = _turnaround(times, first) / 1000.0
    return out


def _turnaround(times: pd.DataFrame, first: pd.Series) -> pd.Series:
    """Next request's first event minus this request's last event before it (ns)."""
    following = first.shift(-1)
    values = times.to_numpy()
    before = np.where(values < following.to_numpy()[:, None], values, np.nan)
    with np.errstate(all="ignore"):
        last = pd.Series(np.nanmax(np.where(np.isnan(before), -np.inf, before), axis=1),
                         index=times.index)
    return (following - last).where(np.isfinite(last) & following.notna())


def seen_stages(table: pd.DataFrame, traced: tuple[str, ...]) -> dict[str, str]:
    """Per stage: "seen", "not traced" or "not seen" (fired in too few requests)."""
    state = {}
    for stage in STAGES:
        if stage not in traced:
            state[stage] = "not traced"
        elif table[stage].notna().mean() >= SEEN_SHARE if len(table) else False:
            state[stage] = "seen"
        else:
            state[stage] = "not seen"
    return state


def read_events_list(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


def load_point_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read traced point {path}: {exc}") from exc
