"""accel kvm-nested: the variants under KVM, inside an L1 Linux that runs under TCG.

This machine's /dev/kvm cannot run Linux, so the data plane's KVM path
(ioeventfd kicks, completion interrupts by ioctl on the in-kernel irqchip's
MSI-X routes, from a thread without the global mutex) is run one level down:
Debian's QEMU (L0, TCG, `-cpu EPYC,+svm`: emulated AMD SVM with nested paging)
boots an L1 Linux whose kvm-amd gives it a working /dev/kvm; inside L1 the
2012 variant runs the point's guest (L2) with `-machine accel=kvm`.

Three parts:

* the L1 image (prepare_l1_image): the fio guest's initramfs (Debian cloud
  kernel, busybox, dropbear, the harness's SSH key) with a second cpio archive
  appended that carries kvm/kvm-amd/irqbypass/brd, the L1 /init, the variants'
  binaries with their libraries (ldd) and pc-bios/, the micro-guest ELF and,
  when asked, the fio guest's kernel + initramfs for L2.  Cached by a hash of
  everything that goes in.
* L1 (class L1): booted with Debian's qemu-system-x86_64 under TCG; the test
  image is L1's /dev/vda (a virtio disk from L0: L1's tmpfs has no O_DIRECT).
  L0's user network forwards three ports: SSH into L1, SSH into L2 (L1's port
  2222, which the 2012 QEMU's own user network forwards to L2's port 22) and
  L2's QMP (a TCP monitor in L1).
* running L2 (l2_* and run_micro_point / run_hostile_case): commands over SSH
  into L1 start the 2012 QEMU, wait for it there (one round trip, no polling
  across the two network hops) and read back its serial console file.

Why SSH and not the serial console or a 9p share for the way back: the same
channel carries the commands, L2's console and exit status, and L1's view of
a hung L2 (task states, kvm debugfs); the fio guest is then reached over SSH
exactly as under TCG or KVM, with fio_jobs.py unchanged, and L2's QMP is driven
from L0 just as for a local QEMU.  (Debian's cloud kernel has no 9p.)

Results are functional, not timing: every L2 instruction that exits to L1's
KVM is emulated by L0's TCG, so IOPS here say nothing about KVM speed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TypeVar

from . import guest as fioguest
from . import proc
from .accel import KVM, KVM_NESTED, l0_qemu
from .config import VariantSpec
from .errors import HarnessError, InfraError, UserError
from .files import sha256_file
from .fio_jobs import open_connection
from .guest import GuestImage, Initramfs
from .matrix import Workload
from .sshcmd import run_interruptible
from .microguest import (HOSTILE_CASES, HOSTILE_PREFIX, RESULT_PREFIX, HostileResult, MicroResult,
                         build_microguest, find_line, guest_cmdline, hostile_cmdline,
                         microguest_spec, parse_result)
from .microguest.output import HALT_MARK
from .paths import cache_dir
from .qmp import QMP
from .util import Say, free_port, quiet, tail
from .vm import VM, VMSpec, linux_spec, opt_value, qemu_argv

log = logging.getLogger("harness.nested")
T = TypeVar("T")

ACCEL = KVM_NESTED.name
L1_FORMAT = 1  # bump when the layout of the L1 archive changes
L1_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "kvm_amd", "brd")
L1_MEMORY_MB = 2560
L1_READY = "HARNESS-L1-READY"
L1_KVM = "HARNESS-L1-KVM"
OPT = "/opt/harness"            # in L1: binaries, pc-bios, guests
L2_DIR = "/tmp/l2"              # in L1: the running L2's console, stderr, pid, exit status
L2_SSH_PORT = 2222              # in L1, forwarded by the 2012 QEMU to L2's port 22
L2_QMP_PORT = 4444              # in L1: the 2012 QEMU's QMP on TCP
L2_DISK = "/dev/vda"            # in L1: the test image
MICRO_WATCHDOG_S = 60.0         # an L2 micro-guest run that has not ended by then is hung
MICRO_RETRIES = 2               # hung runs retried per point (each one counted)
L1_FREEZES = "/tmp/l1-freezes"  # in L1: one line per gap in its one-second heartbeat
L1_FREEZE_S = 5                 # a heartbeat gap this long (L1's own clock) is a freeze
L1_ANSWER_S = 30.0              # an L1 that does not run `true` within this has stalled


class L1Unusable(InfraError):
    """L1 booted but has no /dev/kvm (kvm-amd did not load): nothing to run."""


class L1Stalled(InfraError):
    """L1 stopped answering SSH: a command in it timed out or its connection dropped.

    Seen at random (about one L2 run in ten here, every variant): L1's timer
    and device interrupts arrive late or not at all while its vCPU runs L2
    under L0's emulated SVM, and L1's network can stay dead afterwards.  The
    cure is a new L1 (L1.restart) and the point run again."""


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


# ------------------------------------------------------------------ the L1 image


@dataclass(frozen=True)
class L1Image:
    kernel: Path
    initrd: Path
    builds: tuple[str, ...]   # variants carried (by build name)
    fio_guest: bool           # carries the fio guest for L2
    digest: str

    @property
    def description(self) -> str:
        guests = "micro-guest" + (" + fio guest" if self.fio_guest else "")
        return f"L1 {self.digest}: {', '.join(self.builds)}; {guests}"


def prepare_l1_image(binaries: dict[str, Path], fio_guest: bool = False,
                     say: Say = quiet) -> L1Image:
    """The L1 kernel + initramfs carrying binaries ({build name: binary}); cached."""
    base = fioguest.prepare_fio_guest(say)
    micro = build_microguest()
    inputs = _inputs(binaries, base, micro, fio_guest)
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    out = cache_dir() / "nested" / digest
    if not (out / "manifest.json").exists():
        say(f"assembling the L1 image for kvm-nested ({', '.join(sorted(binaries))}) in {out}")
        _build(out, inputs, binaries, base, micro, fio_guest)
    return L1Image(kernel=base.kernel, initrd=out / "l1.cpio", builds=tuple(sorted(binaries)),
                   fio_guest=fio_guest, digest=digest)


def _inputs(binaries: dict[str, Path], base: GuestImage, micro: Path, fio_guest: bool) -> dict:
    return {
        "format": L1_FORMAT,
        "base": base.initrd.parent.name,          # the fio guest's own content hash
        "microguest": sha256_file(micro),
        "fio_guest": fio_guest,
        "modules": L1_MODULES,
        "scripts": hashlib.sha256((L1_INIT + L2_START + L2_WAIT).encode()).hexdigest(),
        "builds": {name: {"binary": sha256_file(path), "pc_bios": _tree_hash(pc_bios_dir(path))}
                   for name, path in sorted(binaries.items())},
    }


def pc_bios_dir(binary: Path) -> Path:
    """A build's pc-bios/ (beside x86_64-softmmu/)."""
    found = Path(binary).resolve().parent.parent / "pc-bios"
    if not found.is_dir():
        raise UserError(f"no pc-bios/ beside {binary} (kvm-nested needs a built variant)")
    return found


def _tree_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build(out: Path, inputs: dict, binaries: dict[str, Path], base: GuestImage, micro: Path,
           fio_guest: bool) -> None:
    """Assemble in a private directory, then rename (safe against a concurrent build)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{out.name}.", suffix=".partial", dir=out.parent))
    try:
        files = Initramfs()
        _add_scripts(files)
        _add_kvm_modules(files, work)
        for name, binary in sorted(binaries.items()):
            _add_variant(files, name, binary)
        files.file(f"{OPT}/microguest.elf", micro.read_bytes())
        if fio_guest:
            files.file(f"{OPT}/l2/vmlinuz", base.kernel.read_bytes())
            files.file(f"{OPT}/l2/initrd.cpio", base.initrd.read_bytes())
        files.write(work / "extra.cpio")
        with open(work / "l1.cpio", "wb") as target:
            for part in (base.initrd, work / "extra.cpio"):  # the kernel unpacks both in turn
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, target, 1 << 20)
        (work / "extra.cpio").unlink()
        (work / "manifest.json").write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")
        if not (out / "manifest.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _add_scripts(files: Initramfs) -> None:
    files.file("init", L1_INIT.encode(), 0o755)          # replaces the fio guest's /init
    files.file("bin/l2-start", L2_START.encode(), 0o755)
    files.file("bin/l2-wait", L2_WAIT.encode(), 0o755)
    files.file("etc/hostname", b"l1\n")


def _add_kvm_modules(files: Initramfs, work: Path) -> None:
    """kvm-amd and the rest of L1_MODULES from the guest's kernel package, in load order."""
    package = fioguest.kernel_package()
    version = fioguest._candidates((package,))[package]
    deb = fioguest._download(package, version, cache_dir() / "guest" / "debs", quiet)
    tree = work / "kernel"
    proc.run(["dpkg-deb", "-x", deb, tree], what=f"unpack {package}")
    found = {p.name.removesuffix(".ko").replace("-", "_"): p
             for p in (tree / "lib/modules").rglob("*.ko")}
    order = fioguest.module_order(L1_MODULES, lambda name: fioguest._module_deps(found, name))
    for name in order:
        files.file(f"lib/modules/l1/{name}.ko", found[name].read_bytes())
    files.file("etc/l1-modules-order", ("\n".join(order) + "\n").encode())
    shutil.rmtree(tree)


def _add_variant(files: Initramfs, name: str, binary: Path) -> None:
    files.file(f"{OPT}/{name}/qemu-system-x86_64", Path(binary).read_bytes(), 0o755)
    for guest_lib, host_lib in fioguest._libraries(Path(binary), [], Path("/nonexistent")).items():
        if guest_lib not in files:
            files.file(guest_lib, Path(host_lib).resolve().read_bytes(), 0o755)
    bios = pc_bios_dir(binary)
    for path in sorted(bios.rglob("*")):
        if path.is_file():
            files.file(f"{OPT}/{name}/pc-bios/{path.relative_to(bios)}", path.read_bytes())


# ------------------------------------------------------------------ booting L1


@dataclass(frozen=True)
class L1Ports:
    ssh: int        # L0 → L1:22
    l2_ssh: int     # L0 → L1:2222 → L2:22
    l2_qmp: int     # L0 → L1:4444 (the 2012 QEMU's QMP)


def l1_spec(binary: str, image: L1Image, disk_path: Path, ports: L1Ports, console_log: Path,
            qmp_socket: Path, vcpus: int = 1, memory_mb: int = L1_MEMORY_MB,
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
    extra = ("-drive", f"if=none,id=disk0,file={opt_value(disk_path)},format=raw,"
                       "cache=writeback,aio=threads",
             "-device", "virtio-blk-pci,drive=disk0,event_idx=off",
             "-netdev", f"user,id=n0,{fwd}",
             "-device", "virtio-net-pci,netdev=n0,romfile=,event_idx=off")
    return VMSpec(binary=binary, accel=KVM_NESTED, memory_mb=memory_mb, vcpus=vcpus,
                  console_log=Path(console_log), qmp_socket=Path(qmp_socket), legacy=False,
                  kernel=image.kernel, initrd=image.initrd,
                  append=f"{fioguest.APPEND} {kernel_args}".strip(), extra=extra)


class L1:
    """One booted L1: `with L1(image, disk, log) as l1:` boots it and always stops it."""

    def __init__(self, image: L1Image, disk_path: Path, console_log: Path, *, vcpus: int = 1,
                 memory_mb: int = L1_MEMORY_MB, boot_timeout: float = 180.0,
                 kernel_args: str = "") -> None:
        self.image = image
        self.ports = L1Ports(free_port(), free_port(), free_port())
        self.console_log = Path(console_log)
        self.boot_timeout = boot_timeout
        self.login = fioguest.prepare_fio_guest()   # same key for L1 and L2 (cached)
        qmp = Path(tempfile.gettempdir()) / f"harness-l1-{os.getpid()}-{self.ports.ssh}.sock"
        self.spec = l1_spec(l0_qemu(), image, Path(disk_path), self.ports, self.console_log,
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


# ------------------------------------------------------------------ L2 command lines


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
                vcpus: int = 1) -> list[str]:
    """The 2012 QEMU command line in L1 for the fio guest (pure): vm.linux_spec's, with
    the SSH forward open to L0's user network."""
    spec = linux_spec(f"{variant_dir(variant)}/qemu-system-x86_64", KVM, l2_fio_image(login),
                      console_log=Path(f"{L2_DIR}/console.log"), legacy=True,
                      memory_mb=memory_mb, vcpus=vcpus, disk=Path(L2_DISK), variant=variant,
                      ssh_port=L2_SSH_PORT)
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
                vcpus: int = 1):
    """Start the fio guest in L2 and log in from L0 (two port forwards); the connection."""
    l1.start_l2(l2_fio_argv(variant, l1.login, memory_mb, vcpus))
    state, status = l1.wait_l2(timeout, fioguest.READY_MARKER)
    if state != "found":
        raise InfraError(f"the fio guest in L2 did not get ready ({state}, status {status}): "
                         f"{tail(l1.l2_file('console.log'), 3)} | {tail(l1.l2_file('stderr'), 3)}")
    return open_connection(l1.ports.l2_ssh, l1.login, timeout)


# ------------------------------------------------------------------ scripts in L1

L1_INIT = f"""#!/bin/sh
# /init of the harness's L1 (busybox sh): a KVM host for the 2012 QEMU.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname l1
seed-entropy /etc/random-seed || echo "harness-l1: entropy seeding failed"
for m in $(cat /etc/l1-modules-order); do
    # module.param=value on the kernel command line, as modprobe would pass them
    opts=$(tr ' ' '\\n' </proc/cmdline | sed -n "s/^$m\\.//p")
    insmod /lib/modules/l1/$m.ko $opts || echo "harness-l1: insmod $m $opts failed"
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
ip link set lo up
ip addr add {fioguest.GUEST_IP} dev eth0
ip link set eth0 up
ip route add default via {fioguest.GUEST_GW}
dropbear -r /etc/dropbear/dropbear_rsa_host_key -s -p 22 -E 2>>/tmp/dropbear.log
mkdir -p {L2_DIR}
if [ -c /dev/kvm ]; then
    echo "{L1_KVM} ok $(dmesg | grep -i 'nested paging' | tail -n 1)"
else
    echo "{L1_KVM} missing: $(dmesg | grep -iE 'kvm|svm' | tail -n 3 | tr '\\n' ' ')"
fi
echo 1 > /proc/sys/kernel/printk
# a beat a second; a gap of {L1_FREEZE_S} s or more on L1's own clock means L1 did not run
: > {L1_FREEZES}
(while :; do sleep 1; cut -d' ' -f1 /proc/uptime; done |
    awk 'p && $1 - p >= {L1_FREEZE_S} {{ printf "%.1f %.1f\\n", $1, $1 - p; fflush() }} {{ p = $1 }}' \\
    >> {L1_FREEZES}) </dev/null >/dev/null 2>&1 &
echo "{L1_READY} $(cut -d' ' -f1 /proc/uptime)"
while true; do sleep 3600; done
"""

L2_START = f"""#!/bin/sh
# l2-start DIR ARGV...: run a QEMU in the background; DIR/rc gets its exit status.
dir=$1; shift
if [ -e "$dir/qemu.pid" ] && [ ! -e "$dir/rc" ]; then      # a previous one still runs
    kill -9 "$(cat "$dir/qemu.pid")" 2>/dev/null
    n=0; while [ ! -e "$dir/rc" ] && [ $n -lt 100 ]; do usleep 100000; n=$((n+1)); done
fi
rm -rf "$dir"; mkdir -p "$dir"
wc -l < {L1_FREEZES} > "$dir/freezes.at-start"     # L1.freezes_during_l2 counts from here
setsid sh -c '"$@" >"$0/stderr" 2>&1; echo $? >"$0/rc.tmp"; mv "$0/rc.tmp" "$0/rc"' \\
    "$dir" "$@" </dev/null >/dev/null 2>&1 &
"""

L2_WAIT = """#!/bin/sh
# l2-wait DIR TIMEOUT_S [PATTERN]: "exited STATUS", "found" (PATTERN in the console) or "timeout".
dir=$1; end=$(( $(date +%s) + $2 )); pattern=$3
while :; do
    if [ -e "$dir/rc" ]; then echo "exited $(cat "$dir/rc")"; exit 0; fi
    if [ -n "$pattern" ] && grep -q -- "$pattern" "$dir/console.log" 2>/dev/null; then
        echo found; exit 0
    fi
    if [ "$(date +%s)" -ge "$end" ]; then echo timeout; exit 0; fi
    usleep 20000
done
"""

L1_DIAGNOSE = f"""
pid=$(cat {L2_DIR}/qemu.pid 2>/dev/null)
echo "L2 QEMU pid $pid; halt_poll_ns $(cat /sys/module/kvm/parameters/halt_poll_ns)"
for f in /sys/module/kvm_amd/parameters/*; do echo "kvm_amd.$(basename $f)=$(cat $f)"; done | tr '\n' ' '
echo
for t in /proc/$pid/task/*; do
    echo "thread $(basename $t) $(cut -d' ' -f2,3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null)"
    cat $t/stack 2>/dev/null | head -n 8 | sed 's/^/    /'
done
for f in /sys/kernel/debug/kvm/*-*/vcpu0/* /sys/kernel/debug/kvm/*-*/halt_* \\
         /sys/kernel/debug/kvm/halt_* /sys/kernel/debug/kvm/exits /sys/kernel/debug/kvm/irq_injections \\
         /sys/kernel/debug/kvm/nmi_injections /sys/kernel/debug/kvm/irq_exits \\
         /sys/kernel/debug/kvm/hypercalls /sys/kernel/debug/kvm/req_event; do
    [ -f "$f" ] && echo "$f $(cat $f 2>/dev/null | head -c 200)"
done
if [ "$(cat /sys/kernel/tracing/tracing_on 2>/dev/null)" = 1 ]; then
    echo 0 > /sys/kernel/tracing/tracing_on
    echo "kvm trace: the last 25 events, then the last 150 before the vCPU stopped entering L2:"
    tail -n 25 /sys/kernel/tracing/trace
    echo "..."
    grep -v -e kvm_vcpu_wakeup -e kvm_apic_accept_irq /sys/kernel/tracing/trace | tail -n 150
fi
echo "dmesg:"; dmesg | tail -n 15
"""
