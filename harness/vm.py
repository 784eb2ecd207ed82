"""Start, watch and stop one QEMU guest.

qemu_argv() is pure so that the exact command line can be printed, logged and
tested without starting anything.  It speaks two dialects: the 2012 qemu-kvm
tree (our builds: `server,nowait`, no iothread objects) and a current system
QEMU (`server=on,wait=off`, optional iothread).  Both get a default VGA
(option ROMs other than VGA are switched off instead: under TCG the 2012
network ROM is slow to run and nothing here boots from the network).

VM is a context manager: QEMU runs in its own process group and is always
reaped on exit, Ctrl-C included.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from .config import VariantSpec
from . import proc
from .errors import InfraError, UserError
from .guest import FAILURE_MARKERS, GuestImage
from .proc import kill_group

log = logging.getLogger("harness.vm")
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes with the NUL; keep a margin


@dataclass(frozen=True)
class VMSpec:
    binary: str
    accel: str  # "kvm" | "tcg"
    memory_mb: int
    vcpus: int
    guest: GuestImage
    disk_path: Path | None
    variant: VariantSpec
    ssh_port: int
    qmp_socket: Path
    console_log: Path
    legacy: bool | None = None  # the 2012 dialect; None: a built variant is legacy

    @property
    def is_legacy(self) -> bool:
        return self.variant.build is not None if self.legacy is None else self.legacy


def is_legacy_binary(binary: str) -> bool:
    """True for the 2012 dialect (QEMU 1.x, qemu-kvm): decided from `-version`."""
    out = proc.run([binary, "-version"], timeout=30, what=f"{binary} -version").output
    match = re.search(r"version (\d+)\.", out)
    return "qemu-kvm" in out or (match is not None and int(match.group(1)) < 2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def qemu_argv(spec: VMSpec) -> list[str]:
    """The full QEMU command line for spec (pure; print it with shlex.join)."""
    argv = [spec.binary, "-machine", f"pc,accel={spec.accel}",
            "-m", str(spec.memory_mb), "-smp", str(spec.vcpus)]
    argv += _boot_args(spec.guest)
    if spec.disk_path is not None:
        argv += _disk_args(spec)
    argv += _net_args(spec)
    server = "server,nowait" if spec.is_legacy else "server=on,wait=off"
    argv += ["-serial", f"file:{spec.console_log}", "-display", "none",
             "-qmp", f"unix:{qmp_path(spec)},{server}"]
    return argv


def qmp_path(spec: VMSpec) -> Path:
    """spec.qmp_socket, or a short stand-in in the temp directory if it is too long.

    A unix socket path must fit in 108 bytes; result directories nest deeper
    than that.  The stand-in is derived from the long path, so it is stable.
    """
    path = Path(spec.qmp_socket)
    if len(os.fsencode(path)) <= _SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"harness-qmp-{digest}.sock"


def _boot_args(guest: GuestImage) -> list[str]:
    if guest.boot_image is not None:
        # IDE keeps the test disk at /dev/vda; snapshot keeps the image pristine
        return ["-drive", f"file={guest.boot_image},if=ide,index=0,media=disk,snapshot=on"]
    argv = ["-kernel", str(guest.kernel)]
    if guest.initrd is not None:
        argv += ["-initrd", str(guest.initrd)]
    if guest.append:
        argv += ["-append", guest.append]
    return argv


def _disk_args(spec: VMSpec) -> list[str]:
    variant = spec.variant
    drive = f"if=none,id=disk0,file={spec.disk_path},format=raw,cache=none,aio={variant.aio}"
    props = {"drive": "disk0", **variant.device_props}
    argv = []
    if variant.iothread:
        argv += ["-object", "iothread,id=io0"]
        props["iothread"] = "io0"
    device = ",".join(["virtio-blk-pci"] + [f"{k}={v}" for k, v in props.items()])
    return argv + ["-drive", drive, "-device", device]


def _net_args(spec: VMSpec) -> list[str]:
    fwd = f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    return ["-netdev", f"user,id=n0,{fwd}", "-device", "virtio-net-pci,netdev=n0,romfile="]


class VM:
    """One running QEMU.  `with VM(spec) as vm:` launches and always cleans up."""

    def __init__(self, spec: VMSpec, connect_timeout: float = 30.0) -> None:
        self.spec = spec
        self.argv = qemu_argv(spec)
        self.connect_timeout = connect_timeout
        self.proc: subprocess.Popen | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.started_at = 0.0
        self._stderr_path = spec.console_log.with_name(spec.console_log.name + ".stderr")

    def __enter__(self) -> "VM":
        self.launch()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------ lifecycle

    def launch(self) -> None:
        """Start QEMU in its own process group and open QMP (a no-op if running)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        spec = self.spec
        if spec.memory_mb < spec.guest.min_memory_mb:
            raise UserError(f"guest.memory_mb {spec.memory_mb} is too small for "
                            f"{spec.guest.description}: it needs at least "
                            f"{spec.guest.min_memory_mb} MB")
        spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        spec.console_log.unlink(missing_ok=True)
        qmp_path(spec).unlink(missing_ok=True)
        log.info("qemu: %s", shlex.join(self.argv))
        with open(self._stderr_path, "wb") as err:
            err.write(f"$ {shlex.join(self.argv)}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.monotonic()
        try:
            self._connect_qmp()
            status = self.qmp.cmd("query-status")
            log.debug("qmp query-status: %s", status)
        except BaseException:
            self.kill()
            raise

    def _connect_qmp(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        while True:
            self.check_alive()
            if qmp_path(self.spec).exists():
                qmp = QEMUMonitorProtocol(str(qmp_path(self.spec)))
                try:
                    qmp.connect(negotiate=True)
                    self.qmp = qmp
                    return
                except Exception as exc:  # noqa: BLE001 - retried until the deadline
                    last = exc
                    qmp.close()
            else:
                last = "socket not created"
            if time.monotonic() > deadline:
                self.kill()
                raise InfraError(f"cannot connect to QMP at {qmp_path(self.spec)} within "
                                 f"{self.connect_timeout:.0f} s ({last}); {self._where()}")
            time.sleep(0.1)

    def check_alive(self) -> None:
        """Raise InfraError if QEMU has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self._close_qmp()
            raise InfraError(f"QEMU exited early with code {code}: {self._where()}"
                             f"{self._stderr_tail()}")

    def wait_for_marker(self, text: str, timeout: float,
                        failures: tuple[str, ...] = FAILURE_MARKERS) -> float:
        """Wait until text shows up in the console log; seconds since launch.

        A line containing one of `failures` (a kernel panic, say) ends the wait
        at once with an InfraError quoting it.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            console = _read(self.spec.console_log)
            if text in console:
                return time.monotonic() - self.started_at
            for failure in failures:
                if failure in console:
                    line = next(ln for ln in console.splitlines() if failure in ln)
                    raise InfraError(f"guest boot failed: {line.strip()!r}; {self._where()}")
            if time.monotonic() > deadline:
                raise InfraError(f"guest did not print {text!r} within {timeout:.0f} s; "
                                 f"{self._where()}")
            time.sleep(0.1)

    def system_reset(self) -> None:
        self._qmp_cmd("system_reset")

    def shutdown(self, timeout: float = 20.0) -> int | None:
        """QMP quit, then SIGTERM, then SIGKILL; always reaps.  Returns the exit code."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None and self.qmp is not None:
                try:
                    self.qmp.cmd("quit")
                except Exception as exc:  # noqa: BLE001 - QEMU may hang up while answering
                    log.debug("qmp quit: %s", exc)
            if not self._wait(timeout):
                log.warning("QEMU ignored QMP quit for %.0f s; sending SIGTERM", timeout)
                kill_group(self.proc, 15)
                if not self._wait(5):
                    kill_group(self.proc, 9)
                    self.proc.wait()
        finally:
            self._close_qmp()
            if self.proc.poll() is None:
                kill_group(self.proc, 9)
                self.proc.wait()
            qmp_path(self.spec).unlink(missing_ok=True)
        return self.proc.returncode

    def kill(self) -> None:
        """Immediate SIGKILL of the whole group (error paths)."""
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc, 9)
            self.proc.wait()
        self._close_qmp()

    # ------------------------------------------------------------ measurements

    def host_cpu_seconds(self) -> float:
        """utime+stime of the QEMU process (all its threads) so far."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError as exc:
            raise InfraError(f"cannot read CPU time of QEMU pid {self.proc.pid}: {exc}") from exc
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # ---------------------------------------------------------------- helpers

    def _qmp_cmd(self, name: str, **args):
        self.check_alive()
        if self.qmp is None:
            raise InfraError(f"QMP is not connected; {self._where()}")
        try:
            return self.qmp.cmd(name, **args)
        except Exception as exc:
            raise InfraError(f"QMP {name} failed: {exc}; {self._where()}") from exc

    def _wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _close_qmp(self) -> None:
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
            self.qmp = None

    def _where(self) -> str:
        return (f"command: {shlex.join(self.argv)}; console log: {self.spec.console_log}; "
                f"QEMU output: {self._stderr_path}")

    def _stderr_tail(self) -> str:
        try:
            lines = self._stderr_path.read_text(errors="replace").strip().splitlines()[1:]
        except OSError:
            return ""
        return f"; QEMU said: {' | '.join(lines[-3:])}" if lines else ""


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
