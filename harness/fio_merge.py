"""fio's result of a point with several devices: one job per device, merged into one row.

fio_jobs.fio_argv runs a multi-device point as one job per device (named
`<label>.d<i>`, each with the workload's iodepth and numjobs clones) without
group_reporting and with `--output-format=json+`, so that every job carries
its completion-latency histogram (`clat_ns.bins`: latency in ns → count).
Here:

* IOPS and bandwidth are the sums over all jobs (read + write), as for one device;
* `device_iops` is each device's IOPS (its jobs summed), in device order, as
  "a;b;c" in results.csv;
* latency percentiles are over all requests of all devices: the jobs'
  histograms are added and the percentile is the first bin at which the count
  reaches the rank, the rule fio itself uses; the mean is weighted by each
  job's request count.  For mixed workloads the READ side, as results.py says.

One-device points never come here (results.fio_metrics reads them as before).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Mapping

from .errors import InfraError

NAN = math.nan

_DEVICE_JOB = re.compile(r"\.d(\d+)$")
_MIXED = ("randrw", "rw", "readwrite")


def is_multi_device(fio_json: dict) -> bool:
    """The JSON holds per-device jobs (fio_jobs.device_job names)."""
    return any(_DEVICE_JOB.search(job.get("jobname", "")) for job in fio_json.get("jobs") or [])


def device_iops(fio_json: dict) -> list[float]:
    """Each device's IOPS (read + write, its numjobs clones summed), in device order."""
    per: dict[int, float] = {}
    for job in _jobs(fio_json):
        index = _device_index(job)
        per[index] = per.get(index, 0.0) + sum(float(job.get(d, {}).get("iops", 0.0))
                                               for d in ("read", "write"))
    if sorted(per) != list(range(len(per))):
        raise InfraError(f"fio's jobs name devices {sorted(per)}, not 0…{len(per) - 1}")
    return [per[index] for index in range(len(per))]


def merged_metrics(fio_json: dict, rw: str, percentiles: Mapping[str, str]) -> dict[str, float]:
    """IOPS, MiB/s, latencies (µs) over every device's jobs; see the module docstring.

    percentiles: column → fio's percentile text (results.PERCENTILES)."""
    sides = _sides(fio_json)
    blocks = _latency_blocks(sides, rw)
    iops = sum(float(side.get("iops", 0.0)) for d in sides for side in sides[d])
    bw_kib = sum(float(side.get("bw", 0.0)) for d in sides for side in sides[d])
    runtime = max(float(side.get("runtime", 0)) for d in sides for side in sides[d])
    metrics = {"iops": iops, "bw_mib_s": bw_kib / 1024.0, "lat_mean_us": _mean_us(blocks),
               "runtime_s": runtime / 1000.0 if runtime else NAN}
    bins = merged_bins(blocks)
    metrics.update({col: percentile_ns(bins, float(p)) / 1000.0
                    for col, p in percentiles.items()})
    return metrics


def merged_percentiles(fio_json: dict, rw: str, percents: list[float]) -> dict[float, float]:
    """Latency (µs) at each percent over every device's requests (the latency CDF's)."""
    bins = merged_bins(_latency_blocks(_sides(fio_json), rw))
    return {percent: percentile_ns(bins, percent) / 1000.0 for percent in percents}


def _sides(fio_json: dict) -> dict[str, list[dict]]:
    """Every job's read and write results, by direction."""
    jobs = _jobs(fio_json)
    return {d: [job.get(d, {}) for job in jobs] for d in ("read", "write")}


def _latency_blocks(sides: dict[str, list[dict]], rw: str) -> list[dict]:
    """Every job's latency block of the side the row reports (the reads', unless only
    writes were done)."""
    read_ios = sum(int(side.get("total_ios", 0)) for side in sides["read"])
    direction = "read" if (rw in _MIXED or read_ios) else "write"
    return [b for side in sides[direction] if (b := _latency_block(side))]


def merged_bins(blocks: list[dict]) -> list[tuple[int, int]]:
    """The jobs' latency histograms added: (latency ns, count), ascending."""
    total: Counter[int] = Counter()
    for block in blocks:
        bins = block.get("bins")
        if not bins:
            raise InfraError("fio's JSON has no latency histogram (run with --output-format=json+)")
        for value, count in bins.items():
            total[int(value)] += int(count)
    return sorted(total.items())


def percentile_ns(bins: list[tuple[int, int]], percent: float) -> float:
    """The first bin whose cumulative count reaches percent of all (fio's rule); NaN if empty."""
    count = sum(n for _, n in bins)
    if count == 0:
        return NAN
    rank = max(1, math.ceil(count * percent / 100.0 - 1e-9))
    seen = 0
    for value, n in bins:
        seen += n
        if seen >= rank:
            return float(value)
    return float(bins[-1][0])


def _jobs(fio_json: dict) -> list[dict[str, Any]]:
    jobs = fio_json.get("jobs") or []
    if not jobs:
        raise InfraError("fio JSON has no jobs")
    errors = [job["error"] for job in jobs if job.get("error", 0)]
    if errors:
        raise InfraError(f"fio reported error {errors[0]} on one of the devices")
    return jobs


def _device_index(job: dict) -> int:
    found = _DEVICE_JOB.search(job.get("jobname", ""))
    if not found:
        raise InfraError(f"fio job {job.get('jobname')!r} names no device (<label>.d<i>)")
    return int(found.group(1))


def _latency_block(side: dict) -> dict | None:
    """The block whose histogram the percentiles come from: lat_ns when it has one
    (lat_percentiles=1), else clat_ns; None for a side without I/O."""
    if not side.get("total_ios"):
        return None
    for name in ("lat_ns", "clat_ns"):
        if (side.get(name) or {}).get("bins"):
            return side[name]
    return side.get("clat_ns")


def _mean_us(blocks: list[dict]) -> float:
    count = sum(int(b.get("N", 0)) for b in blocks)
    if count == 0:
        return NAN
    return sum(float(b.get("mean", 0.0)) * int(b.get("N", 0)) for b in blocks) / count / 1000.0
