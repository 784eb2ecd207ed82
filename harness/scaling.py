"""Scaling with devices: total IOPS against the number of disks, and what bounded each point.

A run whose guests have several `disks_per_guest` gets a section in report.md
and a figure (scaling_plot.py).  Per workload (host, guest, accel, disk, rw,
bs, iodepth, numjobs) and variant: the median IOPS at each device count, its
gain over one device, QEMU's host CPU µs per I/O and what bounded the point,
read from what the run recorded — the first that holds:

* **guest CPU** — the guest's vCPUs were saturated (stats.guest_bound: most
  repetitions at GUEST_BOUND_PCT of their vCPUs or more);
* **host cores** — QEMU used at least HOST_BUSY of every host core
  (`host_cpu_pct`, percent of one core, against the manifest's core count);
  equivalently IOPS × CPU µs per I/O reached the cores' budget;
* **main loop** — QEMU's main-loop thread used at least HOST_BUSY of one core
  (threads.py's `main` kind is that one thread): every request of the
  baseline goes through it under the global mutex, so when it is full the
  devices and vCPUs beside it wait; under TCG here it rarely is, as the vCPU
  thread takes the mutex in turn (see the table's threads);
* **storage** — IOPS reached STORAGE_BUSY of fio on the host with one job per
  image on as many images as the guest has devices (host_ceiling: true;
  runners/ceiling.py), unless fio itself had its CPUs full there (HOST_BUSY of
  a core per job, or of every core): then fio's speed was measured, not the
  storage's, and no point is called storage-bound by it;
* otherwise "not saturated" (nothing the run measured was full: the limit is
  elsewhere, e.g. a thread's own latency), or "unknown" without the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import pandas as pd

from . import stats
from .hosts.spec import LOCAL_HOST
from .results import HOST_VARIANT

#: share of every host core QEMU must use for the point to be host-bound
HOST_BUSY = 0.9
#: share of the host fio ceiling (at the same number of images) that counts as storage-bound
STORAGE_BUSY = 0.9
Table = Callable[[list[str], list[list]], str]
#: a scaling workload: everything but the variant and the number of devices
SCALING_KEYS = ["host", "guest", "accel", "disk", "rw", "bs", "iodepth", "numjobs"]


@dataclass(frozen=True)
class Limits:
    """What the host offers: its cores (None: unknown) and the host fio ceilings."""

    cores: int | None  # this machine's (the manifest's); a remote host's are not known
    ceiling: pd.DataFrame  # stats.host_ceiling

    def cores_of(self, host: str) -> int | None:
        return self.cores if host == LOCAL_HOST else None


def scaling_rows(summary: pd.DataFrame, limits: Limits) -> pd.DataFrame:
    """stats.summarize rows of the workloads measured at more than one device count,
    with `gain` (IOPS over the same variant's at one device) and `bound_by`."""
    guests = summary[(summary["variant"] != HOST_VARIANT) & (summary["n_ok"] > 0)]
    counts = guests.groupby(SCALING_KEYS)["devices"].transform("nunique")
    rows = guests[counts > 1].copy()
    if rows.empty:
        return rows.assign(gain=pd.Series(dtype=float), bound_by=pd.Series(dtype=object))
    rows["gain"] = [_gain(rows, row) for _, row in rows.iterrows()]
    rows["bound_by"] = [bound_by(row, limits) for _, row in rows.iterrows()]
    return rows.sort_values(SCALING_KEYS + ["variant", "devices"]).reset_index(drop=True)


def _gain(rows: pd.DataFrame, row: pd.Series) -> float:
    same = rows[(rows[SCALING_KEYS + ["variant"]] == row[SCALING_KEYS + ["variant"]]).all(axis=1)]
    one = same[same["devices"] == 1]["iops_median"]
    return float(row["iops_median"] / one.iloc[0]) if len(one) and one.iloc[0] else math.nan


def bound_by(row: pd.Series, limits: Limits) -> str:
    """What bounded one summary row (see the module docstring)."""
    if bool(row.get("guest_bound")):
        return "guest CPU"
    host_pct = float(row.get("host_cpu_pct_median", math.nan))
    cores = limits.cores_of(row["host"])
    if cores and math.isfinite(host_pct) and host_pct >= HOST_BUSY * 100 * cores:
        return "host cores"
    if thread_pct(row, "main") >= HOST_BUSY * 100:
        return "main loop"
    ceiling = storage_ceiling(limits, row)
    if ceiling and row["iops_median"] >= STORAGE_BUSY * ceiling:
        return "storage"
    if not math.isfinite(host_pct) or not cores:
        return "unknown"
    return "not saturated"


def ceiling_iops(ceiling: pd.DataFrame, row: Mapping) -> float | None:
    """fio on the host with one job per image on as many images as the row's devices,
    same disk and workload, or None (not measured)."""
    hit = stats.ceiling_row(ceiling, row)
    return None if hit is None else float(hit["host_iops_median"])


def storage_ceiling(limits: Limits, row: Mapping) -> float | None:
    """ceiling_iops when that is the storage's: None when fio's own jobs had their CPUs
    full there (on tmpfs fio runs out of CPU long before memory runs out of IOPS; a
    guest near such a ceiling has met fio's speed, not the storage's)."""
    hit = stats.ceiling_row(limits.ceiling, row)
    if hit is None:
        return None
    fio_pct = float(hit["host_cpu_us_per_io_median"]) * float(hit["host_iops_median"]) / 1e4
    threads = int(row["devices"]) * int(row["numjobs"])
    cores = limits.cores_of(row["host"]) or threads
    if math.isfinite(fio_pct) and fio_pct >= HOST_BUSY * 100 * min(threads, cores):
        return None
    return float(hit["host_iops_median"])



def section(rows: pd.DataFrame, limits: Limits, images: list[str], table: Table) -> str:
    """The report's "Scaling with devices" section ("" when no workload has two device counts);
    table: the report's markdown table (report.md_table)."""
    if rows.empty:
        return ""
    cores = f"{limits.cores}" if limits.cores else "an unknown number of"
    parts = ["## Scaling with devices",
             f"Total IOPS (median over the repetitions) against the virtio-blk devices of one "
             f"guest, each on its own image; the host has {cores} cores. *Gain* is over the "
             "same variant with one device. *Bound by* is what the run saw full: the guest's "
             f"vCPUs (≥ {stats.GUEST_BOUND_PCT:.0f}% busy), the host's cores (QEMU at ≥ "
             f"{HOST_BUSY:.0%} of all of them), QEMU's main loop (its one thread, which serves "
             f"every device under the global mutex, at ≥ {HOST_BUSY:.0%} of a core), the "
             f"storage (≥ {STORAGE_BUSY:.0%} of fio on the host with one job per image, as "
             "many images as devices, when fio itself was not CPU-bound), else *not "
             "saturated*. The vCPU, main-loop and I/O threads' CPU (percent of one core, all "
             "such threads together; an I/O thread is a data-plane thread or an iothread) "
             "shows whether one kind of QEMU thread was full."]
    for key, frame in rows.groupby(SCALING_KEYS, sort=False):
        parts += [_heading(dict(zip(SCALING_KEYS, key))), _table(frame, table)]
    parts += [f"![{name}](plots/{name})" for name in images]
    return "\n\n".join(parts)


def _heading(key: dict) -> str:
    return (f"### {key['guest']} guest, {key['rw']} {key['bs']}, iodepth {key['iodepth']} per "
            f"device, {key['numjobs']} job(s), disk {key['disk']}, {key['accel']}")


def _table(frame: pd.DataFrame, table: Table) -> str:
    rows = [[r.variant, int(r.devices), _num(r.iops_median), _times(r.gain),
             _num(r.cpu_us_per_io_median, 1), _num(r.guest_cpu_pct_median),
             _num(r.host_cpu_pct_median), _num(thread_pct(r, "vcpu")),
             _num(thread_pct(r, "main")), _num(thread_pct(r, "iothread")), r.bound_by]
            for r in frame.itertuples(index=False)]
    return table(["variant", "devices", "IOPS", "gain", "host CPU µs per I/O", "guest CPU %",
                  "QEMU CPU % of a core", "vCPU threads %", "main loop %", "I/O threads %",
                  "bound by"], rows)


def thread_pct(row, kind: str) -> float:
    """CPU of one thread kind (threads.THREAD_KINDS) in percent of a core: its µs per I/O
    times the IOPS (the data-plane threads or iothreads together, the vCPUs together);
    NaN where the run has no thread split (the comparison with it is then false)."""
    value = getattr(row, f"cpu_us_per_io_{kind}_median", math.nan)
    return float(value) * float(row.iops_median) / 1e4


def _num(value: float, digits: int = 0) -> str:
    if value is None or not math.isfinite(float(value)):
        return "—"
    return f"{float(value):,.{digits}f}"


def _times(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.2f}×"
