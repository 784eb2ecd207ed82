"""One QEMU guest's life: its command line, launch, QMP, console, shutdown.

Every guest (the Linux fio guest, the micro-guest, the KVM probe) goes through
here.  qemu_argv() is pure and built from one small helper per feature, so the
command line can be printed, logged and tested without starting anything.  It
speaks two dialects, chosen by VMSpec.legacy (qemuinfo.QemuInfo.legacy): the
2012 qemu-kvm tree (`server,nowait`, no iothread objects, no isa-debug-exit)
and a QEMU of today (`server=on,wait=off`).  Option values that are paths or
user strings have their commas doubled in one place (opt_value).  Both keep
QEMU's default VGA (under TCG the 2012 tree wants one); option ROMs other than
VGA are switched off instead (the 2012 network ROM is slow to run under TCG
and nothing here boots from the network).

VM starts QEMU paused (-S) through proc.Process (own process group, always
reaped), connects QMP (qmp.py) and then lets the guest run, so that even
a guest that is done in a millisecond cannot exit before QMP is there.
shutdown() asks QMP to quit, waits, and only then kills.  A QEMU that exits
on its own raises QemuExited: one line with its exit code, its last words and
the log's path (the command line is in that log, not in the message).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from .accel import Accel
from .config import VariantSpec
from .errors import InfraError, UserError
from .guest import FAILURE_MARKERS, GuestImage
from .hosts.executor import LOCAL, Executor
from .qmp import QMP
from . import threads
from .util import free_port, tail

log = logging.getLogger("harness.vm")
T = TypeVar("T")
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes with the NUL; keep a margin
#: QEMU messages after which the VM is stopped for good (QEMU itself stays up).
VM_STOP_MARKERS = ("KVM internal error", "emulation failure")
DEBUG_EXIT = "isa-debug-exit,iobase=0xf4,iosize=0x04"


@dataclass(frozen=True)
class VMSpec:
    """Everything one boot needs; `legacy` picks the 2012 dialect."""

    binary: str
    accel: Accel
    memory_mb: int
    console_log: Path
    qmp_socket: Path
    legacy: bool
    vcpus: int = 1
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    boot_image: Path | None = None  # a disk image booted from IDE, kept pristine
    disk: Path | None = None  # the virtio-blk test disk (device 0)
    more_disks: tuple[Path, ...] = ()  # devices 1…N-1 of a point with N disks (devices.py)
    variant: VariantSpec | None = None  # how the test disk is attached (aio, iothread, props)
    #: more -drive options of the test disk; one named like a default replaces it
    #: (cache=directsync, werror=report: the safety tests)
    drive_options: Mapping[str, str] = field(default_factory=dict)
    ssh_port: int | None = None  # a user-mode NIC forwarding 127.0.0.1:port to :22
    qmp_port: int | None = None  # QMP on 127.0.0.1:port (a remote host) instead of qmp_socket
    debug_exit: bool = False  # isa-debug-exit, so that a guest can power off with a status
    no_reboot: bool = False
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def stderr_log(self) -> Path:
        """QEMU's own output (the command line first)."""
        return self.console_log.with_name(self.console_log.name + ".stderr")


def linux_spec(binary: str, accel: Accel, guest: GuestImage, *, console_log: Path,
               legacy: bool, memory_mb: int = 512, vcpus: int = 1, disk: Path | None = None,
               variant: VariantSpec | None = None, ssh_port: int | None = None,
               more_disks: tuple[Path, ...] = ()) -> VMSpec:
    """A Linux guest (the fio guest or a custom one) reached over SSH."""
    if memory_mb < guest.min_memory_mb:
        raise UserError(f"guest.memory_mb {memory_mb} is too small for {guest.description}: "
                        f"it needs at least {guest.min_memory_mb} MB")
    return VMSpec(binary=str(binary), accel=accel, memory_mb=memory_mb, vcpus=vcpus,
                  console_log=Path(console_log), qmp_socket=Path(console_log).with_suffix(".qmp"),
                  legacy=legacy, kernel=guest.kernel, initrd=guest.initrd, append=guest.append,
                  boot_image=guest.boot_image, disk=disk, more_disks=tuple(more_disks),
                  variant=variant, ssh_port=ssh_port if ssh_port is not None else free_port())


# ----------------------------------------------------------------- argv


def opt_value(value: str | os.PathLike) -> str:
    """A value inside a QEMU option list: commas doubled."""
    return str(value).replace(",", ",,")


def qemu_argv(spec: VMSpec, paused: bool = True) -> list[str]:
    """The full QEMU command line for spec (pure; print it with shlex.join).

    paused: start with -S, as VM.launch wants (it lets the guest run once QMP
    is connected); False for a QEMU started by hand.
    """
    return [spec.binary, *machine_args(spec.accel), *memory_args(spec), *boot_args(spec),
            *disk_args(spec), *nic_args(spec), *serial_args(spec), *display_args(),
            *qmp_args(spec), *exit_args(spec), *thread_name_args(spec), *spec.extra,
            *(["-S"] if paused else [])]


def machine_args(accel: Accel) -> list[str]:
    argv = ["-machine", f"pc,accel={accel.machine_accel}"]
    return argv + (["-cpu", accel.cpu] if accel.cpu else [])


def memory_args(spec: VMSpec) -> list[str]:
    return ["-m", str(spec.memory_mb), "-smp", str(spec.vcpus)]


def boot_args(spec: VMSpec) -> list[str]:
    if spec.boot_image is not None:
        # IDE keeps the test disk at /dev/vda; snapshot keeps the image pristine
        return ["-drive", f"file={opt_value(spec.boot_image)},if=ide,index=0,media=disk,"
                          "snapshot=on"]
    argv = ["-kernel", str(spec.kernel)] if spec.kernel is not None else []
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    if spec.append:
        argv += ["-append", spec.append]
    return argv


def disk_args(spec: VMSpec) -> list[str]:
    """The test disks, one virtio-blk-pci device each: raw, O_DIRECT, native AIO unless
    the variant or spec.drive_options say otherwise.  In our data-plane builds every
    device gets its own data-plane thread; a system QEMU's iothread is one for all
    (iothread: true or shared) or one per device (per-disk)."""
    if spec.disk is None:
        return []
    variant = spec.variant or VariantSpec(name="default", binary=spec.binary)
    paths = (spec.disk, *spec.more_disks)
    argv = iothread_args(variant.iothread_mode, len(paths))
    for index, path in enumerate(paths):
        argv += one_disk_args(variant, index, path, spec.drive_options)
    return argv


def added_disk_args(variant: VariantSpec, more_disks: tuple[Path, ...],
                    drive_options: Mapping[str, str] | None = None) -> list[str]:
    """Devices 1…N-1 as options added to a spec that attaches device 0 only (for a
    caller that cannot set more_disks): the same command line as disk_args, the
    per-disk iothreads io1… before their devices."""
    mode = variant.iothread_mode
    argv = [arg for index in range(1, len(more_disks) + 1) if mode == "per-disk"
            for arg in ("-object", f"iothread,id=io{index}")]
    for index, path in enumerate(more_disks, start=1):
        argv += one_disk_args(variant, index, path, drive_options or {})
    return argv


def iothread_args(mode: str | None, count: int) -> list[str]:
    """The iothread objects: none, io0 (shared), or io0…io<count-1> (per-disk)."""
    wanted = {None: 0, "shared": 1, "per-disk": count}[mode]
    return [arg for index in range(wanted) for arg in ("-object", f"iothread,id=io{index}")]


def one_disk_args(variant: VariantSpec, index: int, path: Path,
                  drive_options: Mapping[str, str]) -> list[str]:
    """Device `index`: its -drive (id disk<index>) and its virtio-blk-pci -device."""
    options = {"if": "none", "id": f"disk{index}", "file": path, "format": "raw",
               "cache": "none", "aio": variant.aio, **drive_options}
    drive = ",".join(f"{key}={opt_value(value)}" for key, value in options.items())
    props = {"drive": f"disk{index}"}
    if variant.iothread_mode:
        props["iothread"] = f"io{index if variant.iothread_mode == 'per-disk' else 0}"
    props.update(variant.device_props)
    device = ",".join(["virtio-blk-pci"] + [f"{k}={opt_value(v)}" for k, v in props.items()])
    return ["-drive", drive, "-device", device]


def nic_args(spec: VMSpec) -> list[str]:
    if spec.ssh_port is None:
        return []
    fwd = f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    return ["-netdev", f"user,id=n0,{fwd}", "-device", "virtio-net-pci,netdev=n0,romfile="]


def serial_args(spec: VMSpec) -> list[str]:
    # `file:` takes the rest of the value as the path, commas included
    return ["-serial", f"file:{spec.console_log}"]


def display_args() -> list[str]:
    # no window, but the default VGA device stays (no -nodefaults, no -vga none)
    return ["-display", "none"]


def qmp_args(spec: VMSpec) -> list[str]:
    server = "server,nowait" if spec.legacy else "server=on,wait=off"
    if spec.qmp_port is not None:  # on a remote host, reached through an SSH forward
        return ["-qmp", f"tcp:127.0.0.1:{spec.qmp_port},{server}"]
    return ["-qmp", f"unix:{qmp_path(spec)},{server}"]


def exit_args(spec: VMSpec) -> list[str]:
    argv = ["-no-reboot"] if spec.no_reboot else []
    if spec.debug_exit and not spec.legacy:  # the 2012 tree has no isa-debug-exit
        argv += ["-device", DEBUG_EXIT]
    return argv


def thread_name_args(spec: VMSpec) -> list[str]:
    """Named threads (`CPU 0/TCG`, `IO io0`), so threads.py can tell them apart; the
    2012 tree has no debug-threads (its data-plane thread names itself)."""
    return [] if spec.legacy else ["-name", "debug-threads=on"]


def qmp_path(spec: VMSpec) -> Path:
    """spec.qmp_socket, or a short stand-in in the temp directory.

    A unix socket path must fit in 108 bytes (result directories nest deeper)
    and must not hold a comma.  The stand-in is derived from the long path, so
    it is stable.
    """
    path = Path(spec.qmp_socket)
    if len(os.fsencode(path)) <= _SOCKET_PATH_MAX and "," not in str(path):
        return path
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"harness-qmp-{digest}.sock"


# ------------------------------------------------------------ lifecycle


class QemuExited(InfraError):
    """QEMU is gone: its exit status and the log that says why."""

    def __init__(self, message: str, status: int | None, log_file: Path):
        super().__init__(message)
        self.status = status
        self.log_file = log_file


class VM:
    """One running QEMU.  `with VM(spec) as vm:` launches and always cleans up.

    host: where QEMU runs (hosts.executor.LOCAL, or a hosts.ssh.SSHHost); the spec's
    paths are paths there.  paused: launch() leaves the guest paused once QMP
    is up, for a caller that must act between QEMU's start and the guest's
    first instruction (it sends `cont` itself).

    Hooks, for a caller that needs more than the spec says (the safety tests):
    add_args() puts options of its own on the command line, before_launch()
    registers a callable that launch() runs just before QEMU starts (it may
    still add options).  Both only before launch.
    """

    def __init__(self, spec: VMSpec, connect_timeout: float = 30.0,
                 host: Executor = LOCAL, *, paused: bool = False) -> None:
        if not host.is_local and spec.qmp_port is None:
            spec = replace(spec, qmp_port=host.free_port())  # its unix socket is out of reach
        self.spec = spec
        self.host = host
        self.paused = paused
        self.connect_timeout = connect_timeout
        self._added: list[str] = []
        self._before_launch: list[Callable[[VM], None]] = []
        # not started; launch() makes it anew from the final command line
        self.process = host.spawn(self.argv, spec.stderr_log)
        self.qmp: QMP | None = None
        self._forward = None
        self.started_at = 0.0
        self._next_stop_check = 0.0
        self.vcpu_threads: tuple[int, ...] = ()  # host thread ids of the vCPUs (QMP)

    def __enter__(self) -> "VM":
        self.launch()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # --------------------------------------------------------------- hooks

    @property
    def argv(self) -> list[str]:
        """The QEMU command line: the spec's, with what add_args() added before -S."""
        return qemu_argv(replace(self.spec, extra=(*self.spec.extra, *self._added)))

    def add_args(self, *args: str | os.PathLike) -> None:
        """More QEMU options (a device of the caller's own, say)."""
        self._not_launched("add_args")
        self._added += [str(arg) for arg in args]

    def before_launch(self, hook: Callable[["VM"], None]) -> None:
        """Run hook(vm) in launch(), after the console and QMP files are prepared
        and just before QEMU starts; hooks run in the order they were added."""
        self._not_launched("before_launch")
        self._before_launch.append(hook)

    def _not_launched(self, what: str) -> None:
        if self.process.started:
            raise RuntimeError(f"VM.{what}() after launch (QEMU has started)")

    # ------------------------------------------------------------- launch

    def launch(self) -> None:
        """Start QEMU paused, connect QMP, let the guest run (unless `paused`)."""
        spec = self.spec
        self.host.mkdir(spec.console_log.parent)
        self.host.write_bytes(spec.console_log, b"")
        self.host.unlink(qmp_path(spec))
        for hook in self._before_launch:
            hook(self)
        self.process = self.host.spawn(self.argv, spec.stderr_log)
        self.process.start()
        self.started_at = time.monotonic()
        try:
            self._connect_qmp()
            self.vcpu_threads = self._query_vcpu_threads()
            if not self.paused:
                self.qmp_cmd("cont")
        except BaseException:
            self.kill()
            raise

    def _connect_qmp(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        last: object = "socket not created"
        address = self._qmp_address()
        while True:
            self.check_alive("before QMP answered")
            if isinstance(address, tuple) or self.host.exists(address):
                qmp = QMP(address)
                try:
                    qmp.connect(timeout=max(1.0, deadline - time.monotonic()))
                    self.qmp = qmp
                    return
                except Exception as exc:  # noqa: BLE001 - retried until the deadline
                    last = exc
                    qmp.close()
            if time.monotonic() > deadline:
                raise InfraError(f"QEMU's QMP did not answer within {self.connect_timeout:.0f} s "
                                 f"({last}; log: {self.spec.stderr_log})")
            time.sleep(0.05)

    def _query_vcpu_threads(self) -> tuple[int, ...]:
        """The vCPUs' thread ids, asked while paused; () if QEMU cannot say (names remain)."""
        try:
            return threads.parse_vcpu_threads(self.qmp_cmd(threads.vcpu_query(self.spec.legacy)))
        except InfraError as exc:
            self.check_alive("after a vCPU query")
            log.debug("vCPU thread ids unknown: %s", exc)
            return ()

    def _qmp_address(self) -> Path | tuple[str, int]:
        """The unix socket here, or (on a host) a local forward to its QMP port."""
        if self.spec.qmp_port is None:
            return qmp_path(self.spec)
        if self._forward is None:
            self._forward = self.host.forward(self.spec.qmp_port)
        return ("127.0.0.1", self._forward.port)

    # ------------------------------------------------------------ watching

    def check_alive(self, when: str = "") -> None:
        """QemuExited if QEMU has exited; InfraError if it reported the VM stopped."""
        status = self.process.returncode
        if status is not None:
            self._close_qmp()
            said = tail(self.process.output(), 1)[:300]
            raise QemuExited(f"QEMU exited with code {status}{' ' + when if when else ''}"
                             f"{': ' + said if said else ''} (log: {self.spec.stderr_log})",
                             status, self.spec.stderr_log)
        now = time.monotonic()
        if now >= self._next_stop_check:
            self._next_stop_check = now + 0.5
            output = self.process.output()
            for marker in VM_STOP_MARKERS:
                if marker in output:
                    raise InfraError(f"the VM stopped: QEMU reported '{marker}' "
                                     f"(log: {self.spec.stderr_log})")

    def console(self) -> str:
        return self.host.read_bytes(self.spec.console_log).decode(errors="replace")

    def wait_until(self, done: Callable[[str], bool], timeout: float, what: str,
                   poll_s: float = 0.05) -> str:
        """Poll the console until done(console text); the text.  Raises on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.console()
            if done(text):
                return text
            self.check_alive(f"before {what}")
            if time.monotonic() > deadline:
                raise InfraError(f"no {what} within {timeout:.0f} s "
                                 f"(console: {self.spec.console_log})")
            time.sleep(poll_s)

    def wait_for_marker(self, text: str, timeout: float,
                        failures: tuple[str, ...] = FAILURE_MARKERS) -> float:
        """Wait until text shows up in the console; seconds since launch.

        A line containing one of `failures` (a kernel panic, say) ends the wait
        at once with an InfraError quoting it.
        """
        def seen(console: str) -> bool:
            for failure in failures:
                if failure in console:
                    line = next(ln for ln in console.splitlines() if failure in ln)
                    raise InfraError(f"guest boot failed: {line.strip()[:200]!r} "
                                     f"(console: {self.spec.console_log})")
            return text in console

        self.wait_until(seen, timeout, f"{text!r} from the guest", poll_s=0.1)
        return time.monotonic() - self.started_at

    # ----------------------------------------------------------------- QMP

    def qmp_cmd(self, name: str, timeout: float | None = None, **args):
        """One QMP command's return value; InfraError if QEMU is gone or answers with an error."""
        return self._qmp_call(name, lambda qmp: qmp.cmd(name, timeout, **args))

    def qmp_reply(self, name: str, timeout: float | None = None, **args) -> dict:
        """One QMP command's whole reply, {"return": ...} or {"error": ...} (a test of
        QEMU's refusals); InfraError if QEMU is gone or does not answer."""
        return self._qmp_call(name, lambda qmp: qmp.reply(name, timeout, **args))

    def _qmp_call(self, name: str, call: Callable[[QMP], T]) -> T:
        self.check_alive(f"before QMP {name}")
        if self.qmp is None:
            raise InfraError(f"QMP is not connected (log: {self.spec.stderr_log})")
        try:
            return call(self.qmp)
        except Exception as exc:  # noqa: BLE001 - timeouts, hang-ups, QMP errors
            raise InfraError(f"QMP {name} failed: {type(exc).__name__}: {exc} "
                             f"(log: {self.spec.stderr_log})") from exc

    def system_reset(self) -> None:
        self.qmp_cmd("system_reset")

    def quit(self) -> None:
        """Ask QEMU to quit (the caller waits for it to exit)."""
        if self.qmp is not None and self.process.running():
            try:
                self.qmp.cmd("quit")
            except Exception as exc:  # noqa: BLE001 - a QEMU too busy to answer is killed
                log.debug("qmp quit: %s", exc)

    # ------------------------------------------------------------- the end

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for QEMU to exit by itself (the guest powered off); its status or None."""
        status = self.process.wait(timeout)
        if status is not None:
            self._close_qmp()
        return status

    def shutdown(self, timeout: float = 20.0) -> int | None:
        """QMP quit, wait `timeout`, then SIGTERM and SIGKILL; always reaps.  The exit status."""
        if not self.process.started:
            return None
        try:
            self.quit()
            if self.process.wait(timeout) is None:
                log.warning("QEMU ignored QMP quit for %.0f s; killing it (log: %s)",
                            timeout, self.spec.stderr_log)
                self.process.stop(grace_s=5)
        finally:
            self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL of the whole group (error paths); reaps."""
        self._close_qmp()
        self.process.kill()
        if self._forward is not None:
            self._forward.close()
            self._forward = None
        if self.spec.qmp_port is None:
            self.host.unlink(qmp_path(self.spec))

    def _close_qmp(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None

    # --------------------------------------------------------- measurements

    def host_cpu_seconds(self) -> float:
        """CPU time of the QEMU process (all its threads) so far."""
        seconds = self.process.cpu_seconds()
        if seconds is None:
            raise InfraError(f"cannot read the CPU time of QEMU (log: {self.spec.stderr_log})")
        return seconds

    def thread_sample(self) -> threads.Sample | None:
        """QEMU's CPU time per thread now (threads.split of two gives the kinds)."""
        return threads.sample_on(self.host, self.pid)

    def cpu_split(self, before: threads.Sample | None, after: threads.Sample | None,
                  wall_s: float = float("nan")) -> threads.CpuSplit:
        return threads.split(before, after, self.vcpu_threads, wall_s)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process.started else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode
