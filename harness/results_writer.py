"""Writing a run's results.csv during a run: one durable row per point, a retry replacing its row.

results.ResultsStore appends rows (flushed and fsync'ed, so a crash or Ctrl-C
loses at most the point that was running).  What a *run* adds on top is
resume: a file is resumed only when this harness wrote it (schema_version
SCHEMA_VERSION), and when a point is written again (a retry on `--resume`) the
file is rewritten without its earlier row (temp file + rename), so that every
point has one row: its latest attempt.  That rewrite copies every other line
as it was, malformed ones too (read_results goes on naming them): it never
drops a line it did not mean to replace.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from .errors import UserError
from .results import COLUMNS, SCHEMA_VERSION, ResultsStore, read_results, row_key, row_line

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
        self._rewrite(self._text_without(key) + row_line(row, self._file_columns()))

    def _text_without(self, key: str) -> str:
        """The file's text, header included, less the well-formed rows of point `key`.

        Each record is copied as its own text (a quoted field may span lines);
        a malformed one is kept whatever its key: it is not known to be a row.
        """
        text = self.path.read_text(encoding="utf-8")  # as read_results reads it: same line numbers
        bad = {b.line for b in read_results(self.path).bad_lines}
        lines = list(io.StringIO(text, newline=""))
        reader = csv.reader(iter(lines))
        header = next(reader)
        kept, start = lines[:reader.line_num], reader.line_num
        for fields in reader:
            end = reader.line_num
            record, start = "".join(lines[start:end]), end
            if (end not in bad and len(fields) == len(header)
                    and row_key(dict(zip(header, fields))) == key):
                continue
            kept.append(record if record.endswith("\n") else record + "\n")
        return "".join(kept)

    def _rewrite(self, text: str) -> None:
        temp = self.path.with_name(self.path.name + ".tmp")
        with open(temp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
