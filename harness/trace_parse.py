"""The pinned tree's simple-trace binary format, read (our own reader).

trace/simple.c writes fixed records of eight little-endian uint64 words:
event id, timestamp (ns, qemu-timer.h get_clock(): CLOCK_MONOTONIC), and six
arguments.  The file starts with a header record (event ~0, the magic
0xf2b177cb0aa429b4 in the timestamp word, version 0 in the first argument);
a record with event ~0 - 1 says that its first argument's number of records
were dropped (the writer thread fell behind the record ring; patches/trace
makes the ring 2^18 records so that a benchmark point does not overrun it).

Event ids are positions in the build's trace list: scripts/tracetool numbers
the enabled lines of trace-events in order and writes them to the build's
trace.c as `{.tp_name = "NAME", .state=0},`; event_names() reads that list.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

HEADER_EVENT_ID = (1 << 64) - 1
DROPPED_EVENT_ID = (1 << 64) - 2
HEADER_MAGIC = 0xF2B177CB0AA429B4
HEADER_VERSION = 0
RECORD = np.dtype([("event", "<u8"), ("ts", "<u8"), ("x1", "<u8"), ("x2", "<u8"),
                   ("x3", "<u8"), ("x4", "<u8"), ("x5", "<u8"), ("x6", "<u8")])
_TP_NAME = re.compile(r'\{\s*\.tp_name\s*=\s*"([A-Za-z0-9_]+)"')


@dataclass(frozen=True)
class Trace:
    """The records of one trace file, header removed; drops counted."""

    records: np.ndarray  # RECORD, in file order, without the header or drop records
    names: tuple[str, ...]  # event id → name
    dropped: int  # records the backend said it dropped
    drop_at: tuple[int, ...]  # index into records where each drop happened

    def named(self, event_id: int) -> str:
        return self.names[event_id] if event_id < len(self.names) else f"event{event_id}"


def event_names(trace_c: Path) -> tuple[str, ...]:
    """The event names of a build, by id, from its generated trace.c."""
    try:
        text = Path(trace_c).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {trace_c}: {exc.strerror}; is it a build with "
                        "--enable-trace-backend=simple (harness build --trace)?") from exc
    names = tuple(_TP_NAME.findall(text))
    if not names:
        raise UserError(f"{trace_c} lists no trace events; build with harness build --trace")
    return names


def read_bytes(path: Path) -> bytes:
    """A trace file's bytes; a .gz file is decompressed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise UserError(f"cannot read trace {path}: {exc}") from exc


def parse_trace(data: bytes, names: tuple[str, ...] | list[str], origin: str = "<trace>") -> Trace:
    """Records of a simple-trace file; UserError when it is not one.

    A trailing partial record (QEMU killed mid-write) is ignored.
    """
    usable = len(data) - len(data) % RECORD.itemsize
    records = np.frombuffer(data[:usable], dtype=RECORD)
    if len(records) == 0:
        raise UserError(f"{origin}: empty, not a simple-trace file (no header record)")
    header = records[0]
    if int(header["event"]) != HEADER_EVENT_ID or int(header["ts"]) != HEADER_MAGIC:
        raise UserError(f"{origin}: not a simple-trace file (bad header magic)")
    if int(header["x1"]) != HEADER_VERSION:
        raise UserError(f"{origin}: simple-trace version {int(header['x1'])}, "
                        f"this reader knows version {HEADER_VERSION}")
    body = records[1:]
    is_drop = body["event"] == np.uint64(DROPPED_EVENT_ID)
    drop_positions = np.flatnonzero(is_drop)
    dropped = _dropped(body["x1"][is_drop])
    kept = body[~is_drop]
    # a drop at body index i sits before kept record i - (drops before it)
    drop_at = tuple(int(pos - k) for k, pos in enumerate(drop_positions))
    unknown = kept["event"] >= np.uint64(len(names))
    if unknown.any():
        first = int(kept["event"][unknown][0])
        raise UserError(f"{origin}: event id {first} is not in the build's {len(names)} "
                        "trace events; the trace and the event list come from different builds")
    return Trace(kept.copy(), tuple(names), dropped, drop_at)


def _dropped(counts: np.ndarray) -> int:
    """The records dropped, from the drop records' counts.

    The writer computes the count as an unsigned int difference of its index
    and the writers'; right after a drop its index can be ahead, and the
    difference wraps (2^32 - n): such a record dropped nothing.
    """
    as_int = counts.astype(np.uint32).view(np.int32) if len(counts) else counts
    return int(as_int[as_int > 0].sum()) if len(counts) else 0


def read_trace(path: Path, names: tuple[str, ...] | list[str]) -> Trace:
    return parse_trace(read_bytes(path), names, str(path))
