"""Two runs side by side: the same workloads, ratio of medians B/A with a 95% CI.

A workload is flagged "differs" only when both hold:
  * the bootstrap CI of the ratio excludes 1 (see stats.ratio_ci), and
  * |ratio − 1| exceeds the noise of each run — the IOPS coefficient of
    variation of that workload in run A and in run B.
The second condition keeps a consistently-but-slightly-different pair of noisy
runs from being called a difference.  Runs on different accelerators are
compared (the table says so on every row) but a TCG run against a KVM run
measures the emulator more than the I/O path.
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
                        "ci_low", "ci_high", "cv_a", "cv_b", "differs", "note"]


def _load(run: Path) -> pd.DataFrame:
    run = Path(run)
    if not (run / "results.csv").exists() and not run.is_file():
        raise UserError(f"{run} has no results.csv")
    return ok_rows(load_results(run))


def _accel(rows: pd.DataFrame) -> str:
    return ", ".join(sorted(set(rows["accel"]))) or "unknown"


def _differs(ratio: float, low: float, high: float, cv_a: float, cv_b: float) -> bool:
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 1.0 <= high:
        return False
    noise = max(np.nan_to_num(cv_a), np.nan_to_num(cv_b))
    return abs(ratio - 1.0) > noise


def _compare_one(key: tuple, a: pd.DataFrame, b: pd.DataFrame) -> dict:
    ratio, low, high = ratio_ci(b["iops"], a["iops"])
    cv_a, cv_b = cv(a["iops"]), cv(b["iops"])
    accel_a, accel_b = _accel(a), _accel(b)
    note = "" if accel_a == accel_b else f"different accelerators ({accel_a} vs {accel_b})"
    if len(a) < 2 or len(b) < 2:
        note = "; ".join(filter(None, [note, "one repetition: no CI"]))
    return {**dict(zip(MATCH_KEYS, key)), "accel_a": accel_a, "accel_b": accel_b,
            "n_a": len(a), "n_b": len(b), "median_a": a["iops"].median(),
            "median_b": b["iops"].median(), "ratio": ratio, "ci_low": low, "ci_high": high,
            "cv_a": cv_a, "cv_b": cv_b, "differs": _differs(ratio, low, high, cv_a, cv_b),
            "note": note}


def compare_runs(run_a: Path, run_b: Path) -> pd.DataFrame:
    """One row per workload present (with ok results) in both runs."""
    a, b = _load(run_a), _load(run_b)
    groups_b = dict(list(b.groupby(MATCH_KEYS)))
    records = [_compare_one(key, rows, groups_b[key])
               for key, rows in a.groupby(MATCH_KEYS) if key in groups_b]
    return pd.DataFrame(records, columns=COLUMNS)


def _fmt_ratio(row) -> str:
    if not np.isfinite(row.ratio):
        return "–"
    if not np.isfinite(row.ci_low):
        return f"{row.ratio:.2f}"
    return f"{row.ratio:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"


def _cells(row) -> list[str]:
    return [row.guest, row.variant, row.disk, f"{row.rw} {row.bs} qd{row.iodepth} j{row.numjobs}",
            f"{row.median_a:,.0f}", f"{row.median_b:,.0f}", _fmt_ratio(row),
            "DIFFERS" if row.differs else "", row.note]


HEADERS = ["guest", "variant", "disk", "workload", "IOPS A", "IOPS B", "B/A [95% CI]", "", "note"]


def summary_line(df: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> str:
    accels = {(r.accel_a, r.accel_b) for r in df.itertuples()}
    mixed = any(x != y for x, y in accels)
    head = f"{len(df)} matched workloads, {int(df['differs'].sum())} differ ({name_b} vs {name_a})"
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
