"""Writing a run's results.csv during a run: one durable row per point, a retry replacing its row.

results.ResultsStore appends rows (flushed and fsync'ed, so a crash or Ctrl-C
loses at most the point that was running).  What a *run* adds on top is
resume: a file is resumed only when this harness wrote it (schema_version
SCHEMA_VERSION), and when a point is written again (a retry on `--resume`) the
file is rewritten without its earlier row (temp file + rename), so that every
point has one row: its latest attempt.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from .errors import UserError
from .results import COLUMNS, SCHEMA_VERSION, ResultsStore, row_key, row_line

__all__ = ["ResultsWriter", "SCHEMA_VERSION"]


class ResultsWriter(ResultsStore):
    """The store of a run in progress."""

    def check_resumable(self) -> None:
        """A UserError unless the file is absent or written with this schema."""
        header = self._header()
        if header is not None and tuple(header) != COLUMNS:
            raise UserError(f"{self.path} was written by an older harness (no schema_version "
                            f"{SCHEMA_VERSION}); it cannot be resumed: start a new run")

    def _header(self) -> list[str] | None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        with open(self.path, encoding="utf-8", newline="") as handle:
            return next(csv.reader(handle), None)

    def failed(self) -> list[tuple[str, str]]:
        """(point key, error) of every point whose row says it failed."""
        return [(row_key(r), r["error"]) for r in self.rows() if r["status"] != "ok"]

    def append(self, row: dict[str, Any]) -> None:
        """Write one row durably; an earlier row of the same point is replaced."""
        row = {**row, "schema_version": SCHEMA_VERSION}
        key = row_key(row)
        earlier = self.rows() if self._header() is not None else []
        if not any(row_key(r) == key for r in earlier):
            super().append(row)
            return
        kept = [r for r in earlier if row_key(r) != key]
        self._rewrite([row_line(r) for r in kept] + [row_line(row)])

    def _rewrite(self, lines: list[str]) -> None:
        temp = self.path.with_name(self.path.name + ".tmp")
        with open(temp, "w", encoding="utf-8", newline="") as handle:
            handle.write(row_line(dict(zip(COLUMNS, COLUMNS))))
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
