"""L1: Debian's QEMU under TCG with emulated SVM boots the L1 image; the harness
reaches it over SSH, L2's QMP over a forwarded TCP port."""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import guest as fioguest
from ..accel import KVM_NESTED, l0_qemu
from ..errors import HarnessError, InfraError
from ..fio_jobs import open_connection
from ..hosts.sshcmd import run_interruptible
from ..qmp import QMP
from ..util import free_port
from ..vm import VM, VMSpec, opt_value

from .image import L1Image
from .scripts import L1_DIAGNOSE, L1_FREEZES, L1_KVM, L1_READY, L2_DIR

log = logging.getLogger("harness.nested")

L1_MEMORY_MB = 2560
L2_SSH_PORT = 2222              # in L1, forwarded by the 2012 QEMU to L2's port 22
L2_QMP_PORT = 4444              # in L1: the 2012 QEMU's QMP on TCP
L2_DISK = "/dev/vda"            # in L1: the test image (more disks: /dev/vdb, …)
L1_ANSWER_S = 30.0              # an L1 that does not run `true` within this has stalled


class L1Unusable(InfraError):
    """L1 booted but has no /dev/kvm (kvm-amd did not load): nothing to run."""


class L1Stalled(InfraError):
    """L1 stopped answering SSH: a command in it timed out or its connection dropped.

    Seen at random (about one L2 run in ten here, every variant): L1's timer
    and device interrupts arrive late or not at all while its vCPU runs L2
    under L0's emulated SVM, and L1's network can stay dead afterwards.  The
    cure is a new L1 (L1.restart) and the point run again."""



@dataclass(frozen=True)
class L1Ports:
    ssh: int        # L0 → L1:22
    l2_ssh: int     # L0 → L1:2222 → L2:22
    l2_qmp: int     # L0 → L1:4444 (the 2012 QEMU's QMP)


def l1_spec(binary: str, image: L1Image, disk_path: Path | Sequence[Path], ports: L1Ports,
            console_log: Path, qmp_socket: Path, vcpus: int = 1, memory_mb: int = L1_MEMORY_MB,
            kernel_args: str = "") -> VMSpec:
    """The L0 VM that boots L1 (pure): accel KVM_NESTED's machine accel and cpu.

    L0's cache is writeback: L1 sees a block device it can open O_DIRECT, and
    the image file may sit on a tmpfs.  The NIC forwards three ports.  Both
    devices run without EVENT_IDX: L1 loses an interrupt now and then while
    it runs L2 (L1Stalled), and with EVENT_IDX a device that has notified
    once does not notify again until the ring index comes round, so one lost
    interrupt would end L1's network for good; without it, the next packet
    or completion notifies again.
    """
    fwd = (f"hostfwd=tcp:127.0.0.1:{ports.ssh}-:22,"
           f"hostfwd=tcp:127.0.0.1:{ports.l2_ssh}-:{L2_SSH_PORT},"
           f"hostfwd=tcp:127.0.0.1:{ports.l2_qmp}-:{L2_QMP_PORT}")
    disks = [disk_path] if isinstance(disk_path, (str, os.PathLike)) else list(disk_path)
    extra: tuple[str, ...] = ()
    for index, path in enumerate(disks):  # /dev/vda, /dev/vdb, … in L1
        extra += ("-drive", f"if=none,id=disk{index},file={opt_value(Path(path))},format=raw,"
                            "cache=writeback,aio=threads",
                  "-device", f"virtio-blk-pci,drive=disk{index},event_idx=off")
    extra += ("-netdev", f"user,id=n0,{fwd}",
              "-device", "virtio-net-pci,netdev=n0,romfile=,event_idx=off")
    return VMSpec(binary=binary, accel=KVM_NESTED, memory_mb=memory_mb, vcpus=vcpus,
                  console_log=Path(console_log), qmp_socket=Path(qmp_socket), legacy=False,
                  kernel=image.kernel, initrd=image.initrd,
                  append=f"{fioguest.APPEND} {kernel_args}".strip(), extra=extra)


class L1:
    """One booted L1: `with L1(image, disk, log) as l1:` boots it and always stops it."""

    def __init__(self, image: L1Image, disk_path: Path | Sequence[Path], console_log: Path, *,
                 vcpus: int = 1, memory_mb: int = L1_MEMORY_MB, boot_timeout: float = 180.0,
                 kernel_args: str = "") -> None:
        self.image = image
        self.ports = L1Ports(free_port(), free_port(), free_port())
        self.console_log = Path(console_log)
        self.boot_timeout = boot_timeout
        self.login = fioguest.prepare_fio_guest()   # same key for L1 and L2 (cached)
        qmp = Path(tempfile.gettempdir()) / f"harness-l1-{os.getpid()}-{self.ports.ssh}.sock"
        self.spec = l1_spec(l0_qemu(), image, disk_path, self.ports, self.console_log,
                            qmp, vcpus, memory_mb, kernel_args)
        self.vm = VM(self.spec)
        self.conn = None
        self.boot_seconds = float("nan")
        self.restarts = 0

    def __enter__(self) -> "L1":
        self.boot()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def boot(self) -> float:
        """Start L1, wait for its ready line and log in; seconds from launch to SSH."""
        self.vm.launch()
        try:
            self.vm.wait_for_marker(L1_READY, self.boot_timeout)
            kvm_line = _line_with(self.vm.console(), L1_KVM)
            if not kvm_line.startswith(f"{L1_KVM} ok"):
                raise L1Unusable(f"L1 has no /dev/kvm ({kvm_line or 'no KVM line'}); "
                                 f"L1 console: {self.console_log}")
            self.conn = open_connection(self.ports.ssh, self.login, self.boot_timeout)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - self.vm.started_at
        return self.boot_seconds

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.vm.kill()

    def restart(self) -> float:
        """A new L1 from the same image and disk, after L1Stalled; seconds to SSH.

        The stalled L1's console is kept beside the new one (…console.log.stalledN)."""
        self.close()
        self.restarts += 1
        if self.console_log.exists():
            self.console_log.replace(self.console_log.with_name(
                f"{self.console_log.name}.stalled{self.restarts}"))
        log.warning("L1 stopped answering: booting a new L1 (restart %d)", self.restarts)
        self.vm = VM(self.spec)
        return self.boot()

    def ensure_up(self) -> None:
        """Boot L1 again if an earlier command found it stalled."""
        if self.conn is None:
            self.restart()

    def answers(self) -> bool:
        """Whether L1 still runs a command over SSH (False: it has stalled)."""
        if self.conn is None:
            return False
        try:
            self.sh("true", timeout=L1_ANSWER_S)
        except InfraError:
            return False
        return True

    def freezes_during_l2(self) -> list[str]:
        """L1's heartbeat gaps since the last l2-start: "UPTIME_S GAP_S" each."""
        out = self.sh(f"tail -n +$(( $(cat {L2_DIR}/freezes.at-start) + 1 )) {L1_FREEZES}",
                      check=False)
        return [line.strip() for line in out.splitlines() if line.strip()]

    # -------------------------------------------------------------- commands in L1

    def sh(self, command: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run a shell command in L1; its stdout (stderr appended when it fails).

        A channel that closes without an exit status (-1; seen now and then
        with dropbear under TCG) is run once more: every command here may
        be repeated."""
        if self.conn is None:
            raise InfraError(f"L1 is not booted, or stopped answering earlier; L1 console: "
                             f"{self.console_log}")
        for _attempt in range(2):
            try:
                result = run_interruptible(self.conn, command, timeout)
            except Exception as exc:  # noqa: BLE001 - timeouts, dropped connections
                # L1 itself stopped answering (seen under a heavily loaded host with
                # -smp 2): the next command would wait on a dead transport
                self.conn.close()
                self.conn = None
                self.vm.check_alive()
                raise L1Stalled(f"L1 stopped answering ({type(exc).__name__}): {command[:200]}; "
                                f"L1 console: {self.console_log}") from exc
            if result.exited != -1:
                break
            log.warning("command in L1 ended without an exit status; new SSH connection, "
                        "once more: %s", command[:80])
            self._reconnect()
        if check and result.exited != 0:
            raise InfraError(f"command in L1 exited {result.exited}: {command[:200]}: "
                             f"{(result.stderr or result.stdout).strip()[-400:]}")
        return result.stdout

    def _reconnect(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - it is the broken one
            pass
        self.conn = open_connection(self.ports.ssh, self.login, 60)

    def trace_kvm(self, on: bool = True, buffer_kb: int = 2048) -> None:
        """L1's kvm tracepoints into a ring buffer (diagnose_l2 prints its tail)."""
        t = "/sys/kernel/tracing"
        self.sh(f"echo {buffer_kb} > {t}/buffer_size_kb; echo > {t}/trace; "
                f"echo {int(on)} > {t}/events/kvm/enable; echo {int(on)} > {t}/tracing_on")

    def set_halt_poll_ns(self, value: int) -> None:
        self.sh(f"echo {int(value)} > /sys/module/kvm/parameters/halt_poll_ns")

    # -------------------------------------------------------------- the L2 QEMU

    def start_l2(self, argv: list[str]) -> None:
        """Start the 2012 QEMU in L1 in the background (its files in L2_DIR)."""
        self.sh(f"l2-start {L2_DIR} {shlex.join(argv)}")

    def wait_l2(self, timeout: float, pattern: str | None = None) -> tuple[str, int | None]:
        """("exited", status) | ("found", None) | ("timeout", None), waited for inside L1."""
        args = f"{L2_DIR} {int(max(1, timeout))}" + (f" {shlex.quote(pattern)}" if pattern else "")
        out = self.sh(f"l2-wait {args}", timeout=timeout + 60).strip().split()
        if not out:
            raise InfraError("l2-wait in L1 printed nothing")
        if out[0] == "exited":
            return "exited", int(out[1]) if len(out) > 1 and out[1].lstrip("-").isdigit() else None
        return out[0], None

    def l2_file(self, name: str) -> str:
        return self.sh(f"cat {L2_DIR}/{name} 2>/dev/null", check=False)

    def l2_running(self) -> bool:
        return self.sh(f"test -e {L2_DIR}/rc || echo running", check=False).strip() == "running"

    def kill_l2(self, wait_s: float = 10.0) -> None:
        self.sh(f"kill -9 $(cat {L2_DIR}/qemu.pid 2>/dev/null) 2>/dev/null; "
                f"n=0; while [ ! -e {L2_DIR}/rc ] && [ $n -lt {int(wait_s * 10)} ]; do "
                f"usleep 100000; n=$((n+1)); done", check=False, timeout=wait_s + 30)

    def l2_qmp(self, command: str, timeout: float = 10.0, **arguments):
        """One QMP command to the L2 QEMU (through L0's port forward); its return value.

        QMPError (an InfraError) for an error reply; OSError when L2's monitor
        does not answer.  A `quit` that QEMU answers by hanging up is done."""
        with QMP(("127.0.0.1", self.ports.l2_qmp), timeout) as qmp:
            return qmp.cmd(command, **arguments)

    def hmp(self, command: str, timeout: float = 10.0) -> str:
        return str(self.l2_qmp("human-monitor-command", timeout, **{"command-line": command}))

    def diagnose_l2(self) -> str:
        """What a stopped L2 looks like from every layer, as text for the log."""
        parts = []
        for what in ("info status", "info registers", "info cpus"):
            try:
                parts.append(f"== L2 monitor: {what}\n{self.hmp(what)}")
            except (HarnessError, OSError, ValueError) as exc:
                parts.append(f"== L2 monitor: {what}: no answer ({type(exc).__name__}: {exc})")
        parts.append("== L1: " + self.sh(L1_DIAGNOSE, timeout=60, check=False))
        return "\n".join(parts)


def _line_with(text: str, marker: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if marker in ln), "")


