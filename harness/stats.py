"""Aggregation over repetitions: medians, spread, and ratios with confidence intervals.

Confidence intervals (95%) for a ratio of medians are percentile-bootstrap
intervals: the repetitions of each side are resampled independently (with
replacement, 10,000 times, fixed seed 0 so a report is reproducible) and the
ratio of the two resampled medians is recomputed.  The point estimate is the
plain ratio of medians, so it always lies inside its interval.  Why bootstrap
and not a t interval: the median is what the report shows, and it resists the
odd disturbed repetition; the price is that with few repetitions the interval
is coarse — with 3 per side it is about [min/max, max/min], i.e. it excludes 1
only when every repetition of one side beats every repetition of the other.
With a single repetition on either side there is no interval (NaN).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .results import HOST_VARIANT

WORKLOAD_KEYS = ["guest", "accel", "disk", "rw", "bs", "iodepth", "numjobs"]
GROUP_KEYS = ["guest", "variant", "accel", "disk", "rw", "bs", "iodepth", "numjobs"]
NOISY_CV = 0.10
CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0
_LATENCIES = ("lat_mean_us", "lat_p50_us", "lat_p99_us", "lat_p999_us")


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
                   "guest_cpu_pct_median", "host_cpu_pct_median"]


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
    return pd.Series(out)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (guest, variant, accel, disk, rw, bs, iodepth, numjobs).

    Medians and spread of the ok repetitions; n_failed counts failed ones, and a
    point whose repetitions all failed still appears (with NaN numbers).
    `noisy` is True where the IOPS coefficient of variation exceeds 10%.
    """
    records = []
    for key, group in df.groupby(GROUP_KEYS, sort=False):
        spread = _spread(ok_rows(group)).to_dict()
        n_failed = int((group["status"] != "ok").sum())
        records.append({**dict(zip(GROUP_KEYS, key)), **spread, "n_failed": n_failed})
    out = pd.DataFrame(records, columns=GROUP_KEYS + SUMMARY_COLUMNS + ["n_failed"])
    out["n_ok"] = out["n_ok"].fillna(0).astype(int)
    out["noisy"] = out["iops_cv"] > NOISY_CV
    return out.sort_values(GROUP_KEYS, key=_sort_key).reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    """Sort block sizes by size, not alphabetically."""
    if column.name == "bs":
        from .config import parse_size
        return column.map(parse_size)
    return column


def ratio_ci(values: np.ndarray | pd.Series, base: np.ndarray | pd.Series,
             confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
             seed: int = SEED) -> tuple[float, float, float]:
    """(median(values)/median(base), low, high): see the module docstring for the method."""
    values = _clean(values)
    base = _clean(base)
    if len(values) == 0 or len(base) == 0 or np.median(base) == 0:
        return (float("nan"),) * 3
    ratio = float(np.median(values) / np.median(base))
    if len(values) < 2 or len(base) < 2:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    top = np.median(rng.choice(values, size=(resamples, len(values))), axis=1)
    bottom = np.median(rng.choice(base, size=(resamples, len(base))), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = top / bottom
    boot = boot[np.isfinite(boot)]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return ratio, float(min(low, ratio)), float(max(high, ratio))


def _clean(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[~np.isnan(values)]


def _one_ratio(variant: pd.DataFrame, base: pd.DataFrame) -> dict:
    iops = ratio_ci(variant["iops"], base["iops"])
    p99 = ratio_ci(variant["lat_p99_us"], base["lat_p99_us"])
    return {"n": int(variant["iops"].notna().sum()), "n_base": int(base["iops"].notna().sum()),
            "iops_median": variant["iops"].median(), "base_iops_median": base["iops"].median(),
            "ratio": iops[0], "ci_low": iops[1], "ci_high": iops[2],
            "p99_ratio": p99[0], "p99_ci_low": p99[1], "p99_ci_high": p99[2],
            "cv": cv(variant["iops"]), "base_cv": cv(base["iops"])}


def ratios(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each variant against `baseline` on the same workload (same guest, accel, disk, rw, bs,
    iodepth, numjobs): IOPS ratio of medians with 95% CI, and the p99-latency ratio
    (variant/baseline, so < 1 is better).  `noisy` if either side's CV exceeds 10%.
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
                               "base_iops_median", "ratio", "ci_low", "ci_high", "p99_ratio",
                               "p99_ci_low", "p99_ci_high", "cv", "base_cv"]
    out = pd.DataFrame(records, columns=columns)
    out["noisy"] = (out["cv"] > NOISY_CV) | (out["base_cv"] > NOISY_CV)
    return out


def host_ceiling(df: pd.DataFrame) -> pd.DataFrame:
    """Median IOPS of the host-fio rows per (disk, rw, bs, iodepth, numjobs)."""
    keys = ["disk", "rw", "bs", "iodepth", "numjobs"]
    host = ok_rows(df)
    host = host[host["variant"] == HOST_VARIANT]
    if host.empty:
        return pd.DataFrame(columns=keys + ["host_iops_median", "host_n"])
    grouped = host.groupby(keys)["iops"]
    return pd.concat([grouped.median().rename("host_iops_median"),
                      grouped.count().rename("host_n")], axis=1).reset_index()
