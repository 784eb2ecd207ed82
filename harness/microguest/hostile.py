"""Malformed requests: one per boot, and what QEMU did with it.

Survival means the guest reported and QEMU then answered QMP query-status;
if QEMU exited on its own, its exit status and last words are recorded
instead.  The image is hashed before and after (a request that should have
been refused must not have written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..accel import Accel
from ..config import VariantSpec
from ..errors import InfraError, UserError
from ..files import sha256_file
from ..util import tail
from ..vm import VM, QemuExited
from .cmdline import DEFAULT_MEMORY_MB, hostile_cmdline, microguest_spec
from .elf import build_microguest
from .output import HALT_MARK, HOSTILE_PREFIX, RESULT_PREFIX, find_line

#: One malformed request per boot; see hostile.c beside this file.
HOSTILE_CASES = (
    "addr-outside-ram",      # data buffer at the first byte past guest RAM (4 KiB)
    "addr-outside-ram-8k",   # the same, 8 KiB (more than one bounce page)
    "addr-wrap",             # addr 0xfffffffffffff000, len 0x2000: addr + len wraps
    "len-huge",              # data len 0xfffff000 from a RAM address
    "desc-loop",             # hdr -> data -> hdr ...
    "next-out-of-range",     # desc.next = queue size + 7
    "head-out-of-range",     # avail ring entry = queue size + 3
    "avail-idx-jump",        # avail idx advanced by queue size + 5
    "zero-length",           # data descriptor of length 0
    "header-short",          # request header of 8 bytes
    "status-readonly",       # status (and data) descriptors not device-writable
    "unknown-type",          # type 0x11 with a data buffer (bit 0 = OUT)
    "type-barrier-out",      # type 0x80000001: legacy BARRIER | OUT
    "indirect-in-indirect",  # an indirect table holding an INDIRECT descriptor
    "indirect-bad-size",     # indirect table length not a multiple of 16
    "too-many-descs",        # indirect chain of 1100 descriptors (> ring, > 1024)
)
HOSTILE_COLUMNS = ("case", "variant", "accel", "qemu_survived", "qemu_state",
                   "qemu_exit_status", "qemu_died", "qemu_message", "observed", "guest_status",
                   "device_ok", "after_reset", "canary_ok", "disk_changed", "log")


@dataclass(frozen=True)
class HostileResult:
    case: str
    variant: str
    accel: str
    qemu_survived: bool          # alive after the request and answered query-status
    qemu_state: str              # running / exited / hung / no-report
    qemu_exit_status: int | None  # real exit status (after our quit when it survived)
    qemu_died: bool              # exited by itself before the guest could report
    qemu_message: str            # QEMU's output (its error message when it died)
    guest: dict[str, Any] | None  # the MICROGUEST-HOSTILE line
    disk_changed: bool           # image hash differs before/after
    log: str
    stderr_log: str

    @property
    def observed(self) -> str:
        if self.guest is None:
            return "qemu-exited" if self.qemu_died else "no-report"
        return str(self.guest.get("verdict") or self.guest.get("observed", ""))

    def as_row(self) -> dict[str, Any]:
        """A flat row for hostile.csv (columns HOSTILE_COLUMNS)."""
        guest = self.guest or {}
        return {
            "case": self.case, "variant": self.variant, "accel": self.accel,
            "qemu_survived": self.qemu_survived, "qemu_state": self.qemu_state,
            "qemu_exit_status": self.qemu_exit_status, "qemu_died": self.qemu_died,
            "qemu_message": " | ".join(self.qemu_message.splitlines()),
            "observed": self.observed,
            "guest_status": guest.get("status"), "device_ok": guest.get("device_ok"),
            "after_reset": guest.get("after_reset"), "canary_ok": guest.get("canary_ok"),
            "disk_changed": self.disk_changed, "log": self.log,
        }


def _reported(text: str) -> bool:
    # a RESULT line instead: the guest failed before the case ran
    return (HOSTILE_PREFIX in text and HALT_MARK in text) or RESULT_PREFIX in text


def run_hostile_case(binary: str | os.PathLike, accel: Accel | str, disk_path: str | os.PathLike,
                     variant: VariantSpec, case: str, console_log: str | os.PathLike,
                     timeout: float, *, memory_mb: int = DEFAULT_MEMORY_MB,
                     kernel: str | os.PathLike | None = None, wait_timeout_ms: int = 1000,
                     legacy: bool | None = None) -> HostileResult:
    """Boot the micro-guest with one malformed request and record what happened."""
    if case not in HOSTILE_CASES:
        raise UserError(f"unknown hostile case {case!r}; known: {', '.join(HOSTILE_CASES)}")
    disk_path = Path(disk_path)
    before = sha256_file(disk_path)
    spec = microguest_spec(binary, accel, disk_path, variant,
                           hostile_cmdline(case, wait_timeout_ms), console_log,
                           kernel=kernel or build_microguest(), memory_mb=memory_mb,
                           legacy=legacy)
    guest, state, survived, died = None, "no-report", False, False
    with VM(spec) as vm:
        try:
            text = vm.wait_until(_reported, timeout, "hostile report", poll_s=0.02)
            guest = find_line(text, HOSTILE_PREFIX) if HOSTILE_PREFIX in text \
                else find_line(text, RESULT_PREFIX)
        except QemuExited:
            guest = find_line(vm.console(), HOSTILE_PREFIX)
            died, state = guest is None, "exited"
        except InfraError:
            pass                                 # no report in time: ask QMP below
        if vm.process.running():
            try:
                state = str(vm.qmp_cmd("query-status").get("status", "running"))
                survived = guest is not None
            except InfraError:
                state = "hung"
        exit_status = vm.shutdown(timeout=10)
        message = tail(vm.process.output(), 5, sep="\n")
    return HostileResult(
        case=case, variant=variant.name, accel=str(spec.accel), qemu_survived=survived,
        qemu_state=state, qemu_exit_status=exit_status, qemu_died=died,
        qemu_message=message, guest=guest, disk_changed=sha256_file(disk_path) != before,
        log=str(spec.console_log), stderr_log=str(spec.stderr_log))
