"""The report's section on how far a run can be trusted: how quiet its host was.

From the rows (each point's foreign load and `disturbed` flag, results schema 4)
and the manifest's `host_check` (the quiet check before the run, what on the
host could disturb it, how many points were run again, adaptive precision).  A
run with a point that stayed disturbed is never called a reference: the banner
says so at the top of the report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .manifest import Manifest
from .stats import ok_rows


def disturbed_count(df: pd.DataFrame) -> int:
    """Ok rows that ran while others used more CPU than the run's threshold."""
    return int((ok_rows(df)["disturbed"] == 1).sum())


def banner(df: pd.DataFrame, manifest: Manifest | None) -> str:
    """One line for the top of the report when the run is not a reference ('' otherwise)."""
    disturbed = disturbed_count(df)
    if disturbed:
        threshold = manifest.host_check.threshold_pct if manifest and manifest.host_check else None
        limit = f" more than {threshold:g}% of a core" if threshold is not None else ""
        return (f"> **Not a reference run: {disturbed} point(s) ran while other processes used"
                f"{limit} (disturbed, see Host check). Do not cite these numbers.**")
    if df["foreign_cpu_pct"].isna().all():
        return "> Host load per point was not recorded (results before schema 4, or remote hosts)."
    return ""


def _load_text(df: pd.DataFrame) -> str:
    load = ok_rows(df)["foreign_cpu_pct"].dropna()
    if load.empty:
        return "not recorded"
    return (f"median {load.median():.1f}%, 90th percentile {np.percentile(load, 90):.1f}%, "
            f"max {load.max():.1f}% of one core, over {len(load)} points")


def section(df: pd.DataFrame, manifest: Manifest | None) -> str:
    """'## Host check': others' load per point, disturbed points, re-runs, precision."""
    check = manifest.host_check if manifest else None
    rows = [("others' CPU during each point", _load_text(df)),
            ("disturbed points (final rows)", str(disturbed_count(df)))]
    if check is not None:
        if check.threshold_pct is not None:
            rows.append(("threshold", f"{check.threshold_pct:g}% of one core"))
        rows.append(("points run again because disturbed", str(check.reruns)))
        if check.quiet_at_start:
            rows.append(("before the run", check.quiet_at_start))
        rows += [("could disturb this host", line) for line in check.disturbers]
        if check.precision is not None:
            target = f"±{check.precision.target:.0%}"
            wide = check.precision.off_target
            rows.append(("adaptive repetitions", f"every ratio's interval within {target}" if not wide
                         else f"{len(wide)} ratio(s) wider than {target} at max: "
                              + "; ".join(wide)))
    lines = ["## Host check", "", "| fact | value |", "|---|---|"]
    lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in rows]
    return "\n".join(lines)
