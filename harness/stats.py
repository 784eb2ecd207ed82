"""Aggregation over repetitions: medians, spread, ratios with confidence intervals, tests.

Confidence intervals (95%) for a ratio of medians are bootstrap BCa intervals
(scipy.stats.bootstrap, method="BCa"): the repetitions of each side are
resampled independently (10,000 times, fixed seed 0 so that a report is
reproducible), the ratio of the two resampled medians recomputed, and the
percentiles corrected for the bias and skew of that distribution.  Why a
bootstrap of medians and not a t interval: the median is what the report shows
and it resists the odd disturbed repetition; the price is that with few
repetitions the interval is coarse (with 3 a side it can only end at ratios of
observed values).  The estimate is the plain ratio of medians; the interval is
not forced to contain it.

Degenerate samples, stated in `RatioCI.method`:
  * fewer than 2 repetitions on either side: no interval (NaN), method "none";
  * every repetition equal on both sides: the bootstrap distribution is one
    point, so the interval is [ratio, ratio], method "no spread";
  * BCa undefined (scipy returns NaN: the estimate lies outside the bootstrap
    distribution, or the jackknife has no spread): the plain percentile
    interval of the same resamples, method "percentile".

Tests: an exact two-sided Mann-Whitney U test per workload, and the
Benjamini-Hochberg adjustment (scipy.stats.false_discovery_control) across the
workloads of one comparison.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from math import comb

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .config import parse_size
from .results import CPU_PER_IO_COLUMNS, GUEST_BOUND, HOST_VARIANT

#: A median or a ratio never pools two hosts: `host` (results schema 3) is a key.
WORKLOAD_KEYS = ["host", "guest", "accel", "disk", "rw", "bs", "iodepth", "numjobs"]
GROUP_KEYS = ["host", "guest", "variant", "accel", "disk", "rw", "bs", "iodepth", "numjobs"]
NOISY_CV = 0.10
#: A point whose guest CPU (guest_cpu_pct: busy share of all its vCPUs) is at least this
#: is guest-bound (results.GUEST_BOUND): it measures the emulated guest, not the I/O path.
GUEST_BOUND_PCT = 90.0
CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0
_LATENCIES = ("lat_mean_us", "lat_p50_us", "lat_p99_us", "lat_p999_us")


def guest_bound(guest_cpu_pct: float | None) -> str:
    """The `bound` column of a point whose guest reported its CPU: GUEST_BOUND or ""."""
    if guest_cpu_pct is None or not np.isfinite(guest_cpu_pct):
        return ""
    return GUEST_BOUND if guest_cpu_pct >= GUEST_BOUND_PCT else ""


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "ok") & df["iops"].notna()]


def cv(values: np.ndarray | pd.Series) -> float:
    """Coefficient of variation (sample std / mean); NaN with fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2 or values.mean() == 0:
        return float("nan")
    return float(values.std(ddof=1) / values.mean())


SUMMARY_COLUMNS = ["n_ok", "iops_median", "iops_min", "iops_max", "iops_q1", "iops_q3", "iops_iqr",
                   "iops_cv", "bw_mib_s_median", "lat_mean_us_median", "lat_p50_us_median",
                   "lat_p99_us_median", "lat_p999_us_median", "lat_p99_us_min", "lat_p99_us_max",
                   "guest_cpu_pct_median", "host_cpu_pct_median",
                   *(f"{c}_median" for c in CPU_PER_IO_COLUMNS), "n_guest_bound", "guest_bound"]


def _spread(group: pd.DataFrame) -> pd.Series:
    iops = group["iops"].dropna()
    q1, q3 = (iops.quantile(0.25), iops.quantile(0.75)) if len(iops) else (np.nan, np.nan)
    out = {"n_ok": len(iops), "iops_median": iops.median(), "iops_min": iops.min(),
           "iops_max": iops.max(), "iops_q1": q1, "iops_q3": q3, "iops_iqr": q3 - q1,
           "iops_cv": cv(iops), "bw_mib_s_median": group["bw_mib_s"].median()}
    for col in _LATENCIES:
        out[f"{col}_median"] = group[col].median()
    out["lat_p99_us_min"], out["lat_p99_us_max"] = group["lat_p99_us"].min(), group["lat_p99_us"].max()
    out["guest_cpu_pct_median"] = group["guest_cpu_pct"].median()
    out["host_cpu_pct_median"] = group["host_cpu_pct"].median()
    for col in CPU_PER_IO_COLUMNS:
        out[f"{col}_median"] = group[col].median()
    out["n_guest_bound"] = int((group["bound"] == GUEST_BOUND).sum())
    out["guest_bound"] = is_guest_bound(out["n_guest_bound"], len(iops))
    return pd.Series(out)


def is_guest_bound(n_bound: int, n_ok: int) -> bool:
    """A group is guest-bound when more than half of its ok repetitions are."""
    return bool(n_ok and 2 * n_bound > n_ok)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (guest, variant, accel, disk, rw, bs, iodepth, numjobs).

    Medians and spread of the ok repetitions; n_failed counts failed ones, and a
    point whose repetitions all failed still appears (with NaN numbers).
    `noisy` is True where the IOPS coefficient of variation exceeds 10%.
    The CPU-per-I/O medians (`cpu_us_per_io_median` and per thread kind) are of the
    ok repetitions; `guest_bound` when most of them are guest-bound (GUEST_BOUND_PCT).
    """
    records = []
    for key, group in df.groupby(GROUP_KEYS, sort=False):
        spread = _spread(ok_rows(group)).to_dict()
        n_failed = int((group["status"] != "ok").sum())
        records.append({**dict(zip(GROUP_KEYS, key)), **spread, "n_failed": n_failed})
    out = pd.DataFrame(records, columns=GROUP_KEYS + SUMMARY_COLUMNS + ["n_failed"])
    out["n_ok"] = out["n_ok"].fillna(0).astype(int)
    out["n_guest_bound"] = out["n_guest_bound"].fillna(0).astype(int)
    out["guest_bound"] = out["guest_bound"].fillna(False).astype(bool)
    out["noisy"] = out["iops_cv"] > NOISY_CV
    return out.sort_values(GROUP_KEYS, key=_sort_key).reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    """Sort block sizes by size, not alphabetically."""
    if column.name == "bs":
        return column.map(parse_size)
    return column


@dataclass(frozen=True)
class RatioCI:
    """median(values) / median(base) and its 95% interval; `method` as in the module docstring."""

    ratio: float
    low: float
    high: float
    method: str  # "BCa", "percentile", "no spread", "none"

    @property
    def has_interval(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))


_NAN = float("nan")
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters \
    else "random_state"  # scipy < 1.15


def _ratio_of_medians(top: np.ndarray, bottom: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(top, axis=axis) / np.median(bottom, axis=axis)


def _bootstrap(values: np.ndarray, base: np.ndarray, method: str, confidence: float,
               resamples: int, seed: int) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a NaN interval is handled by the caller
        result = scipy_stats.bootstrap(
            (values, base), _ratio_of_medians, n_resamples=resamples, method=method,
            confidence_level=confidence, vectorized=True,
            **{_RNG_KEYWORD: np.random.default_rng(seed)})
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def ratio_ci(values: np.ndarray | pd.Series, base: np.ndarray | pd.Series,
             confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
             seed: int = SEED) -> RatioCI:
    """The ratio of medians with its bootstrap interval; see the module docstring."""
    values, base = _clean(values), _clean(base)
    if len(values) == 0 or len(base) == 0 or np.median(base) == 0:
        return RatioCI(_NAN, _NAN, _NAN, "none")
    ratio = float(np.median(values) / np.median(base))
    if len(values) < 2 or len(base) < 2:
        return RatioCI(ratio, _NAN, _NAN, "none")
    if np.ptp(values) == 0 and np.ptp(base) == 0:
        return RatioCI(ratio, ratio, ratio, "no spread")
    for method, name in (("BCa", "BCa"), ("percentile", "percentile")):
        low, high = _bootstrap(values, base, method, confidence, resamples, seed)
        if np.isfinite(low) and np.isfinite(high):
            return RatioCI(ratio, low, high, name)
    return RatioCI(ratio, _NAN, _NAN, "none")


def _clean(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[~np.isnan(values)]


def mann_whitney_p(a, b) -> float:
    """Two-sided Mann-Whitney U p-value, exact unless values tie (then the normal
    approximation); NaN with fewer than 2 values a side, 1 when all are equal."""
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        return _NAN
    distinct = len(np.unique(np.concatenate([a, b])))
    if distinct == 1:               # all equal: no evidence of a difference
        return 1.0
    method = "exact" if distinct == len(a) + len(b) else "asymptotic"
    return float(scipy_stats.mannwhitneyu(b, a, alternative="two-sided", method=method).pvalue)


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p the exact test can give with these sample sizes."""
    return 2.0 / comb(n_a + n_b, n_a) if n_a and n_b else _NAN


def benjamini_hochberg(p_values) -> np.ndarray:
    """BH-adjusted p-values (q); NaN stays NaN and does not count as a test."""
    p_values = np.asarray(p_values, dtype=float)
    q_values = np.full(len(p_values), np.nan)
    tested = np.isfinite(p_values)
    if tested.any():
        q_values[tested] = scipy_stats.false_discovery_control(p_values[tested], method="bh")
    return q_values


def _bound(rows: pd.DataFrame) -> bool:
    return is_guest_bound(int((rows["bound"] == GUEST_BOUND).sum()), int(rows["iops"].notna().sum()))


def _one_ratio(variant: pd.DataFrame, base: pd.DataFrame) -> dict:
    iops = ratio_ci(variant["iops"], base["iops"])
    p99 = ratio_ci(variant["lat_p99_us"], base["lat_p99_us"])
    return {"n": int(variant["iops"].notna().sum()), "n_base": int(base["iops"].notna().sum()),
            "iops_median": variant["iops"].median(), "base_iops_median": base["iops"].median(),
            "ratio": iops.ratio, "ci_low": iops.low, "ci_high": iops.high, "ci_method": iops.method,
            "p99_ratio": p99.ratio, "p99_ci_low": p99.low, "p99_ci_high": p99.high,
            "cv": cv(variant["iops"]), "base_cv": cv(base["iops"]),
            "guest_bound": _bound(variant) or _bound(base)}


def ratios(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each variant against `baseline` on the same workload (same guest, accel, disk, rw, bs,
    iodepth, numjobs): IOPS ratio of medians with 95% CI, and the p99-latency ratio
    (variant/baseline, so < 1 is better).  `noisy` if either side's CV exceeds 10%;
    `guest_bound` if either side is (summarize): then the ratio measures the emulated
    guest, not the I/O path, and is never the data plane's effect.
    The host-fio ceiling rows are not a variant and are left out.
    """
    good = ok_rows(df)
    good = good[good["variant"] != HOST_VARIANT]
    records = []
    for key, workload in good.groupby(WORKLOAD_KEYS, sort=True):
        base = workload[workload["variant"] == baseline]
        if base.empty:
            continue
        for variant, rows in workload.groupby("variant"):
            if variant == baseline:
                continue
            record = dict(zip(WORKLOAD_KEYS, key), variant=variant, baseline=baseline)
            records.append({**record, **_one_ratio(rows, base)})
    columns = WORKLOAD_KEYS + ["variant", "baseline", "n", "n_base", "iops_median",
                               "base_iops_median", "ratio", "ci_low", "ci_high", "ci_method", "p99_ratio",
                               "p99_ci_low", "p99_ci_high", "cv", "base_cv", "guest_bound"]
    out = pd.DataFrame(records, columns=columns)
    out["noisy"] = (out["cv"] > NOISY_CV) | (out["base_cv"] > NOISY_CV)
    return out


def host_ceiling(df: pd.DataFrame) -> pd.DataFrame:
    """Median IOPS (and fio's CPU µs per I/O) of the host-fio rows per
    (host, disk, rw, bs, iodepth, numjobs)."""
    keys = ["host", "disk", "rw", "bs", "iodepth", "numjobs"]
    host = ok_rows(df)
    host = host[host["variant"] == HOST_VARIANT]
    if host.empty:
        return pd.DataFrame(columns=keys + ["host_iops_median", "host_n",
                                            "host_cpu_us_per_io_median"])
    grouped = host.groupby(keys)
    return pd.concat([grouped["iops"].median().rename("host_iops_median"),
                      grouped["iops"].count().rename("host_n"),
                      grouped["cpu_us_per_io"].median().rename("host_cpu_us_per_io_median")],
                     axis=1).reset_index()
