"""The micro-guest: a bare-metal virtio-blk driver that measures the host I/O path.

A Linux guest under TCG spends more than 100 µs per request in its own kernel,
which hides the host's I/O path.  The micro-guest (C sources in
harness/microguest/) is a 32-bit multiboot ELF that QEMU boots with -kernel; it
finds the legacy virtio-blk PCI device, keeps qd requests in flight, times them
with the TSC and prints one line on COM1::

    MICROGUEST-RESULT {"ok":1,"rw":"randread","bs":4096,"qd":16,...}

With mode=hostile it submits one malformed request (HOSTILE_CASES) and prints
a MICROGUEST-HOSTILE line saying what the device did.

Guest command line (QEMU -append), all optional::

    rw=randread|randwrite|read|write|randrw  bs=4096  qd=16  n=20000  warmup=0
    seq=0|1  rwmix=50  wait=poll|irq|intx  verify=0|1  seed=1
    mode=bench|hostile|msix-churn|misaligned|ram-change  case=NAME  timeout_ms=10000  halt=0|1
    churn=4  indirect=0|1  unmap_first=0|1  pause_ms=0   (see microguest/README.md)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .config import VariantSpec, parse_size
from .files import sha256_file
from .errors import InfraError, UserError
from .matrix import Point, Workload
from .paths import cache_dir
from .proc import kill_group, run
from .results import HOST_VARIANT, failed_row, new_row, parse_fio_output, row_from_fio

log = logging.getLogger("harness.microguest")

SOURCE_DIR = Path(__file__).resolve().parent / "microguest"
SOURCES = ("boot.S", "lib.c", "virtio.c", "main.c", "hostile.c", "safety.c",
           "hw.h", "virtio.h", "mg.h", "microguest.ld")
C_SOURCES = ("boot.S", "lib.c", "virtio.c", "main.c", "hostile.c", "safety.c")
CFLAGS = ("-m32", "-march=i686", "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie",
          "-O2", "-g0", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-mno-sse", "-mno-mmx", "-mno-80387", "-std=gnu11")
LDFLAGS = ("-static", "-no-pie", "-Wl,-T,microguest.ld", "-Wl,--build-id=none",
           "-Wl,-z,max-page-size=4096", "-Wl,--no-warn-rwx-segments")

RESULT_PREFIX = "MICROGUEST-RESULT "
HOSTILE_PREFIX = "MICROGUEST-HOSTILE "
BEGIN_MARK = "MICROGUEST-BEGIN"
END_MARK = "MICROGUEST-END"

WAIT_MODES = ("poll", "irq", "intx")
#: One malformed request per boot; see harness/microguest/hostile.c.
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
#: Exit statuses of a clean guest power-off: ACPI S5, isa-debug-exit ok/failed.
CLEAN_EXITS = (0, 33, 35)
DEBUG_EXIT = "isa-debug-exit,iobase=0xf4,iosize=0x04"


# ---- build ----

def _source_hash(cc: str) -> str:
    digest = hashlib.sha256()
    digest.update(" ".join((cc, *CFLAGS, *LDFLAGS)).encode())
    for name in SOURCES:
        digest.update(name.encode() + b"\0")
        digest.update((SOURCE_DIR / name).read_bytes())
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
    result = run([cc, *CFLAGS, *LDFLAGS, "-o", tmp, *C_SOURCES], cwd=SOURCE_DIR,
                 timeout=120, check=False, what="build micro-guest")
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = next((line for line in result.output.splitlines() if "error" in line.lower()),
                     result.output.strip().splitlines()[-1] if result.output.strip() else "")
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


# ---- QEMU command line ----

def guest_cmdline(workload: Workload, requests: int, wait: str = "poll", *,
                  verify: bool = False, seed: int = 1, warmup: int = 0,
                  timeout_ms: int = 10000) -> str:
    """The micro-guest's -append string for one benchmark point."""
    if wait not in WAIT_MODES:
        raise UserError(f"micro-guest wait mode {wait!r}: use one of {', '.join(WAIT_MODES)}")
    if workload.numjobs != 1:
        raise UserError(f"micro-guest: numjobs={workload.numjobs}; the legacy virtio-blk device "
                        "has one queue, so the micro-guest runs numjobs 1 only")
    bs = parse_size(workload.bs)
    return (f"rw={workload.rw} bs={bs} qd={workload.iodepth} n={requests} warmup={warmup} "
            f"wait={wait} verify={int(verify)} seed={seed} timeout_ms={timeout_ms}")


def _opt_escape(value: str | os.PathLike) -> str:
    """QEMU option values double their commas."""
    return str(value).replace(",", ",,")


def microguest_argv(binary: str | os.PathLike, accel: str, disk_path: str | os.PathLike,
                    variant: VariantSpec, memory_mb: int, cmdline: str,
                    console_log: str | os.PathLike, *, kernel: str | os.PathLike,
                    qmp_socket: str | os.PathLike | None = None) -> list[str]:
    """The QEMU command line that boots the micro-guest on the test disk (pure).

    accel: tcg or kvm.  isa-debug-exit is added for system QEMUs only (the 2012
    tree has no such device; the guest then powers off through ACPI).
    """
    if accel not in ("tcg", "kvm"):
        raise UserError(f"micro-guest accel {accel!r}: use tcg or kvm")
    device = "virtio-blk-pci,drive=disk0"
    argv = [str(binary), "-machine", f"accel={accel}", "-m", str(memory_mb),
            "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-append", cmdline]
    if variant.iothread:
        argv += ["-object", "iothread,id=io0"]
        device += ",iothread=io0"
    for key, value in variant.device_props.items():
        device += f",{key}={_opt_escape(value)}"
    argv += ["-drive", f"if=none,id=disk0,file={_opt_escape(disk_path)},format=raw,"
                       f"cache=none,aio={variant.aio}",
             "-device", device,
             "-serial", f"file:{console_log}"]
    if variant.build is None:
        argv += ["-device", DEBUG_EXIT]
    if qmp_socket is not None:
        argv += ["-qmp", f"unix:{qmp_socket},server,nowait"]
    return argv


def resolve_accel(accel: str) -> str:
    """auto → kvm when /dev/kvm can be opened, else tcg."""
    if accel != "auto":
        return accel
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return "tcg"
    os.close(fd)
    return "kvm"


# ---- output parsing ----

@dataclass(frozen=True)
class MicroResult:
    ok: bool
    rw: str
    bs: int
    qd: int
    n: int
    done: int
    wait: str
    errors: int
    mismatches: int
    verified: int
    tsc_hz: int
    elapsed_ns: int
    halted_ns: int
    iops: float
    lat_mean_ns: float
    lat_min_ns: float
    lat_max_ns: float
    p50_ns: float
    p99_ns: float
    p999_ns: float
    hist: tuple[tuple[int, int, int], ...]
    error: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # filled in by run_microguest_point
    host_cpu_pct: float = math.nan
    wall_s: float = math.nan
    exit_status: int | None = None
    log: str = ""

    @property
    def bw_mib_s(self) -> float:
        return self.iops * self.bs / (1 << 20)

    @property
    def guest_cpu_pct(self) -> float:
        """Share of the run the vCPU was not halted (100 when polling)."""
        if self.wait == "poll":
            return 100.0
        if self.elapsed_ns <= 0:
            return math.nan
        return max(0.0, 100.0 * (1 - self.halted_ns / self.elapsed_ns))


def find_line(text: str, prefix: str) -> dict[str, Any] | None:
    """The JSON of the last line starting with prefix, or None."""
    found = None
    for line in text.splitlines():
        line = line.strip("\r\x00 ")
        if line.startswith(prefix):
            found = line[len(prefix):]
    if found is None:
        return None
    try:
        value = json.loads(found)
    except json.JSONDecodeError as exc:
        raise InfraError(f"micro-guest printed a malformed {prefix.strip()} line: {exc}: "
                         f"{found[:200]}") from exc
    if not isinstance(value, dict):
        raise InfraError(f"micro-guest {prefix.strip()} line is not a JSON object")
    return value


def hist_percentile(hist: Sequence[Sequence[int]], q: float) -> float:
    """The q-quantile (0..1) of a [lo, hi, count] histogram: the bucket midpoint,
    the same rule the guest uses (it also clamps to the observed min and max)."""
    total = sum(b[2] for b in hist)
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(total * q - 1e-9))
    cum = 0
    for lo, hi, count in hist:
        cum += count
        if cum >= rank:
            return (lo + hi) / 2
    return float(hist[-1][1])


def parse_result(text: str) -> MicroResult | None:
    """Parse the MICROGUEST-RESULT line out of console output (None if absent)."""
    data = find_line(text, RESULT_PREFIX)
    if data is None:
        return None
    lat = data.get("lat_ns") or {}
    hist = tuple(tuple(int(x) for x in b) for b in data.get("hist") or ())
    for bucket in hist:
        if len(bucket) != 3 or bucket[0] > bucket[1] or bucket[2] < 0:
            raise InfraError(f"micro-guest histogram bucket malformed: {bucket}")
    return MicroResult(
        ok=bool(data.get("ok")), rw=str(data.get("rw", "")), bs=int(data.get("bs", 0)),
        qd=int(data.get("qd", 0)), n=int(data.get("n", 0)), done=int(data.get("done", 0)),
        wait=str(data.get("wait", "")), errors=int(data.get("errors", 0)),
        mismatches=int(data.get("mismatches", 0)), verified=int(data.get("verified", 0)),
        tsc_hz=int(data.get("tsc_hz", 0)), elapsed_ns=int(data.get("elapsed_ns", 0)),
        halted_ns=int(data.get("halted_ns", 0)),
        iops=float(data.get("iops", 0)),
        lat_mean_ns=float(lat.get("mean", math.nan)), lat_min_ns=float(lat.get("min", math.nan)),
        lat_max_ns=float(lat.get("max", math.nan)), p50_ns=float(lat.get("p50", math.nan)),
        p99_ns=float(lat.get("p99", math.nan)), p999_ns=float(lat.get("p999", math.nan)),
        hist=hist, error=str(data.get("error", "")), raw=data,
    )


# ---- running QEMU ----

def _cpu_seconds(pid: int) -> float | None:
    """CPU time of a whole process (all threads, also exited ones) in seconds.

    Reads the process CPU clock (Linux: clockid ((~pid) << 3) | CPUCLOCK_SCHED),
    which is exact and includes the running threads' current slice; falls back
    to utime + stime from /proc/<pid>/stat (clock-tick resolution).
    """
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except (OSError, OverflowError):
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _stderr_path(console_log: Path) -> Path:
    return console_log.with_name(console_log.name + ".qemu-stderr")


def _start(argv: list[str], console_log: Path) -> tuple[subprocess.Popen, Path]:
    console_log.parent.mkdir(parents=True, exist_ok=True)
    console_log.write_bytes(b"")
    stderr_path = _stderr_path(console_log)
    log.debug("start: %s", " ".join(argv))
    with open(stderr_path, "wb") as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError as exc:
            raise UserError(f"QEMU binary not found: {argv[0]}") from exc
    return proc, stderr_path


#: QEMU messages after which the VM is stopped for good (QEMU itself stays up).
VM_STOP_MARKERS = ("KVM internal error", "emulation failure")


def _raise_on_vm_stop(stderr_path: Path, console_log: Path) -> None:
    text = _read(stderr_path)
    for marker in VM_STOP_MARKERS:
        if marker in text:
            raise InfraError(f"the VM stopped: QEMU reported '{marker}' "
                             f"(QEMU stderr: {stderr_path}, console: {console_log})")


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> int:
    """Wait for QEMU to exit by itself for grace_s, then kill it; its exit status."""
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return proc.wait()


def run_microguest_point(binary: str | os.PathLike, accel: str, disk_path: str | os.PathLike,
                         variant: VariantSpec, workload: Workload, requests: int, wait: str,
                         console_log: str | os.PathLike, timeout: float, *,
                         memory_mb: int = 128, verify: bool = False, seed: int = 1,
                         warmup: int = 0, kernel: str | os.PathLike | None = None
                         ) -> MicroResult:
    """Boot the micro-guest for one point and return its parsed result.

    Host CPU is QEMU's process CPU time (all threads) between the guest's
    BEGIN and END marks divided by the wall time between them, sampled when
    the console shows them (polled every 5 ms, so use runs of a second or more;
    a run that ends within one poll gets NaN).  InfraError (naming the log) when
    no result line appears before the timeout or QEMU dies first.
    """
    accel = resolve_accel(accel)
    cmdline = guest_cmdline(workload, requests, wait, verify=verify, seed=seed, warmup=warmup)
    kernel = Path(kernel) if kernel else build_microguest()
    console_log = Path(console_log)
    argv = microguest_argv(binary, accel, disk_path, variant, memory_mb, cmdline, console_log,
                           kernel=kernel)
    proc, stderr_path = _start(argv, console_log)
    deadline = time.monotonic() + timeout
    begin: tuple[float, float | None] | None = None
    end: tuple[float, float | None] | None = None
    result = None
    next_stderr_check = 0.0
    try:
        while True:
            text = _read(console_log)
            now = time.monotonic()
            if begin is None and BEGIN_MARK in text:
                begin = (now, _cpu_seconds(proc.pid))
            if end is None and (END_MARK in text or RESULT_PREFIX in text):
                end = (now, _cpu_seconds(proc.pid))
            if RESULT_PREFIX in text and text.rstrip("\x00").endswith("\n"):
                result = parse_result(text)
                if result is not None:
                    break
            if proc.poll() is not None:
                text = _read(console_log)
                result = parse_result(text)
                if result is not None:
                    break
                raise InfraError(
                    f"QEMU exited with status {proc.returncode} before the micro-guest "
                    f"reported (console: {console_log}): "
                    f"{' | '.join(_tail(_read(stderr_path), 3).splitlines())}")
            if now > deadline:
                raise InfraError(f"micro-guest printed no result within {timeout:.0f} s "
                                 f"(console: {console_log}, QEMU stderr: {stderr_path})")
            if now > next_stderr_check:
                _raise_on_vm_stop(stderr_path, console_log)
                next_stderr_check = now + 0.5
            time.sleep(0.005)
        status = _stop(proc)
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.wait()
    cpu_pct = wall = math.nan
    if begin and end and end[0] > begin[0]:
        wall = end[0] - begin[0]
        if begin[1] is not None and end[1] is not None:
            cpu_pct = (end[1] - begin[1]) / wall * 100
    return replace(result, host_cpu_pct=cpu_pct, wall_s=wall, exit_status=status,
                   log=str(console_log))


# ---- result rows ----

def micro_row(run_id: str, point: Point, accel: str, result: MicroResult | None, *,
              started_at: str, error: str = "", log_path: str = "") -> dict[str, Any]:
    """One results.csv row for a micro-guest point (result None: the point failed).

    guest_cpu_pct: 100 when polling, else the share of the run the vCPU was not
    halted; host_cpu_pct: QEMU's CPU time over the run (see run_microguest_point).
    """
    common = dict(run_id=run_id, guest=point.guest, variant=point.variant, accel=accel,
                  disk=point.disk, workload=point.workload, rep=point.rep,
                  started_at=started_at)
    if result is None:
        return failed_row(**common, error=error or "the micro-guest produced no result",
                          log=log_path)
    ok = result.ok and not result.errors and not result.mismatches
    if not ok and not error:
        error = result.error or (f"{result.errors} I/O errors, "
                                 f"{result.mismatches} verify mismatches")
    return new_row(
        **common, log=log_path or result.log, status="ok" if ok else "failed",
        error=" ".join(error.split()),
        iops=result.iops, bw_mib_s=result.bw_mib_s,
        lat_mean_us=result.lat_mean_ns / 1000, lat_p50_us=result.p50_ns / 1000,
        lat_p99_us=result.p99_ns / 1000, lat_p999_us=result.p999_ns / 1000,
        guest_cpu_pct=result.guest_cpu_pct, host_cpu_pct=result.host_cpu_pct,
        runtime_s=result.elapsed_ns / 1e9,
    )


# ---- hostile mode ----

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
    qemu_message: str            # QEMU's stderr (its error message when it died)
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


def qmp_command(sock_path: str | os.PathLike, command: str, timeout: float = 10.0
                ) -> dict[str, Any]:
    """Send one QMP command on a fresh connection; returns its "return" value.

    Raises OSError/TimeoutError when QEMU does not answer, InfraError on a QMP error.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        reader = sock.makefile("rb")

        def reply() -> dict[str, Any]:
            while True:
                line = reader.readline()
                if not line:
                    raise ConnectionError("QMP connection closed")
                msg = json.loads(line)
                if "return" in msg or "error" in msg or "QMP" in msg:
                    return msg

        reply()                                                  # greeting
        sock.sendall(b'{"execute":"qmp_capabilities"}\n')
        reply()
        sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        msg = reply()
        if "error" in msg:
            raise InfraError(f"QMP {command}: {msg['error'].get('desc', msg['error'])}")
        return msg["return"]


def run_hostile_case(binary: str | os.PathLike, accel: str, disk_path: str | os.PathLike,
                     variant: VariantSpec, case: str, console_log: str | os.PathLike,
                     timeout: float, *, memory_mb: int = 128,
                     kernel: str | os.PathLike | None = None,
                     wait_timeout_ms: int = 1000) -> HostileResult:
    """Boot the micro-guest with one malformed request and record what happened.

    Survival: the guest reported and QEMU then answered QMP query-status (after
    which it is told to quit).  If QEMU exited on its own, its exit status and
    stderr are recorded instead.  The image is hashed before and after.
    """
    if case not in HOSTILE_CASES:
        raise UserError(f"unknown hostile case {case!r}; known: {', '.join(HOSTILE_CASES)}")
    accel = resolve_accel(accel)
    kernel = Path(kernel) if kernel else build_microguest()
    disk_path = Path(disk_path)
    console_log = Path(console_log)
    before = sha256_file(disk_path)
    cmdline = f"mode=hostile case={case} timeout_ms={wait_timeout_ms} halt=1"
    sock_dir = tempfile.mkdtemp(prefix="mg-qmp-")
    qmp = Path(sock_dir) / "qmp.sock"
    argv = microguest_argv(binary, accel, disk_path, variant, memory_mb, cmdline, console_log,
                           kernel=kernel, qmp_socket=qmp)
    proc, stderr_path = _start(argv, console_log)
    deadline = time.monotonic() + timeout
    guest = None
    state = "no-report"
    survived = died = False
    try:
        while True:
            text = _read(console_log)
            if HOSTILE_PREFIX in text and "MICROGUEST-HALT" in text:
                guest = find_line(text, HOSTILE_PREFIX)
                break
            if RESULT_PREFIX in text:        # the guest failed before the case ran
                guest = find_line(text, RESULT_PREFIX)
                break
            if proc.poll() is not None:
                guest = find_line(_read(console_log), HOSTILE_PREFIX)
                died = guest is None
                state = "exited"
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            try:
                status = qmp_command(qmp, "query-status")
                state = str(status.get("status", "running"))
                survived = guest is not None
                try:
                    qmp_command(qmp, "quit", timeout=5)
                except (OSError, ValueError):
                    pass                     # the connection drops as QEMU quits
            except (OSError, ValueError, InfraError):
                state = "hung"
        exit_status = _stop(proc, grace_s=10)
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)
    return HostileResult(
        case=case, variant=variant.name, accel=accel, qemu_survived=survived,
        qemu_state=state, qemu_exit_status=exit_status, qemu_died=died,
        qemu_message=_tail(_read(stderr_path), 5), guest=guest,
        disk_changed=sha256_file(disk_path) != before,
        log=str(console_log), stderr_log=str(stderr_path))


# ---- host ceiling ----

def host_fio_ceiling(disk_path: str | os.PathLike, workload: Workload, runtime_s: int, *,
                     run_id: str = "", disk: str | None = None, rep: int = 1,
                     log_file: Path | None = None) -> dict[str, Any]:
    """fio on the host against the same image (libaio, O_DIRECT): the ceiling row
    (variant host-fio, guest "host", accel "host"; host_cpu_pct is fio's usr+sys)."""
    if not shutil.which("fio"):
        raise UserError("the host fio ceiling needs fio (install the Debian package fio)")
    disk_path = Path(disk_path)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    argv = ["fio", "--name=ceiling", f"--filename={disk_path}", "--direct=1",
            "--ioengine=libaio", f"--rw={workload.rw}", f"--bs={parse_size(workload.bs)}",
            f"--iodepth={workload.iodepth}", f"--numjobs={workload.numjobs}",
            "--group_reporting", "--time_based", f"--runtime={runtime_s}",
            f"--size={disk_path.stat().st_size}", "--output-format=json"]
    result = run(argv, timeout=runtime_s + 120, log_file=log_file, what="host fio ceiling")
    fio_json = parse_fio_output(result.output)
    jobs = fio_json.get("jobs") or [{}]
    cpu = sum(float(j.get("usr_cpu", 0.0)) + float(j.get("sys_cpu", 0.0)) for j in jobs)
    return row_from_fio(fio_json, run_id=run_id, guest="host", variant=HOST_VARIANT,
                        accel="host", disk=disk or disk_path.name, workload=workload, rep=rep,
                        guest_cpu_pct=None, host_cpu_pct=cpu, log=str(log_file or ""),
                        started_at=started)
