"""The results of a run: one tidy row per variant × disk × workload × repetition.

Rows are appended to <run_dir>/results.csv one at a time, each flushed and
fsync'ed before the next point starts, so a crash or Ctrl-C loses at most the
point that was running.  The raw output of every point is kept beside it under
<run_dir>/raw/<point-key>.json, so a row can always be re-derived.

Latency convention: latencies come from fio's completion latency (clat_ns), or
from the total latency (lat_ns) when the job was run with lat_percentiles=1 —
whichever carries percentiles.  For mixed workloads (randrw, rw) the latencies
are the READ side's: fio reports percentiles per direction and they cannot be
merged exactly from the summary.  IOPS and bandwidth are read + write.

Schema: every row carries `schema_version` (SCHEMA_VERSION, now 5), always the
last column.  Version 5 added the guest's shape (DEVICE_COLUMNS): `devices`, the
virtio-blk test devices the boot attached (devices.py; older files read as 1,
which they all were), `vcpus` (older files: empty) and `device_iops`, each
device's IOPS as "a;b;c" when there were several (fio_merge.py; `iops` is
their sum).  Version 3 added `host`: where the point ran (hosts.LOCAL_HOST,
"local", for this machine; a remote host's label otherwise).  Version 4 added
what makes a number trustworthy (TRUST_COLUMNS): `foreign_cpu_pct`, the host
CPU used during the point by processes that are not the run's own (percent of
one core; hostload.py), `disturbed` (1 when that exceeded the run's threshold),
`bound` ("guest" when the guest's CPU was saturated, so the point measures the
emulated guest, not the I/O path), and the host CPU µs per I/O of the process
under test — in all (`cpu_us_per_io`) and per thread kind (vCPU, main loop,
I/O thread: the data-plane thread or an iothread, other; threads.py).  Files
written before (version 3 has no trust columns, version 2 no `host`, version 1
not even `schema_version`: the committed reference runs) are read the same
way, their rows' host "local", `disturbed` 0 and the rest empty; a file newer
than this harness is refused.  Rows that do
not parse are never dropped silently: `read_results` returns them with their
line numbers and `load_results` logs one warning line naming them.

This module is the one place that parses fio's JSON (`split_fio_output`,
`row_from_fio`): the code that runs fio calls it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .config import parse_size
from .errors import InfraError, UserError
from .fio_merge import device_iops, merged_metrics
from .hosts.spec import LOCAL_HOST
from .matrix import Point, Workload

_logger = logging.getLogger(__name__)

SCHEMA_VERSION = 5  # of results.csv (a column) and manifest.json (a top-level key)

#: Host CPU µs per I/O, in all and per thread kind (threads.THREAD_KINDS).
CPU_PER_IO_COLUMNS = ("cpu_us_per_io", "cpu_us_per_io_vcpu", "cpu_us_per_io_main",
                      "cpu_us_per_io_iothread", "cpu_us_per_io_other")
#: Added in schema 4 (see the module docstring).
TRUST_COLUMNS = ("foreign_cpu_pct", "disturbed", "bound") + CPU_PER_IO_COLUMNS
#: Added in schema 5: the test devices of the boot, its vCPUs, each device's IOPS.
DEVICE_COLUMNS = ("devices", "vcpus", "device_iops")
COLUMNS = (
    "run_id", "guest", "variant", "accel", "disk", "rw", "bs", "iodepth", "numjobs", "rep",
    "status", "iops", "bw_mib_s", "lat_mean_us", "lat_p50_us", "lat_p99_us", "lat_p999_us",
    "guest_cpu_pct", "host_cpu_pct", "runtime_s", "error", "log", "started_at", "host",
    *TRUST_COLUMNS, *DEVICE_COLUMNS, "schema_version",
)
V4_COLUMNS = tuple(c for c in COLUMNS if c not in DEVICE_COLUMNS)  # before the device columns
V3_COLUMNS = tuple(c for c in V4_COLUMNS if c not in TRUST_COLUMNS)  # before the trust columns
V2_COLUMNS = tuple(c for c in V3_COLUMNS if c != "host")  # results.csv before host existed
V1_COLUMNS = V2_COLUMNS[:-1]  # results.csv before schema_version existed
INT_COLUMNS = ("iodepth", "numjobs", "rep", "disturbed", "devices", "schema_version")
#: integers that older files leave empty (pandas Int64, <NA> there)
OPTIONAL_INT_COLUMNS = ("vcpus",)
FLOAT_COLUMNS = ("iops", "bw_mib_s", "lat_mean_us", "lat_p50_us", "lat_p99_us", "lat_p999_us",
                 "guest_cpu_pct", "host_cpu_pct", "runtime_s", "foreign_cpu_pct",
                 *CPU_PER_IO_COLUMNS)
#: `bound` when the guest's own CPU was saturated (stats.GUEST_BOUND_PCT).
GUEST_BOUND = "guest"
STR_COLUMNS = tuple(c for c in COLUMNS
                    if c not in INT_COLUMNS + OPTIONAL_INT_COLUMNS + FLOAT_COLUMNS + ("started_at",))
HOST_VARIANT = "host-fio"  # rows measuring fio on the host against the same image: the ceiling
PERCENTILES = {"lat_p50_us": "50.000000", "lat_p99_us": "99.000000", "lat_p999_us": "99.900000"}
#: kvm-nested's L2 watchdog: one row per point that hung at least once (nestedbench
#: writes it, report counts it)
WATCHDOG_CSV = "watchdog.csv"
WATCHDOG_COLUMNS = ("point", "variant", "hangs", "outcome", "diagnoses")
_MIXED = ("randrw", "rw", "readwrite")
NAN = float("nan")


def point_key(guest: str, variant: str, disk: str, rw: str, bs: str, iodepth: int, numjobs: int,
              rep: int, devices: int = 1) -> str:
    """The same key as matrix.Point.key, rebuilt from a row's fields."""
    return Point(guest, variant, disk, Workload(rw, bs, int(iodepth), int(numjobs)), int(rep),
                 int(devices)).key


def row_key(row: dict[str, Any]) -> str:
    return point_key(row["guest"], row["variant"], row["disk"], row["rw"], row["bs"],
                     row["iodepth"], row["numjobs"], row["rep"], row.get("devices") or 1)


def format_device_iops(values: Iterable[float]) -> str:
    """Each device's IOPS for the device_iops column: "a;b;c" (one device: empty)."""
    values = list(values)
    return ";".join(f"{v:.1f}" for v in values) if len(values) > 1 else ""


def disk_text(disk: str, devices: int) -> str:
    """A disk in a report: its name, with "× N" when the boot attached N > 1 devices."""
    return disk if int(devices) == 1 else f"{disk} × {int(devices)}"


def parse_device_iops(text: str) -> list[float]:
    """The device_iops column back as numbers ([] when empty)."""
    return [float(v) for v in str(text).split(";") if v.strip()]


def new_row(*, run_id: str, guest: str, variant: str, accel: str, disk: str, workload: Workload,
            rep: int, log: str, started_at: str, status: str = "ok", error: str = "",
            host: str = LOCAL_HOST, disturbed: bool = False, bound: str = "",
            devices: int = 1, vcpus: int | None = None, device_iops: str = "",
            **metrics: float | None) -> dict[str, Any]:
    """A complete row; metrics not given (or None) are NaN.  Unknown metric names are a bug."""
    unknown = set(metrics) - set(FLOAT_COLUMNS)
    if unknown:
        raise ValueError(f"not result columns: {sorted(unknown)}")
    row: dict[str, Any] = {
        "run_id": run_id, "guest": guest, "variant": variant, "accel": accel, "disk": disk,
        "rw": workload.rw, "bs": workload.bs, "iodepth": int(workload.iodepth),
        "numjobs": int(workload.numjobs), "rep": int(rep), "status": status,
        "error": error, "log": log, "started_at": started_at, "host": host,
        "disturbed": int(bool(disturbed)), "bound": bound, "devices": int(devices),
        "vcpus": vcpus, "device_iops": device_iops, "schema_version": SCHEMA_VERSION,
    }
    for name in FLOAT_COLUMNS:
        value = metrics.get(name)
        row[name] = NAN if value is None else float(value)
    return {name: row[name] for name in COLUMNS}


def failed_row(*, run_id: str, guest: str, variant: str, accel: str, disk: str,
               workload: Workload, rep: int, error: str, log: str, started_at: str,
               devices: int = 1, vcpus: int | None = None) -> dict[str, Any]:
    """A point that produced no measurement: status failed, the reason, NaN numbers."""
    one_line = " ".join(str(error).split()) or "unknown error"
    return new_row(run_id=run_id, guest=guest, variant=variant, accel=accel, disk=disk,
                   workload=workload, rep=rep, log=log, started_at=started_at,
                   status="failed", error=one_line, devices=devices, vcpus=vcpus)


# --- fio JSON ---------------------------------------------------------------------------

def split_fio_output(text: str, command: str = "fio") -> tuple[str, dict]:
    """fio's JSON text and its parsed value, skipping the notes fio may print before it.

    The one parser of fio output in the harness; `command` names what ran, for the
    error message (with the output's last lines when there is no JSON at all).
    """
    start = text.find("{")
    if start < 0:
        raise InfraError(f"fio printed no JSON: {command}: {_tail(text)}")
    json_text = text[start:]
    try:
        return json_text, json.loads(json_text)
    except json.JSONDecodeError as exc:
        raise InfraError(f"fio printed invalid JSON ({exc}): {command}") from exc


def parse_fio_output(text: str, command: str = "fio") -> dict:
    """fio's JSON, tolerating the warning lines fio sometimes prints before it."""
    return split_fio_output(text, command)[1]


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join((text or "").strip().splitlines()[-lines:]) or "(no output)"


def fio_options(fio_json: dict) -> dict[str, str]:
    """The job's effective options: global options overlaid by the first job's own."""
    jobs = fio_json.get("jobs") or []
    job_opts = jobs[0].get("job options", {}) if jobs else {}
    return {**fio_json.get("global options", {}), **job_opts}


def workload_from_fio(fio_json: dict, fallback: Workload | None = None) -> Workload:
    """The workload fio actually ran, read from the options recorded in its JSON.

    Options absent from the JSON (fio omits defaults) come from `fallback`, else
    fio's defaults.  When both are known and disagree, the JSON belongs to another
    point — an InfraError, because storing it would silently mislabel a result.
    """
    opts = fio_options(fio_json)
    defaults = fallback or Workload("read", "4k", 1, 1)
    found = Workload(rw=opts.get("rw", opts.get("readwrite", defaults.rw)),
                     bs=opts.get("bs", opts.get("blocksize", defaults.bs)),
                     iodepth=int(opts.get("iodepth", defaults.iodepth)),
                     numjobs=int(opts.get("numjobs", defaults.numjobs)))
    if fallback is None:
        return found
    if (found.rw, found.iodepth, found.numjobs) != (fallback.rw, fallback.iodepth, fallback.numjobs) \
            or parse_size(found.bs) != parse_size(fallback.bs):
        raise InfraError(f"fio ran {found.label} but the point expected {fallback.label}")
    return fallback


@dataclass(frozen=True)
class _Side:
    """The totals of one direction (read or write) over all jobs in the JSON."""

    iops: float
    bw_kib: float
    lat: dict | None  # clat_ns or lat_ns of the first job with I/O in this direction


def _latency_block(side: dict) -> dict | None:
    for name in ("lat_ns", "clat_ns"):
        block = side.get(name)
        if block and block.get("percentile"):
            return block
    return side.get("clat_ns") or side.get("lat_ns")


def _sum_side(jobs: list[dict], direction: str) -> _Side:
    """Sums across jobs, so output without group_reporting is handled; latency from job 0."""
    sides = [job.get(direction, {}) for job in jobs]
    with_io = [s for s in sides if s.get("total_ios", s.get("io_bytes", 0))]
    lat = _latency_block(with_io[0]) if with_io else None
    return _Side(iops=sum(float(s.get("iops", 0.0)) for s in sides),
                 bw_kib=sum(float(s.get("bw", 0.0)) for s in sides), lat=lat)


def _us(block: dict | None, percentile: str | None = None) -> float:
    if not block:
        return NAN
    value = block.get("mean") if percentile is None else block.get("percentile", {}).get(percentile)
    return NAN if value is None else float(value) / 1000.0


def _runtime_s(jobs: list[dict]) -> float:
    ms = max(float(job.get(d, {}).get("runtime", 0)) for job in jobs for d in ("read", "write"))
    return ms / 1000.0 if ms else NAN


def fio_metrics(fio_json: dict, rw: str) -> dict[str, float]:
    """IOPS, MiB/s and latencies (µs) of a fio JSON result; see the module docstring."""
    jobs = fio_json.get("jobs") or []
    if not jobs:
        raise InfraError("fio JSON has no jobs")
    errors = [job.get("error", 0) for job in jobs if job.get("error", 0)]
    if errors:
        raise InfraError(f"fio reported error {errors[0]} ({os.strerror(errors[0])})")
    read, write = _sum_side(jobs, "read"), _sum_side(jobs, "write")
    lat = read.lat if (rw in _MIXED or read.iops) else write.lat
    if lat is None:
        lat = write.lat
    metrics = {"iops": read.iops + write.iops, "bw_mib_s": (read.bw_kib + write.bw_kib) / 1024.0,
               "lat_mean_us": _us(lat), "runtime_s": _runtime_s(jobs)}
    metrics.update({col: _us(lat, pct) for col, pct in PERCENTILES.items()})
    return metrics


def row_from_fio(fio_json: dict, *, run_id: str, guest: str, variant: str, accel: str, disk: str,
                 workload: Workload | None, rep: int, guest_cpu_pct: float | None,
                 host_cpu_pct: float | None, log: str, started_at: str, bound: str = "",
                 devices: int = 1, vcpus: int | None = None,
                 **extra: float | None) -> dict[str, Any]:
    """One ok row from fio --output-format=json (fio 3.x, group_reporting or not).

    The workload is taken from the options inside the JSON; `workload` (the
    point's plan) fills options fio left out and is checked against the rest.
    extra: more measured columns (the CPU µs per I/O).  A point with several
    devices (one fio job each) is merged by fio_merge: IOPS summed, latency
    over all requests, each device's IOPS in device_iops.
    """
    ran = workload_from_fio(fio_json, workload)
    per_device = ""
    if devices > 1:
        metrics = merged_metrics(fio_json, ran.rw, PERCENTILES)
        per_device = format_device_iops(device_iops(fio_json))
    else:
        metrics = fio_metrics(fio_json, ran.rw)
    return new_row(run_id=run_id, guest=guest, variant=variant, accel=accel, disk=disk,
                   workload=ran, rep=rep, log=log, started_at=started_at, bound=bound,
                   devices=devices, vcpus=vcpus, device_iops=per_device,
                   guest_cpu_pct=guest_cpu_pct, host_cpu_pct=host_cpu_pct, **metrics, **extra)


# --- the store --------------------------------------------------------------------------

def row_line(row: dict[str, Any], columns: tuple[str, ...] = COLUMNS) -> str:
    """One CSV line of `row` in the order of `columns` (NaN and None as empty fields)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["" if _is_nan(row[c]) else row[c] for c in columns])
    return buffer.getvalue()


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultsStore:
    """<run_dir>/results.csv (append-only) and <run_dir>/raw/ (one file per point)."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.csv"
        self.raw_dir = self.run_dir / "raw"
        self._repaired = False

    def append(self, row: dict[str, Any]) -> None:
        """Write one row durably: header on first use, then append + flush + fsync.

        A file begun by an older harness (no schema_version column) keeps its own
        columns, so that resuming an old run never mixes two layouts in one file.
        """
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"row lacks columns {missing}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        columns = COLUMNS if new_file else self._file_columns()
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            if new_file:
                handle.write(row_line(dict(zip(COLUMNS, COLUMNS))))
            handle.write(row_line(row, columns))
            handle.flush()
            os.fsync(handle.fileno())
        if new_file:
            _fsync_dir(self.run_dir)

    def _file_columns(self) -> tuple[str, ...]:
        with open(self.path, encoding="utf-8", newline="") as handle:
            header = tuple(next(csv.reader(handle), ()))
        if header in (COLUMNS, V4_COLUMNS, V3_COLUMNS, V2_COLUMNS, V1_COLUMNS):
            return header
        raise UserError(f"{self.path} has columns this harness does not write: "
                        f"start a new run instead of resuming this one")

    def _drop_torn_tail(self) -> None:
        """A crash mid-write can leave a partial last line; cut it so the next row stays valid."""
        if self._repaired or not self.path.exists():
            return
        self._repaired = True
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                os.fsync(handle.fileno())

    def rows(self) -> list[dict[str, str]]:
        """The stored rows as strings (rows that parse only; see read_results)."""
        return read_results(self.path).records

    def done_keys(self) -> set[str]:
        """Point keys (matrix.Point.key) that finished with status ok: skip these on resume."""
        return {row_key(r) for r in self.rows() if r["status"] == "ok"}

    def load(self) -> pd.DataFrame:
        return load_results(self.path)

    def save_raw(self, key: str, text: str, suffix: str = ".json") -> Path:
        """Keep a point's raw output (atomically: temp file + rename); returns its path."""
        if "/" in key or key.startswith("."):
            raise ValueError(f"bad point key {key!r}")
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        final = self.raw_dir / f"{key}{suffix}"
        temp = final.with_name(final.name + ".tmp")
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        return final


# --- reading ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BadLine:
    """A line of results.csv that is not a row: left out of the data, never silently."""

    line: int      # 1-based, as an editor shows it
    reason: str


@dataclass(frozen=True)
class ResultsFile:
    """What results.csv holds: the rows that parse, its schema version and the lines that did not."""

    path: Path
    schema_version: int
    records: list[dict[str, str]] = field(default_factory=list)
    bad_lines: tuple[BadLine, ...] = ()

    @property
    def frame(self) -> pd.DataFrame:
        if not self.records:
            return empty_frame()
        return _typed(pd.DataFrame(self.records, dtype=object).replace({"": None}))

    def warning(self) -> str | None:
        """One line naming the malformed rows, or None when every line parsed."""
        if not self.bad_lines:
            return None
        shown = "; ".join(f"line {b.line}: {b.reason}" for b in self.bad_lines[:5])
        more = f"; and {len(self.bad_lines) - 5} more" if len(self.bad_lines) > 5 else ""
        return (f"{self.path}: {len(self.bad_lines)} malformed row(s) left out "
                f"({shown}{more})")


def _record_problem(record: dict[str, str]) -> str | None:
    for name in INT_COLUMNS:
        value = record.get(name, "").strip()
        if name in record and not value.lstrip("-").isdigit():
            return f"{name} {value!r} is not an integer"
    for name in OPTIONAL_INT_COLUMNS:
        value = record.get(name, "").strip()
        if value and not value.isdigit():
            return f"{name} {value!r} is not an integer"
    for name in FLOAT_COLUMNS:
        value = record.get(name, "").strip()
        if value:
            try:
                float(value)
            except ValueError:
                return f"{name} {value!r} is not a number"
    if not record["status"].strip():
        return "status is empty"
    return None


def _check_header(header: list[str], path: Path) -> None:
    missing = [c for c in V1_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path} lacks the columns {missing}: not a harness results.csv")


def _file_version(records: list[dict[str, str]], header: list[str], path: Path) -> int:
    if "schema_version" not in header:
        return 1
    version = max((int(r["schema_version"]) for r in records), default=SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        raise UserError(f"{path} has schema_version {version}, newer than this harness reads "
                        f"({SCHEMA_VERSION}): upgrade the harness")
    return version


def read_results(path: Path | str) -> ResultsFile:
    """results.csv (or a run directory holding one): its rows, version and malformed lines.

    A line is malformed when it has the wrong number of fields, an integer column
    that is not an integer, a number column that is not a number, no status, or
    when it is the cut-short last line a crash leaves.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.exists():
        return ResultsFile(path, SCHEMA_VERSION)
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    if not header:
        return ResultsFile(path, SCHEMA_VERSION)
    _check_header(header, path)
    records, bad = [], []
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if len(fields) != len(header):
            torn = line == text.count("\n") + 1 and not text.endswith("\n")
            reason = "incomplete last line (the write was cut short)" if torn else \
                f"{len(fields)} fields, the header has {len(header)}"
            bad.append(BadLine(line, reason))
            continue
        record = dict(zip(header, fields))
        problem = _record_problem(record)
        if problem:
            bad.append(BadLine(line, problem))
        else:
            records.append(record)
    version = _file_version(records, header, path)
    if "schema_version" not in header:
        records = [{**r, "schema_version": "1"} for r in records]
    if "host" not in header:
        records = [{**r, "host": LOCAL_HOST} for r in records]
    if "devices" not in header:  # before schema 5 every point had one device
        records = [{**r, "devices": "1"} for r in records]
    return ResultsFile(path, version, records, tuple(bad))


def empty_frame() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS}))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reindex(columns=list(COLUMNS))
    frame["host"] = frame["host"].replace({"": None}).fillna(LOCAL_HOST)
    frame["disturbed"] = frame["disturbed"].replace({"": None}).fillna(0)
    for col in STR_COLUMNS:
        frame[col] = frame[col].astype(object).where(frame[col].notna(), "").astype(str)
    if frame["schema_version"].isna().any():
        frame["schema_version"] = frame["schema_version"].fillna(SCHEMA_VERSION)
    frame["devices"] = frame["devices"].replace({"": None}).fillna(1)
    for col in INT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col]).astype("int64")
    for col in OPTIONAL_INT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col].replace({"": None}), errors="coerce").astype("Int64")
    for col in FLOAT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["started_at"] = pd.to_datetime(frame["started_at"], utc=True, errors="coerce",
                                         format="ISO8601")
    return frame


def load_results(path: Path | str) -> pd.DataFrame:
    """results.csv (or a run directory holding one) as a typed DataFrame.

    Strings stay strings ('' when empty), iodepth/numjobs/rep/schema_version are
    int64, the measurements float64 (NaN when absent), started_at a UTC datetime.
    Malformed lines are left out with one warning naming them (read_results has
    the details).
    """
    results = read_results(path)
    message = results.warning()
    if message:
        _logger.warning(message)
    return results.frame


def frame_from_rows(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Typed DataFrame straight from row dicts (tests, in-memory use)."""
    return _typed(pd.DataFrame(list(rows), columns=list(COLUMNS)))
