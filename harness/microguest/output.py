"""What the micro-guest prints on its serial port, parsed; a results row from it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import InfraError
from ..matrix import Point
from ..results import failed_row, new_row
from ..threads import CpuSplit
from ..util import one_line

RESULT_PREFIX = "MICROGUEST-RESULT "
HOSTILE_PREFIX = "MICROGUEST-HOSTILE "
BEGIN_MARK = "MICROGUEST-BEGIN"
END_MARK = "MICROGUEST-END"
HALT_MARK = "MICROGUEST-HALT"


@dataclass(frozen=True)
class MicroResult:
    ok: bool
    rw: str
    bs: int
    qd: int
    n: int
    done: int
    wait: str
    errors: int
    mismatches: int
    verified: int
    tsc_hz: int
    elapsed_ns: int
    halted_ns: int
    iops: float
    lat_mean_ns: float
    lat_min_ns: float
    lat_max_ns: float
    p50_ns: float
    p99_ns: float
    p999_ns: float
    hist: tuple[tuple[int, int, int], ...]
    error: str = ""
    #: devices driven (disks=N); n is per device, done and iops are over all of them
    disks: int = 1
    #: each device's IOPS, in PCI scan order (empty in results from before disks=N)
    per_disk_iops: tuple[float, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # filled in by run.run_microguest_point
    host_cpu_pct: float = math.nan
    wall_s: float = math.nan
    cpu: CpuSplit = field(default_factory=CpuSplit.unknown)  # per thread kind, BEGIN to END
    exit_status: int | None = None
    log: str = ""

    @property
    def bw_mib_s(self) -> float:
        return self.iops * self.bs / (1 << 20)

    @property
    def guest_cpu_pct(self) -> float:
        """Share of the run the vCPU was not halted (100 when polling)."""
        if self.wait in ("poll", "poll-irq-on"):
            return 100.0
        if self.elapsed_ns <= 0:
            return math.nan
        return max(0.0, 100.0 * (1 - self.halted_ns / self.elapsed_ns))


def find_line(text: str, prefix: str) -> dict[str, Any] | None:
    """The JSON of the last line starting with prefix, or None."""
    found = None
    for line in text.splitlines():
        line = line.strip("\r\x00 ")
        if line.startswith(prefix):
            found = line[len(prefix):]
    if found is None:
        return None
    try:
        value = json.loads(found)
    except json.JSONDecodeError as exc:
        raise InfraError(f"micro-guest printed a malformed {prefix.strip()} line: {exc}: "
                         f"{found[:200]}") from exc
    if not isinstance(value, dict):
        raise InfraError(f"micro-guest {prefix.strip()} line is not a JSON object")
    return value


def hist_percentile(hist: Sequence[Sequence[int]], q: float) -> float:
    """The q-quantile (0..1) of a [lo, hi, count] histogram: the bucket midpoint,
    the same rule the guest uses (it also clamps to the observed min and max)."""
    total = sum(b[2] for b in hist)
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(total * q - 1e-9))
    cum = 0
    for lo, hi, count in hist:
        cum += count
        if cum >= rank:
            return (lo + hi) / 2
    return float(hist[-1][1])


def parse_result(text: str) -> MicroResult | None:
    """Parse the MICROGUEST-RESULT line out of console output (None if absent)."""
    data = find_line(text, RESULT_PREFIX)
    if data is None:
        return None
    lat = data.get("lat_ns") or {}
    hist = tuple(tuple(int(x) for x in b) for b in data.get("hist") or ())
    for bucket in hist:
        if len(bucket) != 3 or bucket[0] > bucket[1] or bucket[2] < 0:
            raise InfraError(f"micro-guest histogram bucket malformed: {bucket}")
    return MicroResult(
        ok=bool(data.get("ok")), rw=str(data.get("rw", "")), bs=int(data.get("bs", 0)),
        qd=int(data.get("qd", 0)), n=int(data.get("n", 0)), done=int(data.get("done", 0)),
        wait=str(data.get("wait", "")), errors=int(data.get("errors", 0)),
        mismatches=int(data.get("mismatches", 0)), verified=int(data.get("verified", 0)),
        tsc_hz=int(data.get("tsc_hz", 0)), elapsed_ns=int(data.get("elapsed_ns", 0)),
        halted_ns=int(data.get("halted_ns", 0)),
        iops=float(data.get("iops", 0)),
        lat_mean_ns=float(lat.get("mean", math.nan)), lat_min_ns=float(lat.get("min", math.nan)),
        lat_max_ns=float(lat.get("max", math.nan)), p50_ns=float(lat.get("p50", math.nan)),
        p99_ns=float(lat.get("p99", math.nan)), p999_ns=float(lat.get("p999", math.nan)),
        hist=hist, error=str(data.get("error", "")), raw=data,
        disks=int(data.get("disks", 1)),
        per_disk_iops=tuple(float(d.get("iops", 0)) for d in data.get("per_disk") or ()),
    )


def micro_row(run_id: str, point: Point, accel: str, result: MicroResult | None, *,
              started_at: str, error: str = "", log_path: str = "") -> dict[str, Any]:
    """One results.csv row for a micro-guest point (result None: the point failed).

    guest_cpu_pct: 100 when polling, else the share of the run the vCPU was not
    halted; host_cpu_pct: QEMU's CPU time over the run (see run.run_microguest_point);
    cpu_us_per_io*: QEMU's CPU seconds per wall second between the marks, per thread
    kind, divided by the guest's IOPS.
    """
    common = dict(run_id=run_id, guest=point.guest, variant=point.variant, accel=str(accel),
                  disk=point.disk, workload=point.workload, rep=point.rep,
                  started_at=started_at)
    if result is None:
        return failed_row(**common, error=error or "the micro-guest produced no result",
                          log=log_path)
    ok = result.ok and not result.errors and not result.mismatches
    if not ok and not error:
        error = result.error or (f"{result.errors} I/O errors, "
                                 f"{result.mismatches} verify mismatches")
    return new_row(
        **common, log=log_path or result.log, status="ok" if ok else "failed",
        error=one_line(error),
        iops=result.iops, bw_mib_s=result.bw_mib_s,
        lat_mean_us=result.lat_mean_ns / 1000, lat_p50_us=result.p50_ns / 1000,
        lat_p99_us=result.p99_ns / 1000, lat_p999_us=result.p999_ns / 1000,
        guest_cpu_pct=result.guest_cpu_pct, host_cpu_pct=result.host_cpu_pct,
        runtime_s=result.elapsed_ns / 1e9,
        **result.cpu.per_io_us(result.cpu.wall_s, result.iops),
    )


def churn_faults(result: dict[str, Any]) -> list[str]:
    """What a mode=msix-churn result says the device got wrong (empty: nothing).

    The guest masks, unmasks and re-targets the queue's MSI-X vector while
    requests run (safety.c); each fault is a line naming the count behind it."""
    churn = result.get("churn") or {}
    expected = {
        "irq_while_masked": "an MSI-X message arrived while the vector was masked",
        "pending_missing": "a completion while masked left the pending bit clear",
        "pending_lost": "the pending interrupt was not delivered on unmask",
        "retarget_rejected": "the device refused a new queue vector",
    }
    faults = [f"{what} ({churn[key]}×)" for key, what in expected.items() if churn.get(key)]
    if churn.get("masks", 0) <= 10 or churn.get("retargets", 0) <= 10:
        faults.append(f"too little churn to test anything: {churn.get('masks', 0)} masks, "
                      f"{churn.get('retargets', 0)} re-targets")
    if not churn.get("irqs_entry1"):
        faults.append("no interrupt came on the re-targeted table entry")
    if result.get("unexpected_irqs"):
        faults.append(f"{result['unexpected_irqs']} interrupts on no expected vector")
    return faults
