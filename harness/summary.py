"""The numbers of one run, computed once: what report.md shows and summary.json holds.

`RunNumbers.of(rows, baseline)` aggregates the rows (stats.summarize, stats.ratios,
stats.host_ceiling); report.md renders it as tables and `summary_document` as JSON
for scripts and dashboards, so the two cannot disagree.

summary.json (schema_version 5; 3 added `host` to each workload entry, 4 the trust columns, the Welch interval and `verdict`, 5 `devices` to each workload entry):
  schema_version, run_id, baseline, accel, source_schema_versions (of results.csv
  and manifest.json, null when there is none), malformed_rows (line and reason each),
  ci ({confidence, method, resamples, seed}), and `workloads`: one entry per host × guest ×
  accel × disk × devices × rw × bs × iodepth × numjobs with `host_fio_iops_median` and
  `variants`: per variant n_ok, n_failed, iops {median, min, max, cv},
  lat_p99_us {median, min, max}, lat_p50_us_median, lat_p999_us_median,
  ratio (to the baseline: value, ci_low, ci_high, ci_method, range_low, range_high;
  null for the baseline itself), p99_ratio (value, ci_low, ci_high), `verdict`
  (at_least_baseline: stats.goal_verdict of the IOPS ratio's interval against 1 —
  met, missed or undecided) and flags {baseline, noisy, all_failed, faster, slower,
  ci_within_10pct} — faster/slower: the 95% CI of the IOPS ratio lies wholly
  above/below 1.
  CPU price (schema 4): per variant `cpu_us_per_io` {total, vcpu, main, iothread,
  other} (medians of host CPU µs per I/O of the QEMU process, threads.py),
  guest_cpu_pct_median, n_guest_bound and flags.guest_bound (its points, or the
  baseline's, are guest-bound: the ratio measures the guest, not the data plane,
  whatever its verdict says); per workload `guest_bound` (any variant is) and
  host_fio_cpu_us_per_io_median; top-level `guest_bound_pct`, the threshold
  (stats.GUEST_BOUND_PCT).

The ratio is of geometric means with a Welch t interval on the logs
(stats.ratio_ci).  With fewer than 3 repetitions on a side there is no interval:
ci_low/ci_high are null, range_low/range_high give the min–max of the ratio, the
verdict is undecided, faster/slower are false and ci_within_10pct is null (no
precision is claimed).  Numbers that do not exist are null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd

from . import stats
from .results import CPU_PER_IO_COLUMNS, HOST_VARIANT, SCHEMA_VERSION, BadLine

PRECISION = 0.10  # the ±10% that the configs aim their repetitions at


@dataclass(frozen=True)
class WorkloadNumbers:
    """One workload: its variants' spread, their ratios to the baseline, the host ceiling."""

    key: dict[str, Any]          # guest, accel, disk, rw, bs, iodepth, numjobs
    variants: pd.DataFrame       # rows of stats.summarize
    ratios: dict[str, Any]       # variant → row of stats.ratios (itertuples)
    host_iops: float | None
    host_cpu_us_per_io: float | None = None  # host fio's own CPU per I/O

    @property
    def guest_bound(self) -> bool:
        """Some variant's points are guest-bound: no ratio here is the data plane's effect."""
        return bool(self.variants["guest_bound"].any()) if len(self.variants) else False


@dataclass(frozen=True)
class RunNumbers:
    rows: pd.DataFrame
    summary: pd.DataFrame
    ratios: pd.DataFrame
    ceiling: pd.DataFrame
    baseline: str

    @classmethod
    def of(cls, rows: pd.DataFrame, baseline: str) -> "RunNumbers":
        return cls(rows, stats.summarize(rows), stats.ratios(rows, baseline),
                   stats.host_ceiling(rows), baseline)

    def workloads(self) -> Iterator[WorkloadNumbers]:
        guests = self.summary[self.summary["variant"] != HOST_VARIANT]
        for key, frame in guests.groupby(stats.WORKLOAD_KEYS, sort=False):
            wanted = dict(zip(stats.WORKLOAD_KEYS, key))
            these = self.ratios[(self.ratios[stats.WORKLOAD_KEYS]
                                 == pd.Series(wanted)).all(axis=1)]
            yield WorkloadNumbers(wanted, frame, {r.variant: r for r in these.itertuples(index=False)},
                                  *self._ceiling_for(wanted))

    def _ceiling_for(self, key: dict[str, Any]) -> tuple[float | None, float | None]:
        hit = stats.ceiling_row(self.ceiling, key)
        if hit is None:
            return None, None
        return float(hit["host_iops_median"]), float(hit["host_cpu_us_per_io_median"])


def ci_half_width(ratio, low, high):
    """Half the CI's width relative to the ratio (NaN without an interval)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(high) - np.asarray(low)) / 2 / np.asarray(ratio)


def has_ci(ratio) -> bool:
    return ratio is not None and math.isfinite(ratio.ci_low) and math.isfinite(ratio.ci_high)


def baseline_verdict(ratio) -> str | None:
    """met / missed / undecided for "at least the baseline's IOPS", from the interval;
    None for the baseline itself (no ratio)."""
    if ratio is None:
        return None
    return stats.goal_verdict(ratio.ci_low, ratio.ci_high, 1.0)


def flags(item, ratio, baseline: str) -> dict[str, bool | None]:
    """Verdicts of one variant on one workload (see the module docstring)."""
    with_ci = has_ci(ratio)
    within = None
    if with_ci:
        within = bool(ci_half_width(ratio.ratio, ratio.ci_low, ratio.ci_high) <= PRECISION)
    return {"baseline": item.variant == baseline, "noisy": bool(item.noisy),
            "all_failed": int(item.n_ok) == 0,
            "faster": bool(with_ci and ratio.ci_low > 1.0),
            "slower": bool(with_ci and ratio.ci_high < 1.0),
            "guest_bound": bool(item.guest_bound or (ratio is not None and ratio.guest_bound)),
            "ci_within_10pct": within}


def _number(value) -> float | int | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def cpu_entry(item) -> dict[str, float | None]:
    """Median host CPU µs per I/O of one variant: in all and per thread kind."""
    return {("total" if col == "cpu_us_per_io" else col.removeprefix("cpu_us_per_io_")):
            _number(getattr(item, f"{col}_median")) for col in CPU_PER_IO_COLUMNS}


def _variant_entry(item, ratio, baseline: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "variant": item.variant, "n_ok": int(item.n_ok), "n_failed": int(item.n_failed),
        "iops": {"median": _number(item.iops_median), "min": _number(item.iops_min),
                 "max": _number(item.iops_max), "cv": _number(item.iops_cv)},
        "lat_p99_us": {"median": _number(item.lat_p99_us_median),
                       "min": _number(item.lat_p99_us_min), "max": _number(item.lat_p99_us_max)},
        "lat_p50_us_median": _number(item.lat_p50_us_median),
        "lat_p999_us_median": _number(item.lat_p999_us_median),
        "cpu_us_per_io": cpu_entry(item), "guest_cpu_pct_median": _number(item.guest_cpu_pct_median),
        "n_guest_bound": int(item.n_guest_bound),
        "ratio": None, "p99_ratio": None,
        "verdict": {"at_least_baseline": baseline_verdict(ratio)},
        "flags": flags(item, ratio, baseline)}
    if ratio is not None:
        entry["ratio"] = {"value": _number(ratio.ratio), "ci_low": _number(ratio.ci_low),
                          "ci_high": _number(ratio.ci_high), "ci_method": ratio.ci_method,
                          "range_low": _number(ratio.range_low),
                          "range_high": _number(ratio.range_high)}
        entry["p99_ratio"] = {"value": _number(ratio.p99_ratio),
                              "ci_low": _number(ratio.p99_ci_low),
                              "ci_high": _number(ratio.p99_ci_high)}
    return entry


def summary_document(numbers: RunNumbers, run_id: str, accel: str,
                     bad_lines: tuple[BadLine, ...] = (),
                     sources: dict[str, int | None] | None = None) -> dict[str, Any]:
    """summary.json's content; `sources`: the schema versions of results.csv and manifest.json."""
    workloads = []
    for workload in numbers.workloads():
        key = {k: (int(v) if k in ("devices", "iodepth", "numjobs") else str(v))
               for k, v in workload.key.items()}
        variants = [_variant_entry(item, workload.ratios.get(item.variant), numbers.baseline)
                    for item in workload.variants.itertuples(index=False)]
        workloads.append({**key, "host_fio_iops_median": _number(workload.host_iops),
                          "host_fio_cpu_us_per_io_median": _number(workload.host_cpu_us_per_io),
                          "guest_bound": workload.guest_bound, "variants": variants})
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "baseline": numbers.baseline,
            "accel": accel,
            "ci": {"confidence": stats.CONFIDENCE, "method": stats.CI_METHOD,
                   "df": "Welch-Satterthwaite", "min_repetitions": stats.MIN_CI_REPS},
            "guest_bound_pct": stats.GUEST_BOUND_PCT,
            "source_schema_versions": sources or {},
            "malformed_rows": [{"line": b.line, "reason": b.reason} for b in bad_lines],
            "workloads": workloads}
