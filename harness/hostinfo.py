"""Facts about the host for run manifests, and the test disks.

The hostname is deliberately not recorded: manifests are meant to be shared.
Test disks are preallocated and filled with real data, because reads from a
sparse file never touch the medium and would flatter every variant.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

from .errors import UserError

DISK_FORMAT = 1  # bump if the way disks are filled changes
_BLOCK = 16 << 20


def host_facts() -> dict:
    """Kernel, CPU, cores, memory and OS of this machine (no hostname)."""
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "os": os_release(),
        "kvm_device": os.path.exists("/dev/kvm"),
        "python": platform.python_version(),
    }


def cpu_times(proc: Path = Path("/proc")) -> list[int]:
    """The aggregate 'cpu' line of /proc/stat: user nice system idle iowait irq softirq steal."""
    with open(proc / "stat") as stat:
        return [int(v) for v in stat.readline().split()[1:9]]


def cpu_share(start: list[int], end: list[int]) -> dict:
    """How the host's CPUs spent the time between two cpu_times() samples, in %.

    `steal` is time the hypervisor gave to someone else (a host that is itself a VM);
    together with `busy` it tells a quiet run from a disturbed one.
    """
    delta = [b - a for a, b in zip(start, end)]
    total = sum(delta)
    if total <= 0:
        return {}
    idle = delta[3] + delta[4]
    return {"busy_pct": round(100.0 * (total - idle - delta[7]) / total, 1),
            "steal_pct": round(100.0 * delta[7] / total, 1),
            "idle_pct": round(100.0 * idle / total, 1)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def disturbers(cpu: Path = Path("/sys/devices/system/cpu")) -> list[str]:
    """What on this host could disturb a benchmark, one line each, where it can be read.

    Like `pyperf system show`: a frequency governor other than `performance`,
    turbo/boost left on (clock speed then depends on load and temperature),
    a host that is itself a VM (steal time), and a hint where nothing can be read.
    """
    notes = []
    governors = sorted({g for g in (_read(str(p)) for p in
                                    cpu.glob("cpu[0-9]*/cpufreq/scaling_governor")) if g})
    if governors and governors != ["performance"]:
        notes.append(f"CPU frequency governor {', '.join(governors)} (not 'performance': "
                     "the clock follows the load; `cpupower frequency-set -g performance`)")
    if not governors:
        notes.append("CPU frequency governor: not readable (no cpufreq: a VM, or fixed clock)")
    if _read(str(cpu / "intel_pstate/no_turbo")) == "0" or _read(str(cpu / "cpufreq/boost")) == "1":
        notes.append("turbo/boost is on: the clock depends on load and temperature")
    if _is_virtual_machine():
        notes.append("this host is a virtual machine: its hypervisor may take CPU (steal time)")
    return notes


def _is_virtual_machine() -> bool:
    """The CPU flags carry `hypervisor` (x86)."""
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("flags"):
            return "hypervisor" in line.split()
    return False


# ---------------------------------------------------------------------- disks


def ensure_space(path: Path | str, size_bytes: int) -> None:
    """UserError if the filesystem holding path cannot take a disk of size_bytes."""
    path = Path(path)
    if path.is_block_device():
        return
    have = path.stat().st_blocks * 512 if path.is_file() else 0
    need = max(0, size_bytes - have)
    parent = _existing_parent(path)
    usage = shutil.disk_usage(parent)
    if need > usage.free:
        raise UserError(f"disk {path}: needs {_gib(need)} more on the filesystem of {parent}, "
                        f"which has {_gib(usage.free)} free (make the disk smaller or move it)")


def prepare_disk(path: Path | str, size_bytes: int,
                 progress: Callable[[str], None] | None = None) -> Path:
    """A preallocated raw image filled with random data; reused if already made.

    A block device is used as it is (never overwritten) if it is large enough.
    """
    path = Path(path)
    say = progress or (lambda _msg: None)
    if path.is_block_device():
        return _check_block_device(path, size_bytes)
    if _reusable(path, size_bytes):
        return path
    ensure_space(path, size_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    say(f"filling {path} with {_gib(size_bytes)} of random data")
    started = time.monotonic()
    _fill(tmp, size_bytes, say)
    os.replace(tmp, path)
    _sidecar(path).write_text(json.dumps({"format": DISK_FORMAT, "size": size_bytes,
                                          "fill": "urandom"}) + "\n")
    say(f"{path}: ready in {time.monotonic() - started:.0f} s")
    return path


def _fill(tmp: Path, size_bytes: int, say) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            os.posix_fallocate(fd, 0, size_bytes)
        except OSError:
            pass  # not every filesystem can; the writes below allocate anyway
        written, next_report = 0, size_bytes // 4
        while written < size_bytes:
            chunk = os.urandom(min(_BLOCK, size_bytes - written))
            written += os.write(fd, chunk)
            if written >= next_report and written < size_bytes:
                say(f"  {tmp.name}: {100 * written // size_bytes}%")
                next_report += size_bytes // 4
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)


def _reusable(path: Path, size_bytes: int) -> bool:
    """Right size, fully allocated, and made by us (the sidecar says so)."""
    try:
        meta = json.loads(_sidecar(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (meta.get("format") == DISK_FORMAT and meta.get("size") == size_bytes
            and st.st_size == size_bytes and st.st_blocks * 512 >= size_bytes)


def _check_block_device(path: Path, size_bytes: int) -> Path:
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
    if size < size_bytes:
        raise UserError(f"disk {path}: the block device has {_gib(size)}, "
                        f"the config asks for {_gib(size_bytes)}")
    return path


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".harness.json")


def _existing_parent(path: Path) -> Path:
    for candidate in [path.parent, *path.parent.parents]:
        if candidate.exists():
            return candidate
    return Path("/")


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB" if size >= (1 << 30) else f"{size / (1 << 20):.0f} MiB"
