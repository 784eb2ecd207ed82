"""Aggregation over repetitions: medians, spread, ratios with confidence intervals, verdicts.

The ratio of two variants (or of two runs) is the ratio of geometric means,
exp(mean(log b) − mean(log a)), and its interval is a Welch t interval on log
IOPS: the difference of the mean logs ± t(df) × sqrt(s²_a/n_a + s²_b/n_b),
Welch–Satterthwaite degrees of freedom, exponentiated.  Why this one:
  * it is honest at the repetitions we run (3–5 a side): the t quantile grows
    as n shrinks (12.7 at df 1, 4.3 at df 2, 2.8 at df 4), so a short run gets
    a wide interval instead of the too-narrow one a bootstrap gives (a BCa or
    percentile bootstrap of 3 values can only end at observed ratios; with 3
    log-normal repetitions a side at CV 4% its "95%" interval of the ratio of
    medians covered the true ratio in 89% of 300 simulated pairs, the Welch
    interval in 95%: tests/test_stats.py), and unlike an exact rank test (whose smallest
    two-sided p with 3 a side is 0.1) it can still decide when the effect is
    large next to the spread;
  * IOPS are positive and their noise is multiplicative, so on the log scale a
    ratio is a difference and the interval is symmetric in log space (B/A and
    A/B are mirror images);
  * the two sides keep their own variances (Welch): a polling variant is often
    far noisier than the baseline.
Its assumption, roughly log-normal repetitions, cannot be checked with 3 values;
one wild repetition inflates its side's variance and so widens the interval,
which makes a verdict less likely, not a false one more likely.

With fewer than MIN_CI_REPS (3) repetitions on either side no interval is given
(NaN; method "none: fewer than 3 repetitions"); `range_low`/`range_high` then hold
min(B)/max(A)–max(B)/min(A), the min–max of the ratio, which the report shows
instead and says so.  Every repetition equal on both sides: a zero-width
interval, method "no spread".

Verdicts read intervals, never point estimates: `goal_verdict` (met / missed /
undecided against a goal ratio) and `change_verdict` (regressed / improved /
unchanged / inconclusive against a ±tolerance band).  Across the workloads of
one comparison, `fcr_confidence` gives the false-coverage-rate adjusted level of
Benjamini & Yekutieli (2005): after selecting the R of m intervals that call a
change, those R are reported at level 1 − αR/m (see compare.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .config import parse_size
from .results import CPU_PER_IO_COLUMNS, GUEST_BOUND, HOST_VARIANT

#: A median or a ratio never pools two hosts: `host` (results schema 3) is a key; nor two
#: numbers of test devices (`devices`, schema 5: older rows read as 1).
WORKLOAD_KEYS = ["host", "guest", "accel", "disk", "devices", "rw", "bs", "iodepth", "numjobs"]
#: what a host-fio ceiling is matched to a guest's workload by
CEILING_KEYS = ["host", "disk", "devices", "rw", "bs", "iodepth", "numjobs"]
GROUP_KEYS = ["host", "guest", "variant", "accel", "disk", "devices", "rw", "bs", "iodepth",
              "numjobs"]
NOISY_CV = 0.10
#: A point whose guest CPU (guest_cpu_pct: busy share of all its vCPUs) is at least this
#: is guest-bound (results.GUEST_BOUND): it measures the emulated guest, not the I/O path.
GUEST_BOUND_PCT = 90.0
CONFIDENCE = 0.95
MIN_CI_REPS = 3  # fewer repetitions a side: no interval, the min–max of the ratio instead
CI_METHOD = "Welch t on logs (ratio of geometric means)"
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
    """One row per (host, guest, variant, accel, disk, devices, rw, bs, iodepth, numjobs).

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
    """B/A as a ratio of geometric means with its interval; `method` as in the module docstring.

    `confidence` is the level the interval was computed at; `df` the Welch degrees of
    freedom; `range_low`/`range_high` the min–max of the ratio (min(B)/max(A),
    max(B)/min(A)), given whenever both sides have a value."""

    ratio: float
    low: float
    high: float
    method: str  # CI_METHOD, "no spread", "none: …"
    confidence: float = CONFIDENCE
    df: float = float("nan")
    range_low: float = float("nan")
    range_high: float = float("nan")
    n: int = 0
    n_base: int = 0
    log_diff: float = float("nan")   # mean(log B) − mean(log A)
    log_se: float = float("nan")     # its standard error

    @property
    def has_interval(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))

    def at(self, confidence: float) -> "RatioCI":
        """The same estimate with its interval at another level (for FCR adjustment)."""
        if not (np.isfinite(self.log_se) and np.isfinite(self.df)):
            return RatioCI(**{**self.__dict__, "confidence": confidence})
        low, high = _t_bounds(self.log_diff, self.log_se, self.df, confidence)
        return RatioCI(**{**self.__dict__, "low": low, "high": high, "confidence": confidence})


_NAN = float("nan")


def _t_bounds(diff: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    t = float(scipy_stats.t.ppf(0.5 + confidence / 2, df))
    return float(np.exp(diff - t * se)), float(np.exp(diff + t * se))


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch–Satterthwaite degrees of freedom of mean(B) − mean(A)."""
    qa, qb = var_a / n_a, var_b / n_b
    denominator = qa ** 2 / (n_a - 1) + qb ** 2 / (n_b - 1)
    return float((qa + qb) ** 2 / denominator) if denominator > 0 else _NAN


def ratio_ci(values: np.ndarray | pd.Series, base: np.ndarray | pd.Series,
             confidence: float = CONFIDENCE, min_reps: int = MIN_CI_REPS) -> RatioCI:
    """values/base: the ratio of geometric means with its Welch t interval on the logs;
    see the module docstring.  Non-positive values cannot be logged: no ratio."""
    values, base = _clean(values), _clean(base)
    n, n_base = len(values), len(base)
    if n == 0 or n_base == 0 or (values <= 0).any() or (base <= 0).any():
        return RatioCI(_NAN, _NAN, _NAN, "none", confidence, n=n, n_base=n_base)
    log_v, log_b = np.log(values), np.log(base)
    diff = float(log_v.mean() - log_b.mean())
    ratio = float(np.exp(diff))
    facts = dict(confidence=confidence, range_low=float(values.min() / base.max()),
                 range_high=float(values.max() / base.min()), n=n, n_base=n_base, log_diff=diff)
    if n < min_reps or n_base < min_reps:
        return RatioCI(ratio, _NAN, _NAN, f"none: fewer than {min_reps} repetitions", **facts)
    var_v, var_b = float(log_v.var(ddof=1)), float(log_b.var(ddof=1))
    se = float(np.sqrt(var_v / n + var_b / n_base))
    if se == 0:
        return RatioCI(ratio, ratio, ratio, "no spread", **facts, log_se=0.0)
    df = welch_df(var_b, n_base, var_v, n)
    low, high = _t_bounds(diff, se, df, confidence)
    return RatioCI(ratio, low, high, CI_METHOD, **facts, df=df, log_se=se)


def _clean(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[~np.isnan(values)]


# --- verdicts from intervals -----------------------------------------------------------------

GOAL_VERDICTS = ("met", "missed", "undecided")
CHANGE_VERDICTS = ("regressed", "improved", "unchanged", "inconclusive")


def goal_verdict(low: float, high: float, goal: float) -> str:
    """"met" when the whole interval is at or above `goal`, "missed" when it is wholly
    below, otherwise (or without an interval) "undecided"."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undecided"
    if low >= goal:
        return "met"
    if high < goal:
        return "missed"
    return "undecided"


def tolerance_band(tolerance: float) -> tuple[float, float]:
    """The ratios that count as no change: [1 − tolerance, 1 + tolerance]."""
    return 1.0 - tolerance, 1.0 + tolerance


def change_verdict(low: float, high: float, tolerance: float) -> str:
    """Regressed: the whole interval below 1 − tolerance; improved: wholly above
    1 + tolerance; unchanged: wholly inside the band; otherwise, or without an interval,
    inconclusive."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    lower, upper = tolerance_band(tolerance)
    if high < lower:
        return "regressed"
    if low > upper:
        return "improved"
    if lower <= low and high <= upper:
        return "unchanged"
    return "inconclusive"


def fcr_confidence(selected: int, tested: int, confidence: float = CONFIDENCE) -> float:
    """Benjamini & Yekutieli (2005): the level at which the `selected` of `tested`
    intervals are reported so that the expected share of the selected ones that miss
    their true value is at most 1 − confidence: 1 − αR/m (α itself when nothing is
    selected)."""
    alpha = 1.0 - confidence
    if selected <= 0 or tested <= 0:
        return confidence
    return 1.0 - alpha * selected / tested


def _bound(rows: pd.DataFrame) -> bool:
    return is_guest_bound(int((rows["bound"] == GUEST_BOUND).sum()), int(rows["iops"].notna().sum()))


def _one_ratio(variant: pd.DataFrame, base: pd.DataFrame) -> dict:
    iops = ratio_ci(variant["iops"], base["iops"])
    p99 = ratio_ci(variant["lat_p99_us"], base["lat_p99_us"])
    return {"n": int(variant["iops"].notna().sum()), "n_base": int(base["iops"].notna().sum()),
            "iops_median": variant["iops"].median(), "base_iops_median": base["iops"].median(),
            "ratio": iops.ratio, "ci_low": iops.low, "ci_high": iops.high, "ci_method": iops.method,
            "range_low": iops.range_low, "range_high": iops.range_high,
            "p99_ratio": p99.ratio, "p99_ci_low": p99.low, "p99_ci_high": p99.high,
            "cv": cv(variant["iops"]), "base_cv": cv(base["iops"]),
            "guest_bound": _bound(variant) or _bound(base)}


RATIO_COLUMNS = WORKLOAD_KEYS + ["variant", "baseline", "n", "n_base", "iops_median",
                                 "base_iops_median", "ratio", "ci_low", "ci_high", "ci_method",
                                 "range_low", "range_high", "p99_ratio", "p99_ci_low",
                                 "p99_ci_high", "cv", "base_cv", "guest_bound"]


def ratios(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each variant against `baseline` on the same workload (same host, guest, accel, disk,
    rw, bs, iodepth, numjobs): the IOPS ratio of geometric means with its 95% Welch t
    interval on the logs (none below 3 repetitions a side: range_low/range_high then), and
    the p99-latency ratio the same way (variant/baseline, so < 1 is better).  `noisy` if
    either side's CV exceeds 10%; `guest_bound` if either side is (summarize): then the
    ratio measures the emulated guest, not the I/O path, and is never the data plane's
    effect.  The host-fio ceiling rows are not a variant and are left out.
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
    out = pd.DataFrame(records, columns=RATIO_COLUMNS)
    out["noisy"] = (out["cv"] > NOISY_CV) | (out["base_cv"] > NOISY_CV)
    return out


def ceiling_row(ceiling: pd.DataFrame, key: Mapping) -> pd.Series | None:
    """host_ceiling's row for a guest workload (CEILING_KEYS of key), or None."""
    hit = ceiling
    for name in CEILING_KEYS:
        if hit.empty:
            return None
        hit = hit[hit[name] == key[name]]
    return hit.iloc[0] if len(hit) else None


def host_ceiling(df: pd.DataFrame) -> pd.DataFrame:
    """Median IOPS (and fio's CPU µs per I/O) of the host-fio rows per
    (host, disk, devices, rw, bs, iodepth, numjobs): devices is how many images fio
    ran on, one job each (runners/ceiling.py), as a guest with that many devices."""
    keys = CEILING_KEYS
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
