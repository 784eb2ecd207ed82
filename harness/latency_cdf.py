"""fio's completion-latency distribution per variant, read from the run's raw fio JSON.

fio's JSON of every point is kept under results/<run>/raw/ (ResultsStore.save_raw;
the row's `log` column names the file), and its `clat_ns.percentile` gives the
completion latency at fixed percentiles (1 … 99.99).  `read_distributions` collects
them per point; plots.latency_cdf_figure draws them as plots/latency-cdf.png.  Only
the fio guest's rows have such a distribution (the micro-guest's raw lines have
none): a run without them gets no plot, and a run whose fio rows have no raw JSON
here (raw/ is not committed) gets one line saying so.  Host fio is left out, as in
plots.latency_figure.  A point with several devices ran one fio job per device: its
distribution is over all their requests, from the jobs' histograms added
(fio_merge.merged_percentiles, as the row's own percentiles), at fio's percentiles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .fio_merge import merged_percentiles
from .results import HOST_VARIANT
from .stats import ok_rows

FILE_NAME = "latency-cdf"
ROW_KEYS = ["host", "guest", "accel", "disk", "devices", "rw", "bs", "numjobs"]
POINT_KEYS = ROW_KEYS + ["variant", "iodepth", "rep"]
_WRITES = ("write", "randwrite")  # the others report the reads' latency (results.fio_metrics)


@dataclass(frozen=True)
class Distributions:
    """The percentiles of every fio point that kept its JSON, and how many did not."""

    points: pd.DataFrame   # POINT_KEYS, percentile (0–100), lat_us: a line per percentile
    missing: int           # ok fio-guest rows whose raw JSON is not here

    @property
    def missing_line(self) -> str:
        """The plots section's line when fio rows exist but none kept its JSON here."""
        if self.points.empty and self.missing:
            return ("No fio latency distribution: the fio points' raw JSON (raw/, not "
                    "committed with the run) is not in this copy of the run.")
        return ""


def clat_percentiles(fio_json: dict, rw: str) -> dict[float, float]:
    """Completion latency (µs) per percentile of one fio result: the writes' for write
    workloads, else the reads'; {} when fio gave none."""
    directions = ("write", "read") if rw in _WRITES else ("read", "write")
    for direction in directions:
        for job in fio_json.get("jobs") or []:
            side = job.get(direction) or {}
            table = (side.get("clat_ns") or {}).get("percentile") or {}
            if side.get("total_ios", 1) and table:
                return {float(p): float(ns) / 1000.0 for p, ns in table.items()}
    return {}


def point_percentiles(fio_json: dict, row: dict) -> dict[float, float]:
    """The row's latency (µs) per percentile: fio's own for one device, else over the
    devices' merged histograms at the percentiles fio lists."""
    table = clat_percentiles(fio_json, row["rw"])
    if int(row.get("devices", 1)) == 1 or not table:
        return table
    return merged_percentiles(fio_json, row["rw"], sorted(table))


def _raw_json(run_dir: Path, log: object) -> dict | None:
    """The JSON a row's `log` names, when it is a readable file under run_dir/raw/."""
    if not isinstance(log, str) or not log.startswith("raw/") or not log.endswith(".json"):
        return None
    path = (run_dir / log).resolve()
    if (run_dir / "raw").resolve() not in path.parents or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_fio_guest(row: dict) -> bool:
    """A row whose raw JSON would be fio's: any guest but the micro-guest."""
    return not str(row["guest"]).startswith("microguest")


def read_distributions(run_dir: Path | str, df: pd.DataFrame) -> Distributions:
    """The latency percentiles of the ok guest rows whose raw JSON is fio's."""
    run_dir = Path(run_dir)
    guests = ok_rows(df)
    guests = guests[guests["variant"] != HOST_VARIANT]
    records, missing = [], 0
    for row in guests.to_dict("records"):
        if not _is_fio_guest(row):
            continue
        data = _raw_json(run_dir, row["log"])
        if data is None:
            missing += 1
            continue
        records += [{**{k: row[k] for k in POINT_KEYS}, "percentile": p, "lat_us": lat}
                    for p, lat in point_percentiles(data, row).items()]
    return Distributions(pd.DataFrame(records, columns=POINT_KEYS + ["percentile", "lat_us"]),
                         missing)
