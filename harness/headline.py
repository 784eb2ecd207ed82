"""The report's lead figure: the RFC's question, answered per guest and queue depth.

Does a variant give more IOPS than the baseline, and at what CPU price?  One panel
per guest (and host and accelerator), the iodepth along x: above, each variant's
IOPS over the baseline's (ratio of geometric means, with its 95% Welch t interval:
stats.ratios, the numbers of the summary tables); below, the host CPU µs per I/O
each variant spends, the baseline's too (results' cpu_us_per_io, schema 4).

One workload per panel: the RFC's 4k random reads with one job where the guest
ran them, else the nearest (`headline_workload`); the others are in speedup.png
and the tables.  Rows of a functional accelerator (kvm-nested: KVM nested under
TCG) are left out: their speed-ups mean nothing, and a run of nothing else gets
one line instead of the figure.  The figure is plots.headline_figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .config import parse_size
from .hosts.spec import LOCAL_HOST
from .results import HOST_VARIANT, disk_text

#: rows of this accelerator are functional figures: no speed-up of theirs is drawn
FUNCTIONAL_ACCEL = "kvm-nested"
#: the workload the RFC's question is asked at (published data-plane figures are 4k random reads)
HEADLINE_WORKLOAD = {"rw": "randread", "bs": "4k", "numjobs": 1}
PANEL_KEYS = ["host", "guest", "accel"]
WORKLOAD_KEYS = ["disk", "devices", "rw", "bs", "numjobs"]
FILE_NAME = "headline"


@dataclass(frozen=True)
class Panel:
    """One guest's column of the figure: its chosen workload at every iodepth."""

    key: dict[str, Any]      # host, guest, accel, disk, devices, rw, bs, numjobs
    ratios: pd.DataFrame     # stats.ratios rows (every variant but the baseline)
    variants: pd.DataFrame   # stats.summarize rows with an ok repetition (the baseline too)

    @property
    def depths(self) -> list[int]:
        return sorted({int(d) for d in self.variants["iodepth"]})

    @property
    def has_cpu(self) -> bool:
        return bool(np.isfinite(self.variants["cpu_us_per_io_median"].astype(float)).any())

    def title(self, show_accel: bool) -> str:
        where = "" if self.key["host"] == LOCAL_HOST else f"{self.key['host']} · "
        accel = f" · {self.key['accel']}" if show_accel else ""
        jobs = self.key["numjobs"]
        return (f"{where}{self.key['guest']}{accel}\n{self.key['rw']} {self.key['bs']} · "
                f"{jobs} job{'s' if jobs > 1 else ''} · disk: "
                f"{disk_text(self.key['disk'], self.key['devices'])}")


def speed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose speed means something: all but the functional accelerator's."""
    return frame[frame["accel"] != FUNCTIONAL_ACCEL]


def _distance(workload: pd.Series) -> tuple:
    """How far a workload is from HEADLINE_WORKLOAD (then: the disk most measured first)."""
    return (workload["rw"] != HEADLINE_WORKLOAD["rw"],
            parse_size(workload["bs"]) != parse_size(HEADLINE_WORKLOAD["bs"]),
            abs(int(workload["numjobs"]) - HEADLINE_WORKLOAD["numjobs"]),
            int(workload["devices"]) != 1,  # the RFC's figures are one disk
            -int(workload["points"]), workload["disk"], workload["rw"], workload["bs"])


def headline_workload(ratios: pd.DataFrame) -> dict[str, Any]:
    """The workload of one guest's ratios nearest the RFC's: rw, bs, numjobs, then the disk
    with the most measured points (by name on a tie)."""
    counted = ratios.groupby(WORKLOAD_KEYS).size().rename("points").reset_index()
    best = min((row for _, row in counted.iterrows()), key=_distance)
    return {name: best[name] for name in WORKLOAD_KEYS}


def _matching(frame: pd.DataFrame, key: dict[str, Any]) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for name, value in key.items():
        mask &= (frame[name] == value).to_numpy()
    return frame[mask]


def panels(ratios: pd.DataFrame, summary: pd.DataFrame) -> list[Panel]:
    """One panel per host, guest and accelerator with a ratio (functional rows left out)."""
    ratios = speed_rows(ratios)
    summary = speed_rows(summary[(summary["n_ok"] > 0) & (summary["variant"] != HOST_VARIANT)])
    out = []
    for names, rows in ratios.groupby(PANEL_KEYS, sort=True):
        key = {**dict(zip(PANEL_KEYS, names)), **headline_workload(rows)}
        out.append(Panel(key, _matching(rows, key), _matching(summary, key)))
    return out


# --- the words ----------------------------------------------------------------------------

def _reps_text(panel: Panel) -> str:
    counts = sorted(set(panel.ratios["n"]) | set(panel.ratios["n_base"]))
    low, high = int(counts[0]), int(counts[-1])
    return f"{panel.key['guest']} {low}" if low == high else f"{panel.key['guest']} {low}–{high}"


def _workloads_text(found: list[Panel]) -> str:
    texts = sorted({f"{p.key['rw']} {p.key['bs']}, {p.key['numjobs']} job(s), disk "
                    f"{p.key['disk']}" for p in found})
    return "; ".join(texts)


def _interval_sentences(found: list[Panel]) -> list[str]:
    ratios = pd.concat([p.ratios for p in found])
    no_ci = ~(np.isfinite(ratios["ci_low"].astype(float)) & np.isfinite(ratios["ci_high"].astype(float)))
    out = []
    if no_ci.any():
        out.append(f"Dashed whiskers: no interval, a side has fewer than {stats.MIN_CI_REPS} "
                   "repetitions; they span the min–max of the ratio instead.")
    if ratios["guest_bound"].astype(bool).any():
        out.append(f"Hollow markers: guest-bound points (the guest's own CPU at "
                   f"{stats.GUEST_BOUND_PCT:.0f}% or more): the ratio measures the emulated "
                   "guest, not the data plane's effect.")
    return out


def _cpu_sentence(found: list[Panel]) -> str:
    if not any(p.has_cpu for p in found):
        return ("Host CPU per I/O was not recorded in this run (results.csv before schema 4), "
                "so the figure has no CPU row.")
    missing = [p.key["guest"] for p in found if not p.has_cpu]
    gap = f" (not recorded for {', '.join(missing)})" if missing else ""
    return ("Bottom row: the host CPU µs the QEMU process spends per I/O (median of the "
            f"repetitions, all its threads), the baseline included{gap}: lower is cheaper.")


def caption(found: list[Panel], run_id: str, accel: str, baseline: str,
            left_out: bool) -> str:
    """The paragraph under the figure: which run, accelerator, repetitions, what is drawn."""
    reps = ", ".join(_reps_text(p) for p in found)
    parts = [f"*Run {run_id}, accelerator {accel}, {reps} repetitions per point "
             f"({_workloads_text(found)}).* Top row, one panel per guest: each variant's IOPS "
             f"over {baseline}'s at the same iodepth (ratio of geometric means of the "
             f"repetitions), whiskers its 95% Welch t interval — above the 1× line the "
             f"variant is faster, and only an interval wholly above (below) it says so."]
    parts += _interval_sentences(found)
    parts.append(_cpu_sentence(found))
    if left_out:
        parts.append(f"Rows with accel {FUNCTIONAL_ACCEL} are left out: functional figures, "
                     "their speed-ups mean nothing.")
    parts.append("Other workloads: speedup.png and the tables below.")
    return " ".join(parts)


def no_figure_line(ratios: pd.DataFrame, baseline: str) -> str:
    """Why there is no figure: a functional run, or no ratio to the baseline at all."""
    if len(ratios) and (ratios["accel"] == FUNCTIONAL_ACCEL).all():
        return (f"No headline figure: every ratio of this run is accel {FUNCTIONAL_ACCEL} (KVM "
                "nested under TCG), functional figures whose speed-ups mean nothing.")
    return f"No headline figure: this run has no IOPS ratio to {baseline}."


def section(found: list[Panel], image: str | None, ratios: pd.DataFrame, run_id: str,
            accel: str, baseline: str) -> str:
    """The report's '## Headline' section: the figure and its caption, or why there is none."""
    heading = "## Headline"
    if not found or image is None:
        return f"{heading}\n\n{no_figure_line(ratios, baseline)}"
    left_out = bool((ratios["accel"] == FUNCTIONAL_ACCEL).any())
    return (f"{heading}\n\n![headline](plots/{image})\n\n"
            + caption(found, run_id, accel, baseline, left_out))
