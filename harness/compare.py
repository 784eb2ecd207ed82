"""Two runs side by side: per workload the ratio B/A with an interval, and a verdict.

A workload is matched only on all of stats.GROUP_KEYS — host, guest, variant,
accelerator, disk, devices, rw, bs, iodepth, numjobs — so two hosts, or KVM and TCG, are
never pooled.  Two runs with no workload in common are an error (exit 2), and the
message says which keys differ: "0 matched" is not a pass.

The method, and why.  Per workload the ratio B/A is the ratio of geometric means
with a Welch t interval on log IOPS (stats.ratio_ci; its docstring says why this
interval is honest at 3–5 repetitions a side, where a bootstrap is too narrow and
an exact rank test cannot reach significance at all).  The verdict reads the
interval against the tolerance band [1 − tol, 1 + tol] (5% by default):
  * regressed  — the whole interval is below 1 − tol;
  * improved   — the whole interval is above 1 + tol;
  * unchanged  — the whole interval is inside the band;
  * inconclusive — anything else: the interval is too wide to tell, or there is
    none (fewer than 3 repetitions on a side).
Multiplicity: a comparison looks at many workloads (36 in micro-v2, ~100 in
rfc-v9), so some 95% intervals miss by chance.  Rather than testing each
workload and adjusting p-values (Benjamini-Hochberg on exact Mann-Whitney p's,
which we used before, cannot flag anything with 3 repetitions a side: its
smallest p is 0.1), we control the false-coverage rate of the intervals that make
a claim (Benjamini & Yekutieli 2005): of the m workloads with an interval, the R
whose 95% interval lies wholly outside the band are selected and reported at
level 1 − 0.05·R/m; the verdict of each is read again from its adjusted
interval, and one that no longer clears the band becomes inconclusive.  Then the
expected share of the regressed/improved claims whose interval misses the true
ratio is at most 5%.  When many workloads move (a broken build: R ≈ m) the
adjustment is almost nil, so a real regression is found even at 3 repetitions;
when one workload among a hundred moves it must clear a Bonferroni-like bar,
which is what makes a lone false alarm unlikely.  "Unchanged" is read from the
unadjusted 95% interval: it never fails a gate.

Rows flagged `disturbed` (the host was busy during the point) are kept; the note
says how many there were on each side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .errors import UserError
from .results import HOST_VARIANT, disk_text, read_results
from .stats import CONFIDENCE, cv, ok_rows, ratio_ci

MATCH_KEYS = list(stats.GROUP_KEYS)   # host, guest, variant, accel, disk, devices, rw, bs, …
COLUMNS = MATCH_KEYS + ["n_a", "n_b", "median_a", "median_b", "ratio", "ci_low", "ci_high",
                        "confidence", "df", "cv_a", "cv_b", "disturbed_a", "disturbed_b",
                        "verdict", "note"]
TOLERANCE = 0.05
JSON_SCHEMA = 1


@dataclass(frozen=True)
class Comparison:
    """The matched workloads of two runs, each run named by its id."""

    table: pd.DataFrame
    name_a: str
    name_b: str
    tolerance: float
    tested: int                  # m: workloads with an interval
    selected: int                # R: of them, those whose 95% interval clears the band
    adjusted_confidence: float   # 1 − αR/m, the level of the selected intervals
    warnings: tuple[str, ...] = ()   # malformed rows in either results.csv

    def _with(self, verdict: str) -> pd.DataFrame:
        return self.table[self.table["verdict"] == verdict]

    @property
    def regressions(self) -> pd.DataFrame:
        return self._with("regressed")

    @property
    def inconclusive(self) -> pd.DataFrame:
        return self._with("inconclusive")

    def counts(self) -> dict[str, int]:
        return {v: int((self.table["verdict"] == v).sum()) for v in stats.CHANGE_VERDICTS}


# --- the tolerance ------------------------------------------------------------------------------

def parse_tolerance(text: str | float) -> float:
    """A fraction (0.05), a percentage (5% or 5: a bare number of 1 or more is a percentage);
    a UserError for anything negative, 100% or more, or not a number."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    number = raw[:-1].strip() if percent else raw
    try:
        value = float(number)
    except ValueError:
        raise UserError(f"--tolerance {raw!r} is not a number: give a fraction (0.05) or a "
                        "percentage (5%)") from None
    if not math.isfinite(value):
        raise UserError(f"--tolerance {raw!r} is not a finite number")
    if percent or value >= 1:
        value /= 100
    if value < 0:
        raise UserError(f"--tolerance {raw!r} is negative: give a fraction (0.05) or a "
                        "percentage (5%)")
    if value >= 1:
        raise UserError(f"--tolerance {raw!r} is 100% or more: nothing could ever regress")
    return value


# --- loading and matching -------------------------------------------------------------------

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


def _values(frame: pd.DataFrame, key: str) -> str:
    values = sorted({str(v) for v in frame[key]})
    shown = ", ".join(values[:6]) + (f" and {len(values) - 6} more" if len(values) > 6 else "")
    return "{" + shown + "}"


def no_match_reason(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> str:
    """Why two runs share no workload: the keys whose values differ."""
    if a.empty or b.empty:
        empty = [name for name, rows in ((name_a, a), (name_b, b)) if rows.empty]
        return f"no workload to compare: {' and '.join(empty)} has no ok rows"
    differ = [f"{key} {_values(a, key)} in {name_a} vs {_values(b, key)} in {name_b}"
              for key in MATCH_KEYS if not set(a[key]) & set(b[key])]
    if not differ:
        differ = [f"{key} {_values(a, key)} vs {_values(b, key)}"
                  for key in MATCH_KEYS if set(a[key]) != set(b[key])]
        lead = "no workload of one run occurs in the other (each key has values in common, " \
               "but no combination does)"
    else:
        lead = "no workload in common"
    return (f"{lead}: {'; '.join(differ)}. Workloads are matched on "
            f"{', '.join(MATCH_KEYS)}: two hosts or two accelerators are never pooled")


# --- per workload ---------------------------------------------------------------------------

def _disturbed(rows: pd.DataFrame) -> int:
    if "disturbed" not in rows:
        return 0
    return int(pd.to_numeric(rows["disturbed"], errors="coerce").fillna(0).astype(int).sum())


def _one(key: tuple, a: pd.DataFrame, b: pd.DataFrame) -> tuple[dict, stats.RatioCI]:
    ci = ratio_ci(b["iops"], a["iops"])
    record = {**dict(zip(MATCH_KEYS, key)), "n_a": len(a), "n_b": len(b),
              "median_a": a["iops"].median(), "median_b": b["iops"].median(),
              "cv_a": cv(a["iops"]), "cv_b": cv(b["iops"]),
              "disturbed_a": _disturbed(a), "disturbed_b": _disturbed(b)}
    return record, ci


def fmt_percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def fmt_level(confidence: float) -> str:
    """95%, 97.5%, 99.95%: enough digits that an adjusted level is not rounded to 100%."""
    return f"{confidence * 100:.4g}%"


def _notes(record: dict, ci: stats.RatioCI, first: str, tolerance: float) -> list[str]:
    notes = []
    if not ci.has_interval:
        notes.append(f"{record['n_a']}/{record['n_b']} repetitions: fewer than "
                     f"{stats.MIN_CI_REPS} a side, no interval (min–max "
                     f"{ci.range_low:.2f}–{ci.range_high:.2f})" if np.isfinite(ci.range_low)
                     else "no interval")
    if first in ("regressed", "improved") and record["verdict"] == "inconclusive":
        notes.append(f"outside ±{fmt_percent(tolerance)} at {CONFIDENCE:.0%}, not at the adjusted "
                     f"{fmt_level(ci.confidence)}")
    if record["disturbed_a"] or record["disturbed_b"]:
        notes.append(f"disturbed repetitions: {record['disturbed_a']} of {record['n_a']} in A, "
                     f"{record['disturbed_b']} of {record['n_b']} in B")
    return notes


def compare_runs(run_a: Path, run_b: Path, tolerance: float = TOLERANCE) -> Comparison:
    """Read both runs' results.csv and compare them (compare_frames)."""
    (a, name_a, warn_a), (b, name_b, warn_b) = _load(run_a), _load(run_b)
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    return compare_frames(a, b, name_a, name_b, tolerance,
                          tuple(w for w in (warn_a, warn_b) if w))


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, name_a: str = "A", name_b: str = "B",
                   tolerance: float = TOLERANCE, warnings: tuple[str, ...] = ()) -> Comparison:
    """One row per workload with ok results in both frames, its verdict as in the module
    docstring.  UserError when they share no workload."""
    a, b = ok_rows(a), ok_rows(b)
    groups_b = dict(list(b.groupby(MATCH_KEYS))) if len(b) else {}
    pairs = [_one(key, rows, groups_b[key])
             for key, rows in (a.groupby(MATCH_KEYS) if len(a) else []) if key in groups_b]
    if not pairs:
        raise UserError(no_match_reason(a, b, name_a, name_b))
    first = [stats.change_verdict(ci.low, ci.high, tolerance) for _, ci in pairs]
    tested = sum(ci.has_interval for _, ci in pairs)
    selected = sum(v in ("regressed", "improved") for v in first)
    level = stats.fcr_confidence(selected, tested)
    records = []
    for (record, ci), verdict in zip(pairs, first):
        final = verdict
        if verdict in ("regressed", "improved"):
            ci = ci.at(level)
            final = stats.change_verdict(ci.low, ci.high, tolerance)
        record.update(ratio=ci.ratio, ci_low=ci.low, ci_high=ci.high, confidence=ci.confidence,
                      df=ci.df, verdict=final)
        record["note"] = "; ".join(_notes(record, ci, verdict, tolerance))
        records.append(record)
    table = pd.DataFrame(records, columns=COLUMNS)
    return Comparison(table, name_a, name_b, tolerance, tested, selected, level, warnings)


# --- output -----------------------------------------------------------------------------------

def _fmt_ratio(row) -> str:
    if not np.isfinite(row.ratio):
        return "–"
    if not np.isfinite(row.ci_low):
        return f"{row.ratio:.2f} (no interval)"
    return f"{row.ratio:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"


def _fmt_verdict(verdict: str) -> str:
    return f"**{verdict}**" if verdict in ("regressed", "inconclusive") else verdict


def _where(row) -> str:
    return f"{row.host} {row.accel}"


def _cells(row) -> list[str]:
    level = "" if row.confidence == CONFIDENCE or not np.isfinite(row.ci_low) \
        else f" ({fmt_level(row.confidence)})"
    return [row.guest, row.variant, disk_text(row.disk, row.devices), f"{row.rw} {row.bs} qd{row.iodepth} j{row.numjobs}",
            _where(row), f"{row.n_a}/{row.n_b}", f"{row.median_a:,.0f}", f"{row.median_b:,.0f}",
            _fmt_ratio(row) + level, _fmt_verdict(row.verdict), row.note]


def headers(name_a: str, name_b: str) -> list[str]:
    return ["guest", "variant", "disk", "workload", "host accel", "n A/B",
            f"IOPS A: {name_a} (median)", f"IOPS B: {name_b} (median)", "B/A [95% CI]", "verdict", "note"]


def method_text(comparison: Comparison) -> str:
    tol = comparison.tolerance
    text = (f"ratio B/A of geometric means, Welch t interval on log IOPS at {CONFIDENCE:.0%}; "
            f"tolerance ±{fmt_percent(tol)}")
    if comparison.selected:
        text += (f"; the {comparison.selected} of {comparison.tested} intervals that cleared the "
                 f"band are shown at {fmt_level(comparison.adjusted_confidence)} (false-coverage-rate "
                 f"adjusted, Benjamini-Yekutieli)")
    return text


def host_note(comparison: Comparison) -> str | None:
    """fio on the host (the ceiling rows) moved too: the machine changed, not only QEMU."""
    host = comparison.table[comparison.table["variant"] == HOST_VARIANT]
    moved = host[host["verdict"].isin(["regressed", "improved"])]
    if moved.empty:
        return None
    return (f"fio on the host itself {'/'.join(sorted(set(moved['verdict'])))} on "
            f"{len(moved)} of {len(host)} workloads (B/A {moved['ratio'].min():.2f}–"
            f"{moved['ratio'].max():.2f}): the machine changed between the runs, so the "
            "guests' verdicts measure the machine as well as QEMU.")


def summary_line(comparison: Comparison) -> str:
    counts = comparison.counts()
    verdicts = ", ".join(f"{n} {v}" for v, n in counts.items())
    line = (f"{len(comparison.table)} matched workloads, B = {comparison.name_b} against "
            f"A = {comparison.name_a}: {verdicts} ({method_text(comparison)}).")
    note = host_note(comparison)
    return line + (f" Note: {note}" if note else "")


def render_markdown(comparison: Comparison) -> str:
    columns = headers(comparison.name_a, comparison.name_b)
    lines = [summary_line(comparison), ""]
    lines += [f"Warning: {w}" for w in comparison.warnings]
    lines += ([""] if comparison.warnings else [])
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in comparison.table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _json_number(value: Any) -> float | int | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_document(comparison: Comparison) -> dict[str, Any]:
    """What `harness compare --json` prints: the verdicts for scripts and CI."""
    workloads = []
    for row in comparison.table.to_dict("records"):
        entry = {k: (int(row[k]) if k in ("devices", "iodepth", "numjobs") else str(row[k]))
                 for k in MATCH_KEYS}
        entry.update({k: int(row[k]) for k in ("n_a", "n_b", "disturbed_a", "disturbed_b")})
        entry.update({k: _json_number(row[k]) for k in ("median_a", "median_b", "ratio", "ci_low",
                                                          "ci_high", "confidence", "df", "cv_a",
                                                          "cv_b")})
        entry.update(verdict=row["verdict"], note=row["note"])
        workloads.append(entry)
    return {"schema_version": JSON_SCHEMA, "run_a": comparison.name_a, "run_b": comparison.name_b,
            "tolerance": comparison.tolerance,
            "method": {"ratio": "B/A, ratio of geometric means",
                       "interval": stats.CI_METHOD + ", Welch-Satterthwaite df",
                       "confidence": CONFIDENCE, "min_repetitions": stats.MIN_CI_REPS,
                       "multiplicity": "false-coverage-rate adjusted intervals "
                                       "(Benjamini & Yekutieli 2005) for the selected workloads",
                       "tested": comparison.tested, "selected": comparison.selected,
                       "adjusted_confidence": comparison.adjusted_confidence},
            "counts": comparison.counts(), "host_note": host_note(comparison),
            "warnings": list(comparison.warnings),
            "workloads": workloads}


def _line(kind: str, row) -> str:
    return (f"{kind}: {row.guest} {row.variant} {row.disk} {row.rw} {row.bs} qd{row.iodepth} "
            f"j{row.numjobs} on {row.host} {row.accel}: {row.median_a:,.0f} → {row.median_b:,.0f} "
            f"IOPS, B/A {_fmt_ratio(row)} at {fmt_level(row.confidence)}")


def regression_lines(comparison: Comparison) -> list[str]:
    """One line per regression, for stderr when --fail-on-regression trips."""
    return [_line("regression", r) for r in comparison.regressions.itertuples(index=False)]


def inconclusive_lines(comparison: Comparison) -> list[str]:
    """One line per inconclusive workload, for stderr when --fail-on-inconclusive trips."""
    return [_line("inconclusive", r) + (f" ({r.note})" if r.note else "")
            for r in comparison.inconclusive.itertuples(index=False)]
