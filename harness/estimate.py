"""What a config will do before it does it: boots, points, a rough time (`bench --dry-run`).

The time is an order of magnitude, not a promise: per boot and per point
costs measured on the 2-core TCG machine this was developed on (a fio guest
boots to SSH in ~5 s; a micro-guest point takes half a second plus its
requests at ~25K IOPS; a hostile case ~2 s).  With adaptive repetitions
(`repetitions: {min, max, target}`) both ends are given.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import BenchConfig, GuestSpec
from .devices import device_counts
from .matrix import skipped, unsupported, workloads

FIO_BOOT_S = 10.0          # launch → SSH ready → shutdown, TCG
FIO_POINT_OVERHEAD_S = 3.0
MICRO_POINT_S = 0.5
MICRO_IOPS = 25_000.0
HOSTILE_CASE_S = 2.0
HOSTILE_CASES = 16
#: Above this many points a config is almost surely a mistake; said, not refused.
MANY_POINTS = 5_000


@dataclass(frozen=True)
class Estimate:
    boots: tuple[int, int]         # at min and at max repetitions
    points: tuple[int, int]
    host_points: int
    hostile_cases: int
    seconds: tuple[float, float]


def _guest_rounds(config: BenchConfig, guest: GuestSpec) -> tuple[int, int]:
    if guest.repetitions is not None:
        return guest.repetitions, guest.repetitions
    return config.min_repetitions, config.max_repetitions


def _per_round(config: BenchConfig, guest: GuestSpec) -> tuple[int, int, float]:
    """One round of a guest: boots, points, seconds."""
    runnable = [w for w in workloads(config) if not unsupported(guest, w)]
    counts = guest.disks_per_guest
    sessions = len(config.variants) * len(config.disks) * len(counts) if runnable else 0
    points = sessions * len(runnable)
    if guest.kind == "microguest":
        # the requests counted per device, to err long: N devices at the IOPS of one
        requests = config.workloads.requests * sum(counts) / len(counts)
        per_point = MICRO_POINT_S + requests / MICRO_IOPS
        seconds = points * per_point * (2 if guest.trace else 1)
        return points, points, seconds
    spec = config.workloads
    seconds = sessions * FIO_BOOT_S + points * (spec.runtime_s + spec.ramp_s + FIO_POINT_OVERHEAD_S)
    return sessions, points, seconds


def estimate(config: BenchConfig) -> Estimate:
    boots, points, seconds = [0, 0], [0, 0], [0.0, 0.0]
    for guest in config.guests:
        round_boots, round_points, round_seconds = _per_round(config, guest)
        for end, rounds in enumerate(_guest_rounds(config, guest)):
            boots[end] += rounds * round_boots
            points[end] += rounds * round_points
            seconds[end] += rounds * round_seconds
    host = len(config.disks) * len(device_counts(config)) * len(workloads(config)) \
        * config.min_repetitions if config.host_ceiling else 0
    hostile = HOSTILE_CASES * len(config.variants) if config.hostile else 0
    extra = host * (config.workloads.runtime_s + 1) + hostile * HOSTILE_CASE_S
    return Estimate((boots[0], boots[1]), (points[0], points[1]), host, hostile,
                    (seconds[0] + extra, seconds[1] + extra))


def _span(low: float, high: float, fmt) -> str:
    return fmt(low) if low == high else f"{fmt(low)}–{fmt(high)}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def plan_lines(config: BenchConfig) -> list[str]:
    """What `harness bench --dry-run` prints."""
    found = estimate(config)
    reps = config.repetitions
    rounds = (f"{reps.min}–{reps.max} rounds until every ratio is within ±{reps.target:.0%}"
              if config.target is not None else f"{reps} round(s)")
    lines = [f"config {config.name}: variants {', '.join(v.name for v in config.variants)} "
             f"(baseline {config.baseline}); guests {', '.join(g.id for g in config.guests)}; "
             f"disks {', '.join(d.name for d in config.disks)}; {rounds}",
             f"{_span(*found.points, lambda n: f'{n:,}')} points in "
             f"{_span(*found.boots, lambda n: f'{n:,}')} boots"
             + (f", {found.host_points} host fio points" if found.host_points else "")
             + (f", {found.hostile_cases} hostile cases" if found.hostile_cases else ""),
             f"estimated time: {_span(*found.seconds, _duration)} (TCG on 2 cores; "
             "an order of magnitude)"]
    lines += skipped(config)
    if found.points[1] > MANY_POINTS:
        lines.append(f"warning: {found.points[1]:,} points is a very large matrix: check the "
                     "workloads' lists and repetitions")
    return lines
