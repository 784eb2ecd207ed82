"""The micro-guest's command line (QEMU -append) and the VM it boots in.

Guest command line, all optional::

    rw=randread|randwrite|read|write|randrw  bs=4096  qd=16  n=20000  warmup=0
    seq=0|1  rwmix=50  wait=poll|irq|intx|poll-irq-on  kick=honour|every  verify=0|1  seed=1
    mode=bench|hostile  case=NAME  timeout_ms=10000  halt=0|1  idle=hlt|spin  disks=1

disks=N (1..8, bench mode only): drive the first N virtio-blk devices in PCI scan
order, n requests and qd in flight on each; the VM must have N attached.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..accel import Accel, accel_named
from ..config import KICK_MODES, WAIT_MODES, VariantSpec, parse_size
from ..errors import UserError
from ..matrix import Workload
from ..qemuinfo import qemu_info
from ..vm import VMSpec

#: Exit statuses of a clean guest power-off: ACPI S5, isa-debug-exit ok/failed.
CLEAN_EXITS = (0, 33, 35)
DEFAULT_MEMORY_MB = 128
#: The most virtio-blk devices the guest drives at once (MG_MAX_DISKS in hw.h).
MAX_DISKS = 8


def guest_cmdline(workload: Workload, requests: int, wait: str = "poll", *,
                  verify: bool = False, seed: int = 1, warmup: int = 0,
                  timeout_ms: int = 10000, kick: str = "honour", disks: int = 1) -> str:
    """The micro-guest's -append string for one benchmark point (disks: how many
    virtio-blk devices it drives; the line names it only when more than one)."""
    if wait not in WAIT_MODES:
        raise UserError(f"micro-guest wait mode {wait!r}: use one of {', '.join(WAIT_MODES)}")
    if kick not in KICK_MODES:
        raise UserError(f"micro-guest kick mode {kick!r}: use one of {', '.join(KICK_MODES)}")
    if workload.numjobs != 1:
        raise UserError(f"micro-guest: numjobs={workload.numjobs}; the legacy virtio-blk device "
                        "has one queue, so the micro-guest runs numjobs 1 only")
    if not 1 <= disks <= MAX_DISKS:
        raise UserError(f"micro-guest: disks={disks}; it drives 1 to {MAX_DISKS} devices")
    bs = parse_size(workload.bs)
    return (f"rw={workload.rw} bs={bs} qd={workload.iodepth} n={requests} warmup={warmup} "
            f"wait={wait} kick={kick} verify={int(verify)} seed={seed} timeout_ms={timeout_ms}"
            + (f" disks={disks}" if disks != 1 else ""))


def hostile_cmdline(case: str, wait_timeout_ms: int = 1000, halt: bool = True) -> str:
    """One malformed request; with halt the guest halts instead of powering off, so
    that QMP can be asked whether QEMU is still healthy."""
    return f"mode=hostile case={case} timeout_ms={wait_timeout_ms}{' halt=1' if halt else ''}"


def microguest_spec(binary: str | os.PathLike, accel: Accel | str, disk: str | os.PathLike | None,
                    variant: VariantSpec | None, cmdline: str, console_log: str | os.PathLike, *,
                    kernel: str | os.PathLike, memory_mb: int = DEFAULT_MEMORY_MB,
                    legacy: bool | None = None) -> VMSpec:
    """The VM that boots the micro-guest on the test disk.

    legacy: the 2012 dialect, asked from the binary when not given.  A QEMU of
    today gets isa-debug-exit, so that the guest powers off with a status; the
    2012 tree has no such device and the guest powers off through ACPI.
    """
    accel = accel_named(accel) if isinstance(accel, str) else accel
    if legacy is None:
        legacy = qemu_info(binary).legacy
    console_log = Path(console_log)
    return VMSpec(binary=str(binary), accel=accel, memory_mb=memory_mb, console_log=console_log,
                  qmp_socket=console_log.with_suffix(".qmp"), legacy=legacy, kernel=Path(kernel),
                  append=cmdline, disk=Path(disk) if disk is not None else None, variant=variant,
                  debug_exit=True, no_reboot=True)
