"""Small file helpers shared by the modules: content hashes, atomic JSON, CSV rows appended."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Sequence


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    """Temp file + rename: a killed run leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def append_csv_row(path: Path, columns: Sequence[str], row: dict) -> None:
    """One row appended to a CSV file; the header first when the file is new."""
    new_file = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        if new_file:
            writer.writeheader()
        writer.writerow(row)
