"""L2 in L1: its command lines, micro-guest runs under a watchdog and their diagnosis,
the hostile cases, the fio guest's boot; a stalled L1 booted again."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TypeVar

from .. import guest as fioguest
from ..accel import KVM, KVM_NESTED
from ..config import VariantSpec
from ..devices import guest_devices
from ..errors import HarnessError, InfraError, UserError
from ..files import sha256_file
from ..fio_jobs import open_connection
from ..guest import GuestImage
from ..matrix import Workload
from ..microguest import (HOSTILE_CASES, HOSTILE_PREFIX, RESULT_PREFIX, HostileResult, MicroResult,
                          find_line, guest_cmdline, hostile_cmdline, microguest_spec, parse_result)
from ..microguest.output import HALT_MARK
from ..util import tail
from ..vm import VMSpec, linux_spec, qemu_argv

from .machine import L2_DISK, L2_QMP_PORT, L2_SSH_PORT, L1, L1Stalled
from .scripts import L2_DIR, OPT

log = logging.getLogger("harness.nested")
T = TypeVar("T")

ACCEL = KVM_NESTED.name
MICRO_WATCHDOG_S = 60.0         # an L2 micro-guest run that has not ended by then is hung
MICRO_RETRIES = 2               # hung runs retried per point (each one counted)


class L2Hang(InfraError):
    """The L2 QEMU neither finished nor reported before the watchdog."""

    def __init__(self, message: str, diagnosis: str = "") -> None:
        super().__init__(message)
        self.diagnosis = diagnosis


class L2HaltedWithInterruptsOff(L2Hang):
    """The hang of L0's emulated SVM (README, "The L2 hang"): the vCPU halted
    with IF clear, which the guest never asks for, so nothing can wake it."""


def halted_with_interrupts_off(diagnosis: str) -> bool:
    """Does the 2012 monitor's `info registers` show HLT=1 with IF (bit 9) clear?"""
    flags = re.search(r"\bEFL=([0-9a-fA-F]+)", diagnosis)
    return bool(flags) and re.search(r"\bHLT=1\b", diagnosis) is not None \
        and not int(flags.group(1), 16) & 0x200



def variant_dir(variant: VariantSpec) -> str:
    if not variant.build:
        raise UserError(f"variant {variant.name!r}: accel kvm-nested runs built variants only "
                        "(a system QEMU cannot be carried into L1)")
    return f"{OPT}/{variant.build}"


def _l2_argv(spec: VMSpec) -> list[str]:
    """vm.qemu_argv for a QEMU started by l2-start in L1: not paused, QMP on TCP (L0
    reaches it through its port forward), its pc-bios/ and a pid file."""
    argv = qemu_argv(spec, paused=False)
    cut = argv.index("-qmp")
    argv = argv[:cut] + argv[cut + 2:]
    return argv + ["-L", f"{variant_dir(spec.variant)}/pc-bios", "-pidfile", f"{L2_DIR}/qemu.pid",
                   "-qmp", f"tcp:0.0.0.0:{L2_QMP_PORT},server,nowait"]


def l2_micro_argv(variant: VariantSpec, cmdline: str, memory_mb: int = 128,
                  extra: tuple[str, ...] = ()) -> list[str]:
    """The 2012 QEMU command line in L1 for the micro-guest (pure)."""
    spec = microguest_spec(f"{variant_dir(variant)}/qemu-system-x86_64", KVM, L2_DISK, variant,
                           cmdline, f"{L2_DIR}/console.log", kernel=f"{OPT}/microguest.elf",
                           memory_mb=memory_mb, legacy=True)
    return _l2_argv(spec) + list(extra)


def l2_fio_image(login: GuestImage) -> GuestImage:
    """The fio guest as L1 holds it, logged into with the harness's key.

    `quiet`: in L2 every byte on the serial port is an exit to the 2012 QEMU in
    L1, emulated by L0; the kernel's boot log alone took 30 s of a 45 s boot."""
    return replace(login, kernel=Path(f"{OPT}/l2/vmlinuz"), initrd=Path(f"{OPT}/l2/initrd.cpio"),
                   append=f"{login.append} quiet", min_memory_mb=0)


def l2_fio_argv(variant: VariantSpec, login: GuestImage, memory_mb: int = 512,
                vcpus: int = 1, disks: int = 1) -> list[str]:
    """The 2012 QEMU command line in L1 for the fio guest (pure): vm.linux_spec's, with
    the SSH forward open to L0's user network.  `disks` test devices: L1's /dev/vda,
    /dev/vdb, … (L1 must have that many), /dev/vda, /dev/vdb, … in L2 too."""
    if disks < 1:
        raise UserError(f"the fio guest in L2 needs at least one disk, not {disks}")
    devices = [Path(device) for device in guest_devices(L2_DISK, disks)]
    spec = linux_spec(f"{variant_dir(variant)}/qemu-system-x86_64", KVM, l2_fio_image(login),
                      console_log=Path(f"{L2_DIR}/console.log"), legacy=True,
                      memory_mb=memory_mb, vcpus=vcpus, disk=devices[0],
                      more_disks=tuple(devices[1:]), variant=variant, ssh_port=L2_SSH_PORT)
    return [a.replace(f"hostfwd=tcp:127.0.0.1:{L2_SSH_PORT}-", f"hostfwd=tcp::{L2_SSH_PORT}-")
            for a in _l2_argv(spec)]


# ------------------------------------------------------------------ points in L2


@dataclass
class Attempts:
    """Watchdog bookkeeping of one point: each hung attempt and where its diagnosis is."""

    hangs: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return len(self.hangs)


def run_micro_point(l1: L1, variant: VariantSpec, workload: Workload, requests: int, wait: str,
                    console_log: Path, *, verify: bool = False, warmup: int = 0, seed: int = 1,
                    memory_mb: int = 128, watchdog_s: float = MICRO_WATCHDOG_S,
                    l2_args: tuple[str, ...] = (), guest_args: str = "",
                    kick: str = "honour") -> MicroResult:
    """One micro-guest run in L2 under L1's KVM; L2Hang when the watchdog fires.

    l2_args: more options for the 2012 QEMU (e.g. -no-kvm-irqchip); guest_args:
    more of the micro-guest's own (e.g. mode=msix-churn churn=4)."""
    cmdline = guest_cmdline(workload, requests, wait, verify=verify, seed=seed, warmup=warmup,
                            kick=kick)
    if guest_args:
        cmdline = f"{cmdline} {guest_args}"
    l1.start_l2(l2_micro_argv(variant, cmdline, memory_mb, l2_args))
    started = time.monotonic()
    state, status = l1.wait_l2(watchdog_s, RESULT_PREFIX.strip())
    wall = time.monotonic() - started
    if state == "found":          # the result is being printed; then the guest powers off
        state, status = l1.wait_l2(10)
    console = l1.l2_file("console.log")
    console_log.parent.mkdir(parents=True, exist_ok=True)
    console_log.write_text(console)
    result = _complete_result(console)
    if result is None and state == "timeout":
        raise _hang(l1, console_log, console, watchdog_s)
    if state == "timeout":        # reported, but did not power off: stop it
        l1.kill_l2()
    if result is None:
        raise InfraError(f"the L2 QEMU exited with status {status} before the micro-guest "
                         f"reported (console: {console_log}): {tail(l1.l2_file('stderr'), 3)}")
    return replace(result, exit_status=status, wall_s=wall, log=str(console_log))


def _complete_result(console: str) -> MicroResult | None:
    """The result, if its line has been printed in full."""
    tail = console[console.rfind(RESULT_PREFIX):] if RESULT_PREFIX in console else ""
    return parse_result(console) if "\n" in tail else None


def _hang(l1: L1, console_log: Path, console: str, watchdog_s: float) -> L2Hang:
    diagnosis = l1.diagnose_l2()
    l1.kill_l2()
    path = console_log.with_name(console_log.name + ".hang.txt")
    path.write_text(diagnosis + "\n")
    last = console.strip().splitlines()[-1] if console.strip() else "(nothing)"
    kind = L2HaltedWithInterruptsOff if halted_with_interrupts_off(diagnosis) else L2Hang
    return kind(f"L2 hung: no result within {watchdog_s:.0f} s (the guest's own timeout did "
                  f"not fire; last console line {last[:80]!r}); diagnosis: {path.name}", diagnosis)


def run_micro_with_watchdog(l1: L1, variant: VariantSpec, workload: Workload, requests: int,
                            wait: str, console_log: Path, attempts: Attempts,
                            retries: int = MICRO_RETRIES, **kwargs) -> MicroResult:
    """run_micro_point, run again after each disturbance the run cannot be trusted through.

    Three are caught, each recorded in attempts with a file that describes it:
    an L2 hang (the watchdog), an L1 that stopped answering (a new L1 is
    booted), and a failed result from a run during which L1 itself froze
    (its heartbeat shows the gap: the data plane's thread in L1 did not run,
    so a completion timeout says nothing about the variant).  A result that
    fails without an L1 freeze is returned as it is."""
    for attempt in range(retries + 1):
        log_file = console_log if attempt == 0 else \
            console_log.with_name(f"{console_log.name}.retry{attempt}")
        try:
            result = run_micro_point(l1, variant, workload, requests, wait, log_file, **kwargs)
            # asked in L1 too: a stall here is handled like one during the run
            freezes = [] if result.ok else l1.freezes_during_l2()
        except L2Hang as exc:
            attempts.hangs.append(str(log_file) + ".hang.txt")
            problem: InfraError = exc
        except L1Stalled as exc:
            attempts.hangs.append(_note(log_file, "l1-stall", f"{exc}\n"))
            problem = exc
            l1.restart()
        else:
            if not freezes:
                return result
            attempts.hangs.append(_note(log_file, "l1-freeze", _freeze_text(result, freezes)))
            problem = InfraError(f"L1 froze during the run ({'; '.join(freezes)}, uptime and "
                                 f"seconds), and the guest reported {result.error or 'a failure'}")
        if attempt == retries:
            # the known L0 hang keeps its type, so a test can expect exactly it
            kind = type(problem) if isinstance(problem, L2HaltedWithInterruptsOff) else InfraError
            raise kind(f"{problem} ({attempt + 1} disturbed runs; no result kept)") \
                from problem
        log.warning("run disturbed, once more (%d of %d): %s", attempt + 1, retries, problem)
    raise AssertionError("unreachable")


def _note(log_file: Path, kind: str, text: str) -> str:
    """A file beside the console log that says what disturbed the run; its path."""
    path = log_file.with_name(f"{log_file.name}.{kind}.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _freeze_text(result: MicroResult, freezes: list[str]) -> str:
    lines = [f"L1 heartbeat gaps during the run (L1 uptime s, gap s; a beat a second): "
             f"{'; '.join(freezes)}", f"the guest's result: {result.error} ({result.raw})"]
    return "\n".join(lines) + "\n"


def retry_after_l1_stall(l1: L1, run: Callable[[], T], attempts: Attempts, log_file: Path,
                         retries: int = MICRO_RETRIES) -> T:
    """run(), and again on a new L1 when it failed because L1 stopped answering.

    Any failure of run() is checked against L1 itself: if L1 still runs a
    command, the failure is run()'s own and is raised as it is.  Each stall
    is noted beside log_file (…l1-stall.txt, …l1-stall2.txt)."""
    for attempt in range(retries + 1):
        try:
            return run()
        except Exception as exc:  # noqa: BLE001 - classified below, else re-raised
            if isinstance(exc, L1Stalled) or l1.conn is None:
                stalled = True
            elif isinstance(exc, (AssertionError, UserError)):
                stalled = False
            else:
                stalled = not l1.answers()
            if not stalled or attempt == retries:
                raise
            kind = "l1-stall" if attempt == 0 else f"l1-stall{attempt + 1}"
            attempts.hangs.append(_note(log_file, kind, f"L1 stopped answering: "
                                                        f"{type(exc).__name__}: {exc}\n"))
            log.warning("%s: L1 stopped answering; a new L1, once more (%d of %d)",
                        log_file.name, attempt + 1, retries)
            l1.restart()
    raise AssertionError("unreachable")


def run_hostile_case(l1: L1, variant: VariantSpec, case: str, disk_path: Path, console_log: Path,
                     timeout: float = 60.0, memory_mb: int = 128,
                     wait_timeout_ms: int = 1000) -> HostileResult:
    """One malformed request in L2 under L1's KVM; what QEMU and the guest did.

    Same verdicts as microguest.run_hostile_case: survived = the guest reported
    and the L2 QEMU then answered query-status.  The image is hashed on L0.
    """
    if case not in HOSTILE_CASES:
        raise UserError(f"unknown hostile case {case!r}; known: {', '.join(HOSTILE_CASES)}")
    before = sha256_file(disk_path)
    l1.start_l2(l2_micro_argv(variant, hostile_cmdline(case, wait_timeout_ms), memory_mb))
    state, status = l1.wait_l2(timeout, HALT_MARK)
    console = l1.l2_file("console.log")
    guest = find_line(console, HOSTILE_PREFIX) if HOSTILE_PREFIX in console else \
        find_line(console, RESULT_PREFIX)
    survived = died = False
    qemu_state = "no-report"
    if state == "exited":
        qemu_state, died = "exited", guest is None
    elif state == "found" or guest is not None:
        try:
            qemu_state = str(l1.l2_qmp("query-status").get("status", "running"))
            survived = guest is not None
            try:
                l1.l2_qmp("quit", timeout=5)
            except (OSError, ValueError, HarnessError, EOFError):
                pass
        except (OSError, ValueError, HarnessError, EOFError):
            qemu_state = "hung"
    if l1.l2_running():
        l1.kill_l2()
    _, status = l1.wait_l2(10)
    console_log.parent.mkdir(parents=True, exist_ok=True)
    console_log.write_text(l1.l2_file("console.log"))
    stderr = l1.l2_file("stderr")
    return HostileResult(case=case, variant=variant.name, accel=ACCEL, qemu_survived=survived,
                         qemu_state=qemu_state, qemu_exit_status=status, qemu_died=died,
                         qemu_message=tail(stderr, 5, sep="\n"), guest=guest,
                         disk_changed=sha256_file(disk_path) != before, log=str(console_log),
                         stderr_log=f"(in L1) {L2_DIR}/stderr")


def boot_l2_fio(l1: L1, variant: VariantSpec, timeout: float, memory_mb: int = 512,
                vcpus: int = 1, disks: int = 1):
    """Start the fio guest in L2 and log in from L0 (two port forwards); the connection.

    disks: its test devices, L1's first ones (l2_fio_argv)."""
    l1.start_l2(l2_fio_argv(variant, l1.login, memory_mb, vcpus, disks))
    state, status = l1.wait_l2(timeout, fioguest.READY_MARKER)
    if state != "found":
        raise InfraError(f"the fio guest in L2 did not get ready ({state}, status {status}): "
                         f"{tail(l1.l2_file('console.log'), 3)} | {tail(l1.l2_file('stderr'), 3)}")
    return open_connection(l1.ports.l2_ssh, l1.login, timeout)
