"""Writing a run's results.csv: one durable row per point, retried points replacing theirs.

The file's first column is `schema_version` (SCHEMA_VERSION); the rest are
results.COLUMNS.  A row is appended, flushed and fsync'ed before the next
point starts, so a crash or Ctrl-C loses at most the point that was running.
When a point is written again (a retry on `--resume`), the file is rewritten
without its earlier row (temp file + rename), so that every point has one row:
its latest attempt.  Reading results for reports is results.py's job.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .results import COLUMNS, ResultsStore, row_key

#: Version of results.csv and manifest.json; 2 added this column and key.
SCHEMA_VERSION = 2
WRITTEN_COLUMNS = ("schema_version", *COLUMNS)


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        ["" if value is None or (isinstance(value, float) and math.isnan(value)) else value
         for value in values])
    return buffer.getvalue()


def _row_line(row: dict[str, Any]) -> str:
    return _csv_line([SCHEMA_VERSION, *(row[c] for c in COLUMNS)])


class ResultsWriter:
    """<run_dir>/results.csv (written here) and <run_dir>/raw/ (a file per point)."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.csv"
        self._raw = ResultsStore(self.run_dir)

    def check_resumable(self) -> None:
        """A UserError unless the file is absent or written with this schema."""
        header = self._header()
        if header is not None and header != list(WRITTEN_COLUMNS):
            raise UserError(f"{self.path} was written by an older harness (no schema_version "
                            f"{SCHEMA_VERSION}); it cannot be resumed: start a new run")

    def _header(self) -> list[str] | None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        with open(self.path, encoding="utf-8", newline="") as handle:
            return next(csv.reader(handle), None)

    def rows(self) -> list[dict[str, str]]:
        """The stored rows as strings (complete lines only)."""
        if self._header() is None:
            return []
        with open(self.path, encoding="utf-8", newline="") as handle:
            return [r for r in csv.DictReader(handle) if None not in r.values() and None not in r]

    def done_keys(self) -> set[str]:
        """Point keys that finished ok: what a resumed run skips."""
        return {row_key(r) for r in self.rows() if r["status"] == "ok"}

    def failed(self) -> list[tuple[str, str]]:
        """(point key, error) of every point whose row says it failed."""
        return [(row_key(r), r["error"]) for r in self.rows() if r["status"] != "ok"]

    def append(self, row: dict[str, Any]) -> None:
        """Write one row durably; an earlier row of the same point is replaced."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"row lacks columns {missing}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        key = row_key(row)
        earlier = self.rows()
        if any(row_key(r) == key for r in earlier):
            kept = [r for r in earlier if row_key(r) != key]
            self._rewrite([_csv_line([r[c] for c in WRITTEN_COLUMNS]) for r in kept]
                          + [_row_line(row)])
            return
        new_file = self._header() is None
        with open(self.path, "a" if not new_file else "w", encoding="utf-8",
                  newline="") as handle:
            if new_file:
                handle.write(_csv_line(list(WRITTEN_COLUMNS)))
            handle.write(_row_line(row))
            handle.flush()
            os.fsync(handle.fileno())
        if new_file:
            _fsync_dir(self.run_dir)

    def _rewrite(self, lines: list[str]) -> None:
        temp = self.path.with_name(self.path.name + ".tmp")
        with open(temp, "w", encoding="utf-8", newline="") as handle:
            handle.write(_csv_line(list(WRITTEN_COLUMNS)))
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        _fsync_dir(self.run_dir)

    def _drop_torn_tail(self) -> None:
        """A crash mid-write can leave a partial last line; cut it so the next row stays valid."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                os.fsync(handle.fileno())

    def save_raw(self, key: str, text: str, suffix: str = ".json") -> Path:
        """Keep a point's raw output; returns its path."""
        return self._raw.save_raw(key, text, suffix)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
