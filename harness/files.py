"""Small file helpers shared by the modules: content hashes, atomic JSON, CSV rows appended."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Sequence


_remembered: dict[tuple[str, int, int], str] = {}
_remembered_lock = threading.Lock()


def sha256_file(path: Path, remember: bool = False) -> str:
    """The sha256 of a file's content, in hex.

    remember: keep the digest for the process, keyed by real path, size and
    mtime, for a caller that hashes the same large files again and again
    (hosts.ssh.SSHHost ships the same binaries to every host).  Off by default: a
    file rewritten in place within one mtime tick would look unchanged, and the
    hostile cases compare a disk image before and after a run.
    """
    if not remember:
        return _sha256(path)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _remembered_lock:
        if key in _remembered:
            return _remembered[key]
    digest = _sha256(path)
    with _remembered_lock:
        _remembered[key] = digest
    return digest


def _sha256(path: Path) -> str:
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
