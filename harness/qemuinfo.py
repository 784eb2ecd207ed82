"""What a QEMU binary is, asked once: its version line and its dialect.

The 2012 qemu-kvm tree (version 1.0.50) and a QEMU of today differ in how some
options are spelled; vm.py asks `legacy` which one to speak.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import proc


@dataclass(frozen=True)
class QemuInfo:
    version: str  # "QEMU emulator version 7.2.22 (Debian ...)", without the copyright
    major: int | None

    @property
    def legacy(self) -> bool:
        """The 2012 dialect (QEMU 1.x, qemu-kvm): `server,nowait`, no iothread objects,
        no isa-debug-exit."""
        return "qemu-kvm" in self.version or (self.major is not None and self.major < 2)


def parse_version(text: str) -> QemuInfo:
    """QemuInfo from the output of `qemu-system-x86_64 -version`."""
    lines = (text or "").strip().splitlines()
    first = lines[0].split(", Copyright")[0].strip() if lines else "unknown"
    match = re.search(r"version (\d+)\.", first)
    return QemuInfo(first, int(match.group(1)) if match else None)


def qemu_info(binary: str | os.PathLike) -> QemuInfo:
    """Ask the binary once (per path and modification time)."""
    path = Path(binary)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return _ask(str(path), mtime)


@functools.lru_cache(maxsize=None)
def _ask(binary: str, _mtime: int) -> QemuInfo:
    result = proc.run([binary, "-version"], timeout=60, what=f"{binary} -version")
    return parse_version(result.output)
