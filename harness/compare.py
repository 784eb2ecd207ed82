"""Two runs side by side: the same workloads, ratio of medians B/A with a 95% CI.

Whether a workload "differs" is a test, not a reading of the CI, because the
percentile bootstrap on three repetitions a side is far too eager: it excludes 1
whenever every repetition of one run beats every one of the other, which two
identical runs do one time in ten — across 80 workloads that is eight false
alarms.  So, per workload, an exact two-sided Mann-Whitney U test on the
repetitions (no assumption about their distribution), and across the workloads
of one comparison the Benjamini-Hochberg procedure, so that of the workloads
called different at most 5% are expected to be false alarms.  A workload is
flagged when both hold:
  * its adjusted p-value (q) is at most 0.05, and
  * |ratio − 1| is at least the tolerance (5% by default): smaller shifts are
    below what these runs are designed to resolve (ratios to ±10%).
With 3 repetitions a side the smallest possible p is 0.1, so nothing can be
flagged: the table says so, and the summary counts the workloads whose
uncorrected p is below 0.05 next to the number expected by chance.
Runs on different accelerators are compared (the table says so on every row),
but a TCG run against a KVM run measures the emulator more than the I/O path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .results import load_results
from .stats import cv, ok_rows, ratio_ci

MATCH_KEYS = ["guest", "variant", "disk", "rw", "bs", "iodepth", "numjobs"]
COLUMNS = MATCH_KEYS + ["accel_a", "accel_b", "n_a", "n_b", "median_a", "median_b", "ratio",
                        "ci_low", "ci_high", "cv_a", "cv_b", "p", "q", "differs", "note"]
FDR = 0.05
TOLERANCE = 0.05


def _load(run: Path) -> pd.DataFrame:
    run = Path(run)
    if not (run / "results.csv").exists() and not run.is_file():
        raise UserError(f"{run} has no results.csv")
    return ok_rows(load_results(run))


def _accel(rows: pd.DataFrame) -> str:
    return ", ".join(sorted(set(rows["accel"]))) or "unknown"


def mann_whitney_p(a, b) -> float:
    """Two-sided Mann-Whitney U p-value, exact unless values tie (then the normal
    approximation); NaN with fewer than 2 values a side."""
    from scipy.stats import mannwhitneyu

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    distinct = len(np.unique(np.concatenate([a, b])))
    if distinct == 1:               # all equal: no evidence of a difference
        return 1.0
    method = "exact" if distinct == len(a) + len(b) else "asymptotic"
    return float(mannwhitneyu(b, a, alternative="two-sided", method=method).pvalue)


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p the exact test can give with these sample sizes."""
    from math import comb

    return 2.0 / comb(n_a + n_b, n_a) if n_a and n_b else float("nan")


def benjamini_hochberg(p_values) -> np.ndarray:
    """BH-adjusted p-values (q); NaN stays NaN and does not count as a test."""
    p_values = np.asarray(p_values, dtype=float)
    q_values = np.full(len(p_values), np.nan)
    tested = np.flatnonzero(np.isfinite(p_values))
    if len(tested) == 0:
        return q_values
    order = tested[np.argsort(p_values[tested])]
    ranked = p_values[order] * len(tested) / np.arange(1, len(tested) + 1)
    q_values[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q_values


def _compare_one(key: tuple, a: pd.DataFrame, b: pd.DataFrame) -> dict:
    ratio, low, high = ratio_ci(b["iops"], a["iops"])
    accel_a, accel_b = _accel(a), _accel(b)
    notes = [] if accel_a == accel_b else [f"different accelerators ({accel_a} vs {accel_b})"]
    if len(a) < 2 or len(b) < 2:
        notes.append("one repetition: no CI")
    elif smallest_p(len(a), len(b)) > FDR:
        notes.append(f"{len(a)}/{len(b)} repetitions: too few to call a difference")
    return {**dict(zip(MATCH_KEYS, key)), "accel_a": accel_a, "accel_b": accel_b,
            "n_a": len(a), "n_b": len(b), "median_a": a["iops"].median(),
            "median_b": b["iops"].median(), "ratio": ratio, "ci_low": low, "ci_high": high,
            "cv_a": cv(a["iops"]), "cv_b": cv(b["iops"]),
            "p": mann_whitney_p(a["iops"], b["iops"]), "note": "; ".join(notes)}


def compare_runs(run_a: Path, run_b: Path, tolerance: float = TOLERANCE) -> pd.DataFrame:
    """One row per workload present (with ok results) in both runs; see the module docstring
    for when a row `differs`."""
    a, b = _load(run_a), _load(run_b)
    groups_b = dict(list(b.groupby(MATCH_KEYS)))
    records = [_compare_one(key, rows, groups_b[key])
               for key, rows in a.groupby(MATCH_KEYS) if key in groups_b]
    df = pd.DataFrame(records, columns=COLUMNS)
    df["q"] = benjamini_hochberg(df["p"])
    df["differs"] = (df["q"] <= FDR) & ((df["ratio"] - 1.0).abs() >= tolerance)
    df.attrs["tolerance"] = tolerance
    return df


def _fmt_ratio(row) -> str:
    if not np.isfinite(row.ratio):
        return "–"
    if not np.isfinite(row.ci_low):
        return f"{row.ratio:.2f}"
    return f"{row.ratio:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"


def _cells(row) -> list[str]:
    return [row.guest, row.variant, row.disk, f"{row.rw} {row.bs} qd{row.iodepth} j{row.numjobs}",
            f"{row.median_a:,.0f}", f"{row.median_b:,.0f}", _fmt_ratio(row), _fmt_q(row.q),
            "DIFFERS" if row.differs else "", row.note]


def _fmt_q(q: float) -> str:
    return "–" if not np.isfinite(q) else f"{q:.2g}"


HEADERS = ["guest", "variant", "disk", "workload", "IOPS A", "IOPS B", "B/A [95% CI]", "q", "",
           "note"]


def summary_line(df: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> str:
    accels = {(r.accel_a, r.accel_b) for r in df.itertuples()}
    mixed = any(x != y for x, y in accels)
    tolerance = df.attrs.get("tolerance", TOLERANCE)
    tested = int(df["p"].notna().sum())
    raw = int((df["p"] < 0.05).sum())
    head = (f"{len(df)} matched workloads, {int(df['differs'].sum())} differ ({name_b} vs {name_a}; "
            f"Mann-Whitney U, Benjamini-Hochberg FDR {FDR:.0%}, tolerance {tolerance:.0%}); "
            f"{raw} of {tested} have an uncorrected p < 0.05, about {0.05 * tested:.1f} "
            f"would by chance")
    return head + (" — the runs used different accelerators" if mixed else "")


def render_markdown(df: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> str:
    lines = [summary_line(df, name_a, name_b), "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def render_rich(df: pd.DataFrame, name_a: str = "A", name_b: str = "B"):
    """A rich Table for the terminal; rows that differ are highlighted."""
    from rich.table import Table

    table = Table(title=summary_line(df, name_a, name_b))
    for header in HEADERS:
        table.add_column(header, justify="right" if header.startswith(("IOPS", "B/A")) else "left")
    for row in df.itertuples(index=False):
        table.add_row(*_cells(row), style="bold red" if row.differs else None)
    return table
