"""Two runs side by side: the same workloads, ratio of medians B/A with a 95% CI.

Whether a workload "differs" is a test, not a reading of the CI, because a
bootstrap interval on three repetitions a side is far too eager: it excludes 1
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
A flagged workload whose ratio is below 1 (B has fewer IOPS than A) is a
*regression*; `harness compare --fail-on-regression` exits 1 when there is one.
With 3 repetitions a side the smallest possible p is 0.1, so nothing can be
flagged: the table says so, and the summary counts the workloads whose
uncorrected p is below 0.05 next to the number expected by chance.
Runs on different accelerators are compared (the table says so on every row),
but a TCG run against a KVM run measures the emulator more than the I/O path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .results import read_results
from .stats import benjamini_hochberg, cv, mann_whitney_p, ok_rows, ratio_ci, smallest_p

MATCH_KEYS = ["guest", "variant", "disk", "rw", "bs", "iodepth", "numjobs"]
COLUMNS = MATCH_KEYS + ["accel_a", "accel_b", "n_a", "n_b", "median_a", "median_b", "ratio",
                        "ci_low", "ci_high", "cv_a", "cv_b", "p", "q", "differs", "regression",
                        "note"]
FDR = 0.05
TOLERANCE = 0.05


@dataclass(frozen=True)
class Comparison:
    """The matched workloads of two runs, each run named by its id."""

    table: pd.DataFrame
    name_a: str
    name_b: str
    tolerance: float
    warnings: tuple[str, ...] = ()   # malformed rows in either results.csv

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["regression"]]


def _load(run: Path) -> tuple[pd.DataFrame, str, str | None]:
    """Ok rows, the run's id (its run_id column, else the directory's name), a warning."""
    run = Path(run)
    if not (run / "results.csv").exists() and not run.is_file():
        raise UserError(f"{run} has no results.csv")
    results = read_results(run)
    frame = results.frame
    ids = sorted(set(frame["run_id"]) - {""})
    name = ids[0] if len(ids) == 1 else (run.name if run.is_dir() else run.parent.name)
    return ok_rows(frame), name, results.warning()


def _accel(rows: pd.DataFrame) -> str:
    return ", ".join(sorted(set(rows["accel"]))) or "unknown"


def _compare_one(key: tuple, a: pd.DataFrame, b: pd.DataFrame) -> dict:
    ci = ratio_ci(b["iops"], a["iops"])
    accel_a, accel_b = _accel(a), _accel(b)
    notes = [] if accel_a == accel_b else [f"different accelerators ({accel_a} vs {accel_b})"]
    if len(a) < 2 or len(b) < 2:
        notes.append("one repetition: no CI")
    elif smallest_p(len(a), len(b)) > FDR:
        notes.append(f"{len(a)}/{len(b)} repetitions: too few to call a difference")
    return {**dict(zip(MATCH_KEYS, key)), "accel_a": accel_a, "accel_b": accel_b,
            "n_a": len(a), "n_b": len(b), "median_a": a["iops"].median(),
            "median_b": b["iops"].median(), "ratio": ci.ratio, "ci_low": ci.low,
            "ci_high": ci.high, "cv_a": cv(a["iops"]), "cv_b": cv(b["iops"]),
            "p": mann_whitney_p(a["iops"], b["iops"]), "note": "; ".join(notes)}


def compare_runs(run_a: Path, run_b: Path, tolerance: float = TOLERANCE) -> Comparison:
    """One row per workload present (with ok results) in both runs; see the module docstring
    for when a row `differs` and when it is a `regression`."""
    (a, name_a, warn_a), (b, name_b, warn_b) = _load(run_a), _load(run_b)
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    groups_b = dict(list(b.groupby(MATCH_KEYS)))
    records = [_compare_one(key, rows, groups_b[key])
               for key, rows in a.groupby(MATCH_KEYS) if key in groups_b]
    df = pd.DataFrame(records, columns=COLUMNS)
    df["q"] = benjamini_hochberg(df["p"])
    df["differs"] = (df["q"] <= FDR) & ((df["ratio"] - 1.0).abs() >= tolerance)
    df["regression"] = df["differs"] & (df["ratio"] < 1.0)
    return Comparison(df, name_a, name_b, tolerance,
                      tuple(w for w in (warn_a, warn_b) if w))


def _fmt_ratio(row) -> str:
    if not np.isfinite(row.ratio):
        return "–"
    if not np.isfinite(row.ci_low):
        return f"{row.ratio:.2f}"
    return f"{row.ratio:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"


def _verdict(row) -> str:
    if not row.differs:
        return ""
    return "**worse**" if row.regression else "better"


def _cells(row) -> list[str]:
    return [row.guest, row.variant, row.disk, f"{row.rw} {row.bs} qd{row.iodepth} j{row.numjobs}",
            f"{row.median_a:,.0f}", f"{row.median_b:,.0f}", _fmt_ratio(row), _fmt_q(row.q),
            _verdict(row), row.note]


def _fmt_q(q: float) -> str:
    return "–" if not np.isfinite(q) else f"{q:.2g}"


def headers(name_a: str, name_b: str) -> list[str]:
    return ["guest", "variant", "disk", "workload", f"IOPS {name_a}", f"IOPS {name_b}",
            "ratio [95% CI]", "q", "verdict", "note"]


def summary_line(comparison: Comparison) -> str:
    df, name_a, name_b = comparison.table, comparison.name_a, comparison.name_b
    mixed = any(r.accel_a != r.accel_b for r in df.itertuples())
    tested = int(df["p"].notna().sum())
    raw = int((df["p"] < 0.05).sum())
    differ, worse = int(df["differs"].sum()), int(df["regression"].sum())
    head = (f"{len(df)} matched workloads, {differ} differ, {worse} of them worse "
            f"({name_b} against {name_a}, ratio = {name_b} / {name_a}; Mann-Whitney U, "
            f"Benjamini-Hochberg FDR {FDR:.0%}, tolerance {comparison.tolerance:.0%}); "
            f"{raw} of {tested} have an uncorrected p < 0.05, about {0.05 * tested:.1f} "
            f"would by chance")
    return head + (" — the runs used different accelerators" if mixed else "")


def render_markdown(comparison: Comparison) -> str:
    columns = headers(comparison.name_a, comparison.name_b)
    lines = [summary_line(comparison), ""]
    lines += [f"Warning: {w}" for w in comparison.warnings]
    lines += ([""] if comparison.warnings else [])
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in comparison.table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def regression_lines(comparison: Comparison) -> list[str]:
    """One line per regression, for stderr when --fail-on-regression trips."""
    return [f"regression: {r.guest} {r.variant} {r.disk} {r.rw} {r.bs} qd{r.iodepth} "
            f"j{r.numjobs}: {r.median_a:,.0f} → {r.median_b:,.0f} IOPS ({_fmt_ratio(r)}, "
            f"q {_fmt_q(r.q)})" for r in comparison.regressions.itertuples(index=False)]
