"""Compile the micro-guest's C sources (this directory) into a multiboot ELF, once."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from ..errors import InfraError, UserError
from ..paths import cache_dir
from ..proc import run
from ..util import tail

log = logging.getLogger("harness.microguest")

SOURCE_DIR = Path(__file__).resolve().parent
CFLAGS = ("-m32", "-march=i686", "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie",
          "-O2", "-g0", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-mno-sse", "-mno-mmx", "-mno-80387", "-std=gnu11")
LDFLAGS = ("-static", "-no-pie", "-Wl,-T,microguest.ld", "-Wl,--build-id=none",
           "-Wl,-z,max-page-size=4096", "-Wl,--no-warn-rwx-segments")
LINKER_SCRIPT = "microguest.ld"


def compiled_sources() -> list[str]:
    """boot.S first (the multiboot header), then every C file of the directory."""
    return ["boot.S", *sorted(p.name for p in SOURCE_DIR.glob("*.c"))]


def hashed_sources() -> list[Path]:
    """Everything the ELF depends on: sources, headers and the linker script."""
    return sorted(p for p in SOURCE_DIR.iterdir()
                  if p.suffix in (".S", ".c", ".h") or p.name == LINKER_SCRIPT)


def _source_hash(cc: str) -> str:
    digest = hashlib.sha256()
    digest.update(" ".join((cc, *CFLAGS, *LDFLAGS)).encode())
    for path in hashed_sources():
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_microguest(cc: str = "gcc") -> Path:
    """Compile the micro-guest (cached by a hash of its sources); returns the ELF."""
    if not shutil.which(cc):
        raise UserError(f"the micro-guest needs a C compiler: {cc} not found "
                        "(install the Debian package gcc)")
    out_dir = cache_dir() / "microguest" / _source_hash(cc)
    elf = out_dir / "microguest.elf"
    if elf.is_file():
        return elf
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"microguest.elf.tmp{os.getpid()}"
    result = run([cc, *CFLAGS, *LDFLAGS, "-o", tmp, *compiled_sources()], cwd=SOURCE_DIR,
                 timeout=120, check=False, what="build micro-guest")
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = next((line for line in result.output.splitlines() if "error" in line.lower()),
                     tail(result.output, 1))
        raise UserError(f"cannot build the 32-bit micro-guest with {cc} ({first.strip()}); "
                        "install the Debian package gcc-multilib")
    _check_elf(tmp)
    tmp.replace(elf)
    log.info("built micro-guest %s", elf)
    return elf


def _check_elf(path: Path) -> None:
    data = path.read_bytes()[:8192]
    magic = (0x1BADB002).to_bytes(4, "little")
    if data[:5] != b"\x7fELF\x01" or magic not in data:
        raise InfraError(f"micro-guest build produced no 32-bit multiboot ELF: {path}")
