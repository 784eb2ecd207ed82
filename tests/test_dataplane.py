"""Functional tests of the built variants' virtio-blk: the same tests on baseline and dataplane.

Each test is parametrized over the built variants and skips for one that
`harness build` has not built yet.  The point is the dataplane variant: its
virtio-blk requests go notifier → data-plane thread → Linux AIO → completion
interrupt, and these tests drive that path from three different guests:

* a boot sector (tests/data/bootsector/boot.s, assembled here with binutils):
  SeaBIOS loads it from the virtio-blk disk and it reads and writes sectors
  through the BIOS's own virtio-blk driver (INT 13h) — under KVM (ioeventfd,
  so the data-plane thread really runs) and under TCG;
* the micro-guest under KVM: a few hundred requests, MSI-X and INTx
  completions, write-then-read verification (baseline, dataplane and poll);
* the micro-guest under TCG on the data-plane variants (dataplane and poll,
  i.e. with patches/beyond): write-then-read verification with a polling and
  an interrupt-driven guest, every malformed-request case survived, and QMP
  quit while the guest keeps the data-plane thread busy;
* the Linux fio guest under TCG: QMP quit and system_reset while fio is
  running, fio's crc32c verification, and files and raw sectors that must
  survive a reset (checked from the guest and from the host side of the image).

KVM tests skip when /dev/kvm cannot be opened.  On a nested KVM that cannot run
Linux (see harness/accel.py) the Linux-guest tests use TCG only.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import microguest as mg
from harness.accel import accel_named
from harness.config import VariantSpec
from harness.errors import UserError
from harness.matrix import Workload
from harness.results import parse_fio_output
from harness.util import tail
from harness.vm import VM, VMSpec, linux_spec

from conftest import built_binary_or_skip

VARIANTS = ("baseline", "dataplane")
#: The builds whose virtio-blk is the data plane: the series, and the series
#: with patches/beyond (polling, interrupts raised from the data-plane thread).
DATA_PLANE_VARIANTS = ("dataplane", "poll")
MICRO_VARIANTS = VARIANTS + ("poll",)
BOOTSECTOR_SOURCE = Path(__file__).resolve().parent / "data" / "bootsector" / "boot.s"


def _variant(name: str) -> tuple[str, VariantSpec]:
    """(binary, spec) of a built variant; skips if it is not built."""
    return str(built_binary_or_skip(name)), VariantSpec(name=name)


def _kvm_or_skip() -> None:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        pytest.skip(f"/dev/kvm cannot be opened ({exc.strerror}): KVM tests need it")
    os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


# =============================================================== boot sector

SECTOR = 512
BOOT_DISK_BYTES = 4 << 20
READ_CHS_LBA = 1                   # step A
READ_LBA, READ_COUNT = 1000, 16    # step C
WRITE_LBA, WRITE_COUNT = 2000, 8   # steps D and E
GUEST_SALT = 0x80                  # the guest's pattern seed = LBA & 0xff + 0x80
UNWRITTEN = b"\xee" * SECTOR       # what the host puts where the guest will write
BOOT_OK = "DPBOOT-START ABCDE DPBOOT-OK"


def sector_pattern(seed: int) -> bytes:
    """The pattern boot.s checks and writes: byte k = seed + 13k (+0x55 in the second half)."""
    return bytes((seed + 13 * k + (0x55 if k >= 256 else 0)) & 0xFF for k in range(SECTOR))


@pytest.fixture(scope="session")
def bootsector(tmp_path_factory) -> bytes:
    """boot.s assembled with `as --32` and linked to a flat binary at 0x7c00."""
    missing = [tool for tool in ("as", "ld") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"assembling the boot sector needs {' and '.join(missing)} "
                    "(Debian package binutils)")
    out = tmp_path_factory.mktemp("bootsector")
    obj, binary = out / "boot.o", out / "boot.bin"
    for argv in (["as", "--32", "-o", obj, BOOTSECTOR_SOURCE],
                 ["ld", "-m", "elf_i386", "-e", "_start", "-Ttext", "0x7c00",
                  "--oformat", "binary", "-o", binary, obj]):
        result = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
        assert result.returncode == 0, f"{shlex.join(map(str, argv))}: {result.stderr}"
    data = binary.read_bytes()
    assert len(data) == SECTOR and data[-2:] == b"\x55\xaa", "boot.s must assemble to one sector"
    return data


def make_boot_disk(path: Path, boot: bytes) -> bytes:
    """The raw image the boot sector expects; returns its contents."""
    image = bytearray(BOOT_DISK_BYTES)
    image[:SECTOR] = boot
    for lba in [READ_CHS_LBA, *range(READ_LBA, READ_LBA + READ_COUNT)]:
        image[lba * SECTOR:(lba + 1) * SECTOR] = sector_pattern(lba & 0xFF)
    for lba in range(WRITE_LBA - 1, WRITE_LBA + WRITE_COUNT + 1):
        image[lba * SECTOR:(lba + 1) * SECTOR] = UNWRITTEN
    path.write_bytes(image)
    return bytes(image)


def expected_after_boot(before: bytes) -> bytes:
    after = bytearray(before)
    for lba in range(WRITE_LBA, WRITE_LBA + WRITE_COUNT):
        after[lba * SECTOR:(lba + 1) * SECTOR] = sector_pattern(((lba & 0xFF) + GUEST_SALT) & 0xFF)
    return bytes(after)


def bootsector_spec(binary: str, accel: str, disk: Path, logs: Path) -> VMSpec:
    """Boot from the virtio-blk disk only (no NIC, no other disk); keep the default VGA.

    The boot sector writes to the debug console (port 0xe9), SeaBIOS to its own
    (0x402, for diagnosis only)."""
    debug_log, bios_log = logs / "debugcon.log", logs / "seabios.log"
    return VMSpec(binary=binary, accel=accel_named(accel), memory_mb=64,
                  console_log=logs / "console.log", qmp_socket=logs / "qmp.sock", legacy=True,
                  disk=disk, variant=VariantSpec(name="boot", binary=binary,
                                                 device_props={"bootindex": "0"}),
                  no_reboot=True,
                  extra=("-net", "none",
                         "-chardev", f"file,id=dbg,path={debug_log}",
                         "-device", "isa-debugcon,iobase=0xe9,chardev=dbg",
                         "-chardev", f"file,id=bios,path={bios_log}",
                         "-device", "isa-debugcon,iobase=0x402,chardev=bios"))


def run_bootsector(binary: str, accel: str, disk: Path, logs: Path,
                   timeout: float) -> tuple[str, float, dict, int, str]:
    """Boot disk until the boot sector reports; (its output, seconds, QMP query-kvm,
    exit status after QMP quit, where to look)."""
    debug_log, bios_log = logs / "debugcon.log", logs / "seabios.log"
    spec = bootsector_spec(binary, accel, disk, logs)
    where = (f"guest output: {debug_log}; SeaBIOS log: {bios_log}; "
             f"QEMU output (and command): {spec.stderr_log}")
    with VM(spec) as vm:
        while True:
            text = _read(debug_log)
            if "DPBOOT-OK" in text or ("DPBOOT-FAIL" in text and text.endswith("\n")):
                break
            if vm.returncode is not None:
                pytest.fail(f"QEMU exited with status {vm.returncode} before the boot sector "
                            f"finished (it printed {text!r}); {tail(vm.process.output())}; {where}")
            if time.monotonic() - vm.started_at > timeout:
                bios_tail = _read(bios_log).strip().splitlines()[-3:]
                pytest.fail(f"the boot sector did not finish within {timeout:.0f} s under "
                            f"{accel} (it printed {text!r}; SeaBIOS last said {bios_tail}); {where}")
            time.sleep(0.05)
        seconds = time.monotonic() - vm.started_at
        kvm = vm.qmp_cmd("query-kvm")
        status = vm.shutdown(timeout=10)
    return text.strip(), seconds, kvm, status, where


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("accel", ["kvm", "tcg"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bootsector_through_virtio_blk(variant, accel, bootsector, tmp_path, record_property):
    binary, _ = _variant(variant)
    if accel == "kvm":
        _kvm_or_skip()
    timeout = 120.0 if accel == "kvm" else 90.0  # a nested KVM runs firmware slowly
    disk = tmp_path / "boot.img"
    before = make_boot_disk(disk, bootsector)
    text, seconds, kvm, status, where = run_bootsector(binary, accel, disk, tmp_path, timeout)
    record_property("boot_to_ok_s", round(seconds, 2))
    print(f"{variant}/{accel}: boot sector done after {seconds:.1f} s: {text!r}")
    assert text == BOOT_OK, (f"the boot sector reported {text!r} "
                             f"(steps A-E, see {BOOTSECTOR_SOURCE.name}); {where}")
    assert kvm["enabled"] == (accel == "kvm"), f"asked for {accel}, QMP query-kvm says {kvm}"
    assert status == 0, f"QEMU exited with {status} after QMP quit; {where}"
    after = disk.read_bytes()
    expected = expected_after_boot(before)
    for lba in range(WRITE_LBA - 1, WRITE_LBA + WRITE_COUNT + 1):
        got = after[lba * SECTOR:(lba + 1) * SECTOR]
        assert got == expected[lba * SECTOR:(lba + 1) * SECTOR], \
            f"sector {lba} of the image is not what the guest wrote (or it was overwritten)"
    assert after == expected, "the guest's writes changed sectors other than LBA 2000-2007"


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("variant", VARIANTS)
def test_bootsector_notices_a_bad_sector(variant, bootsector, tmp_path):
    """The control: one flipped bit in LBA 1005 of the image fails step C."""
    binary, _ = _variant(variant)
    disk = tmp_path / "boot.img"
    image = bytearray(make_boot_disk(disk, bootsector))
    image[1005 * SECTOR + 100] ^= 0x01
    disk.write_bytes(image)
    text, _, _, status, where = run_bootsector(binary, "tcg", disk, tmp_path, 90.0)
    assert text == "DPBOOT-START AB DPBOOT-FAIL C ee", f"{text!r}; {where}"
    assert status == 0


def test_sector_pattern_matches_the_assembly():
    # the same rule as boot.s: seed, +13 per byte, +0x55 at byte 256
    pattern = sector_pattern(0xE8)
    assert pattern[:3] == bytes([0xE8, 0xF5, 0x02])
    assert pattern[256] == (0xE8 + 13 * 256 + 0x55) & 0xFF == 0x3D
    assert len(set(sector_pattern(s) for s in range(256))) == 256


# =============================================================== micro-guest under KVM

MICRO_REQUESTS = 200
MICRO_DISK_BYTES = 64 << 20


def _micro_disk(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, MICRO_DISK_BYTES)
    return disk


@pytest.fixture(scope="session")
def microguest_kernel() -> Path:
    try:
        return mg.build_microguest()
    except UserError as exc:
        pytest.skip(f"cannot build the micro-guest: {exc}")


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("rw", ["randread", "randwrite"])
@pytest.mark.parametrize("wait", ["irq", "intx"])
@pytest.mark.parametrize("variant", MICRO_VARIANTS)
def test_microguest_kvm_functional(variant, wait, rw, microguest_kernel, tmp_path,
                                   record_property):
    binary, spec = _variant(variant)
    _kvm_or_skip()
    disk = _micro_disk(tmp_path)
    writes = rw == "randwrite"
    result = mg.run_microguest_point(binary, "kvm", disk, spec, Workload(rw, "4k", 4, 1),
                                     MICRO_REQUESTS, wait, tmp_path / "console.log",
                                     timeout=150, kernel=microguest_kernel, verify=writes,
                                     seed=7)
    record_property("iops", round(result.iops))
    print(f"{variant}/kvm {rw} wait={wait}: {result.iops:.0f} IOPS, "
          f"irqs {result.raw.get('irqs')}, msix {result.raw.get('msix')}")
    where = f"console: {result.log}"
    assert result.ok, f"{result.error or result.raw}; {where}"
    assert result.wait == wait and result.rw == rw
    assert result.done == MICRO_REQUESTS, where
    assert result.errors == 0, f"{result.errors} requests failed; {where}"
    assert result.mismatches == 0, f"{result.mismatches} blocks read back wrong; {where}"
    if writes:
        assert result.raw.get("verify") == 1 and result.verified == MICRO_REQUESTS, where
    # The guest checks the used ring before it halts; when the data-plane thread
    # completes every request before the vCPU gets to `hlt`, no interrupt is
    # needed.  A guest that halted and then finished was woken by one.
    if result.halted_ns > 0:
        if (wait == "intx" and variant in DATA_PLANE_VARIANTS and result.raw.get("missed_irqs")
                and not result.raw.get("irqs")):
            # Known, open: under KVM the data plane's INTx path sometimes leaves a
            # completion without its interrupt (the guest's 10 Hz timer finds it:
            # missed_irqs); the 2012 baseline never did in the same probes.  Seen with
            # patches/dataplane alone and with patches/beyond before 0007-0009 too.
            pytest.xfail(f"data plane INTx under KVM: {result.raw['missed_irqs']} "
                         f"completion(s) without an interrupt; {where}")
        assert result.raw.get("irqs", 0) > 0, f"no completion interrupt arrived; {where}"
    assert result.raw.get("unexpected_irqs", 0) == 0, where
    assert result.raw.get("msix") == (1 if wait == "irq" else 0), where
    assert result.exit_status in mg.CLEAN_EXITS, f"QEMU exit status {result.exit_status}; {where}"
    if writes:  # the data reached the image file, not only the guest's view of it
        assert any(disk.read_bytes()), "the image is still all zeros after verified writes"


# =============================================================== micro-guest under TCG


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("qd", [1, 16])
@pytest.mark.parametrize("wait", ["poll", "irq"])
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_microguest_tcg_write_verify(variant, wait, qd, microguest_kernel, tmp_path,
                                     record_property):
    """Writes then reads back through the data plane under TCG.

    Without an in-kernel irqchip the completion interrupt takes the path that
    only TCG uses (poll: raised from the data-plane thread under the global
    mutex); a polling guest lets the poll variant keep notifies off.
    """
    binary, spec = _variant(variant)
    disk = _micro_disk(tmp_path)
    n = 1000
    result = mg.run_microguest_point(binary, "tcg", disk, spec, Workload("randwrite", "4k", qd, 1),
                                     n, wait, tmp_path / "console.log", timeout=150,
                                     kernel=microguest_kernel, verify=True, seed=11)
    record_property("iops", round(result.iops))
    where = f"console: {result.log}"
    assert result.ok, f"{result.error or result.raw}; {where}"
    assert result.wait == wait and result.qd == qd
    assert result.done == n and result.errors == 0, where
    assert result.raw.get("verify") == 1 and result.verified == n, where
    assert result.mismatches == 0, f"{result.mismatches} blocks read back wrong; {where}"
    if wait == "poll":
        assert result.raw.get("irqs", 0) == 0, f"interrupt for a polling guest; {where}"
    elif result.halted_ns > 0:
        assert result.raw.get("irqs", 0) > 0, f"no completion interrupt arrived; {where}"
    assert result.raw.get("unexpected_irqs", 0) == 0, where
    assert result.raw.get("missed_irqs", 0) <= n // 100, f"completions without an interrupt; {where}"
    assert result.exit_status in mg.CLEAN_EXITS, f"QEMU exit status {result.exit_status}; {where}"
    assert any(disk.read_bytes()), "the image is still all zeros after verified writes"


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("wait, kick", [("poll-irq-on", "honour"), ("poll-irq-on", "every"),
                                        ("intx", "honour"), ("poll", "every")])
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_microguest_tcg_wait_and_kick_modes_verify(variant, wait, kick, microguest_kernel,
                                                   tmp_path, record_property):
    """Writes then reads back with interrupts left on and never acknowledged
    (poll-irq-on: the poll variant stops re-raising the asserted INTx level), with
    INTx acknowledged by reading the ISR (intx: after each acknowledgement the next
    completion must raise it again), and with a guest that kicks on every request
    while the data plane polls (the poll variant drops those kicks)."""
    binary, spec = _variant(variant)
    disk = _micro_disk(tmp_path)
    n = 1000
    result = mg.run_microguest_point(binary, "tcg", disk, spec, Workload("randwrite", "4k", 16, 1),
                                     n, wait, tmp_path / "console.log", timeout=150,
                                     kernel=microguest_kernel, verify=True, seed=13, kick=kick)
    record_property("iops", round(result.iops))
    where = f"console: {result.log}"
    assert result.ok, f"{result.error or result.raw}; {where}"
    assert result.raw["wait"] == wait and result.raw["kick"] == kick, where
    assert result.raw["event_idx"] == (kick == "honour"), where
    assert result.done == n and result.verified == n and result.mismatches == 0, where
    if kick == "every":
        assert result.raw["notifies"] >= 2 * n, f"a kick per request (writes and reads); {where}"
    if wait == "intx" and result.halted_ns > 0:
        assert result.raw["irqs"] > 0, f"no INTx arrived; {where}"
    if wait != "intx":
        assert result.raw["irqs"] == 0, f"the polling guest took an interrupt; {where}"
    assert result.raw.get("missed_irqs", 0) <= n // 100, f"completions without an interrupt; {where}"
    assert result.raw.get("unexpected_irqs", 0) == 0, where
    assert result.exit_status in mg.CLEAN_EXITS, f"QEMU exit status {result.exit_status}; {where}"


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", mg.HOSTILE_CASES)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_microguest_hostile_survived(variant, case, microguest_kernel, tmp_path):
    """Every malformed request: QEMU stays up, answers QMP and quits cleanly."""
    binary, spec = _variant(variant)
    disk = _micro_disk(tmp_path)
    result = mg.run_hostile_case(binary, "tcg", disk, spec, case, tmp_path / "console.log",
                                 timeout=90, kernel=microguest_kernel)
    where = f"console: {result.log}, QEMU: {result.stderr_log}"
    assert not result.qemu_died, f"QEMU died: {result.qemu_message}; {where}"
    assert result.qemu_survived and result.qemu_state == "running", (result.qemu_state, where)
    assert result.qemu_exit_status == 0, f"QMP quit: exit status {result.qemu_exit_status}; {where}"
    assert result.guest is not None and result.guest.get("case") == case, where
    assert result.guest.get("canary_ok") == 1, where
    assert result.guest.get("device_ok") == 1, f"the device did not work again; {where}"


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("wait", ["poll", "irq"])
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_microguest_qmp_quit_while_busy(variant, wait, microguest_kernel, tmp_path):
    """QMP quit while the guest keeps the data-plane thread polling (or raising
    interrupts): the thread is stopped and joined with the global mutex held,
    so it must neither spin on nor wait for that mutex."""
    binary, spec = _variant(variant)
    disk = _micro_disk(tmp_path)
    cmdline = mg.guest_cmdline(Workload("randread", "4k", 1, 1), 100_000_000, wait,
                               timeout_ms=60000)
    vm_spec = mg.microguest_spec(binary, "tcg", disk, spec, cmdline, tmp_path / "console.log",
                                 kernel=microguest_kernel)
    with VM(vm_spec) as vm:
        vm.wait_until(lambda text: mg.BEGIN_MARK in text, 60, "start of I/O")
        time.sleep(1.0)                       # well into the run, the thread busy
        vm.check_alive("during I/O")
        assert mg.RESULT_PREFIX not in vm.console(), "the run ended before the quit"
        t0 = time.monotonic()
        vm.quit()
        status = vm.wait_exit(20)
        took = time.monotonic() - t0
    assert status == 0, f"exit status {status} after QMP quit: {tail(vm.process.output())}"
    assert took < 10, f"QMP quit took {took:.1f} s"


# =============================================================== Linux fio guest (TCG)

LINUX_DISK_BYTES = 64 << 20
BOOT_TIMEOUT_S = 180.0
SSH_TIMEOUT_S = 90.0


@pytest.fixture
def linux_disk(tmp_path) -> Path:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, LINUX_DISK_BYTES)
    return path


@contextmanager
def booted(variant: str, guest, disk: Path, logs: Path):
    """Boot the fio guest under TCG on disk; yields (vm, ssh connection)."""
    from harness.fio_jobs import open_connection

    binary, spec = _variant(variant)
    vm_spec = linux_spec(binary, accel_named("tcg"), guest, console_log=logs / "console.log",
                         legacy=True, memory_mb=max(512, guest.min_memory_mb), disk=disk,
                         variant=spec)
    with VM(vm_spec) as vm:
        vm.wait_for_marker(guest.marker, timeout=BOOT_TIMEOUT_S)
        conn = open_connection(vm_spec.ssh_port, guest, timeout=SSH_TIMEOUT_S)
        try:
            yield vm, conn
        finally:
            conn.close()


def sh(conn, command: str, timeout: float = 120.0, check: bool = True):
    """Run a shell command in the guest; the fabric Result."""
    result = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
    if check:
        assert result.exited == 0, (f"guest command failed with {result.exited}: {command}: "
                                    f"{(result.stderr or result.stdout).strip()[-500:]}")
    return result


def disk_ios(conn, device: str) -> int:
    """Reads + writes completed on the guest's disk so far (/sys/block/*/stat)."""
    fields = sh(conn, f"cat /sys/block/{Path(device).name}/stat").stdout.split()
    return int(fields[0]) + int(fields[4])


def start_background_fio(conn, device: str, runtime_s: int = 60) -> None:
    """A long randrw fio that keeps running after the SSH command returns."""
    fio = shlex.join(["fio", "--name=bg", f"--filename={device}", "--direct=1",
                      "--ioengine=libaio", "--rw=randrw", "--bs=4k", "--iodepth=16",
                      f"--runtime={runtime_s}", "--time_based", "--randrepeat=0"])
    sh(conn, f"setsid {fio} >/tmp/bg-fio.log 2>&1 </dev/null &")


def assert_io_in_flight(conn, device: str) -> None:
    """fio is alive and the disk completes requests (sampled 1 s apart)."""
    first = disk_ios(conn, device)
    time.sleep(1.0)
    alive = sh(conn, "pidof fio >/dev/null && echo alive", check=False).stdout
    second = disk_ios(conn, device)
    log = sh(conn, "cat /tmp/bg-fio.log", check=False).stdout
    assert "alive" in alive, f"the background fio is not running: {log[-500:]}"
    assert second > first, f"no I/O completed on {device} in 1 s (stat {first} -> {second})"


def wait_marker_count(vm, marker: str, count: int, timeout: float) -> float:
    """Wait until the console shows marker `count` times (after a reset); seconds waited."""
    started = time.monotonic()
    while True:
        vm.check_alive()
        seen = _read(vm.spec.console_log).count(marker)
        if seen >= count:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the guest printed {marker!r} {seen} times, not {count}, within "
                                 f"{timeout:.0f} s (console: {vm.spec.console_log})")
        time.sleep(0.1)


def reconnect(vm, guest, timeout: float = SSH_TIMEOUT_S):
    from harness.fio_jobs import open_connection
    return open_connection(vm.spec.ssh_port, guest, timeout=timeout)


@pytest.mark.e2e
@pytest.mark.timeout(420)
@pytest.mark.parametrize("variant", VARIANTS)
def test_quit_during_io(variant, fio_guest, linux_disk, tmp_path, record_property):
    with booted(variant, fio_guest, linux_disk, tmp_path) as (vm, conn):
        start_background_fio(conn, fio_guest.device, runtime_s=60)
        time.sleep(3.0)
        assert_io_in_flight(conn, fio_guest.device)
        started = time.monotonic()
        vm.quit()
        status = vm.wait_exit(30)
        seconds = time.monotonic() - started
        record_property("quit_s", round(seconds, 2))
        print(f"{variant}: QEMU exited {seconds:.2f} s after QMP quit with status {status}")
        assert status is not None, (f"QEMU still running 30 s after QMP quit under I/O "
                                    f"(log: {vm.spec.stderr_log})")
        assert seconds < 5.0, f"QEMU took {seconds:.1f} s to quit under I/O"
        assert status == 0, f"QEMU exited with status {status} after QMP quit: {tail(vm.process.output())}"


@pytest.mark.e2e
@pytest.mark.timeout(480)
@pytest.mark.parametrize("variant", VARIANTS)
def test_reset_during_io(variant, fio_guest, linux_disk, tmp_path, record_property):
    from harness.fio_jobs import run_fio

    with booted(variant, fio_guest, linux_disk, tmp_path) as (vm, conn):
        start_background_fio(conn, fio_guest.device, runtime_s=60)
        time.sleep(3.0)
        assert_io_in_flight(conn, fio_guest.device)
        vm.system_reset()
        conn.close()
        reboot_s = wait_marker_count(vm, fio_guest.marker, 2, BOOT_TIMEOUT_S)
        record_property("reboot_s", round(reboot_s, 2))
        conn2 = reconnect(vm, fio_guest)
        try:
            # a fresh boot: the background fio of the first one is gone
            assert "fio" not in sh(conn2, "ps -o comm").stdout.split()
            run = run_fio(conn2, Workload("randrw", "4k", 8, 1), runtime_s=3, ramp_s=0,
                          timeout=120, device=fio_guest.device)
        finally:
            conn2.close()
        job = run.data["jobs"][0]
        print(f"{variant}: rebooted in {reboot_s:.1f} s; then {job['read']['iops']:.0f} read + "
              f"{job['write']['iops']:.0f} write IOPS")
        assert job["error"] == 0
        assert job["read"]["iops"] > 0 and job["write"]["iops"] > 0
        assert vm.shutdown(timeout=20) == 0
    assert _read(tmp_path / "console.log").count(fio_guest.marker) == 2


VERIFY_JOBS = [(rw, bs, qd) for rw in ("randwrite", "write") for bs in ("4k", "64k")
               for qd in (1, 64)]
VERIFY_SIZE = "16M"


def verify_fio_command(device: str) -> str:
    """One fio run, jobs one after another (stonewall), each writing then verifying
    its own 16 MiB region with crc32c; a failed verify is fatal."""
    argv = ["fio", f"--filename={device}", "--direct=1", "--ioengine=libaio",
            "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0",
            f"--size={VERIFY_SIZE}", "--output-format=json"]
    for i, (rw, bs, qd) in enumerate(VERIFY_JOBS):
        argv += [f"--name={rw}-{bs}-qd{qd}", "--stonewall", f"--rw={rw}", f"--bs={bs}",
                 f"--iodepth={qd}", f"--offset={(i % 4) * 16}M"]
    return shlex.join(argv)


@pytest.mark.e2e
@pytest.mark.timeout(480)
@pytest.mark.parametrize("variant", VARIANTS)
def test_integrity(variant, fio_guest, linux_disk, tmp_path, record_property):
    command = verify_fio_command(fio_guest.device)
    with booted(variant, fio_guest, linux_disk, tmp_path) as (vm, conn):
        started = time.monotonic()
        result = sh(conn, command, timeout=360, check=False)
        seconds = time.monotonic() - started
        (tmp_path / "verify.json").write_text(result.stdout)
        (tmp_path / "verify.stderr").write_text(result.stderr)
        assert vm.shutdown(timeout=20) == 0
    record_property("verify_s", round(seconds, 1))
    data = parse_fio_output(result.stdout)
    jobs = {job["jobname"]: job for job in data["jobs"]}
    print(f"{variant}: {len(jobs)} verify jobs in {seconds:.0f} s")
    assert result.exited == 0, f"fio exited with {result.exited}: {result.stderr.strip()[-800:]}"
    for sign in ("verify failed", "bad magic", "bad header", "verify: bad"):
        assert sign not in result.stderr.lower(), result.stderr[-800:]
    assert set(jobs) == {f"{rw}-{bs}-qd{qd}" for rw, bs, qd in VERIFY_JOBS}
    size = 16 << 20
    for name, job in jobs.items():
        assert job["error"] == 0, f"{name}: fio error {job['error']}"
        assert job.get("total_err", 0) == 0, f"{name}: {job.get('total_err')} errors"
        assert job["write"]["io_bytes"] == size, f"{name}: wrote {job['write']['io_bytes']} bytes"
        # every block read back and checked (crc32c) after the writes
        assert job["read"]["io_bytes"] == size, f"{name}: verified {job['read']['io_bytes']} bytes"


FS_BLOCKS_1K = 32768                 # the ext2 file system: the first 32 MiB
RAW_OFFSET_MB, RAW_MB = 40, 8        # raw sectors past it: 40..48 MiB
FILES = {"f-small": (4096, 3), "f-large": (65536, 64), "f-odd": (512, 37)}  # bs, count


@pytest.mark.e2e
@pytest.mark.timeout(480)
@pytest.mark.parametrize("variant", VARIANTS)
def test_integrity_across_reset(variant, fio_guest, linux_disk, tmp_path, record_property):
    """Files on an ext2 file system and raw sectors, written, synced, then a
    system_reset: after the reboot the guest reads the same checksums, and the
    host finds the raw sectors in the image file."""
    dev = fio_guest.device
    with booted(variant, fio_guest, linux_disk, tmp_path) as (vm, conn):
        if "mke2fs" not in sh(conn, "busybox --list").stdout.split():
            pytest.skip("the fio guest's busybox has no mke2fs: file part not possible")
        sh(conn, f"mke2fs -q -F {dev} {FS_BLOCKS_1K} && mkdir -p /mnt && mount -t ext2 {dev} /mnt")
        for name, (bs, count) in FILES.items():
            sh(conn, f"dd if=/dev/urandom of=/mnt/{name} bs={bs} count={count} 2>/dev/null")
        sh(conn, f"dd if=/dev/urandom of=/tmp/raw bs=1M count={RAW_MB} 2>/dev/null && "
                 f"dd if=/tmp/raw of={dev} bs=1M seek={RAW_OFFSET_MB} conv=fsync 2>/dev/null")
        before = sh(conn, "cd /mnt && sha256sum " + " ".join(FILES) + " && sha256sum /tmp/raw "
                          "&& sync").stdout
        files_before = _checksums(before)
        raw_before = files_before.pop("/tmp/raw")
        assert set(files_before) == set(FILES)
        vm.system_reset()
        conn.close()
        wait_marker_count(vm, fio_guest.marker, 2, BOOT_TIMEOUT_S)
        conn2 = reconnect(vm, fio_guest)
        try:
            sh(conn2, f"mkdir -p /mnt && mount -t ext2 {dev} /mnt")
            files_after = _checksums(sh(conn2, "cd /mnt && sha256sum " + " ".join(FILES)).stdout)
            sizes = sh(conn2, "cd /mnt && wc -c " + " ".join(FILES)).stdout
            raw_after = sh(conn2, f"dd if={dev} bs=1M skip={RAW_OFFSET_MB} count={RAW_MB} "
                                  "2>/dev/null | sha256sum").stdout.split()[0]
            sh(conn2, "umount /mnt")
        finally:
            conn2.close()
        assert vm.shutdown(timeout=20) == 0
    for name, (bs, count) in FILES.items():
        assert f"{bs * count} {name}" in sizes, f"{name}: wrong size after reset: {sizes}"
    assert files_after == files_before, "files changed across system_reset"
    assert raw_after == raw_before, "raw sectors read back differently after system_reset"
    with open(linux_disk, "rb") as fh:
        fh.seek(RAW_OFFSET_MB << 20)
        host = hashlib.sha256(fh.read(RAW_MB << 20)).hexdigest()
    assert host == raw_before, "the image file does not hold what the guest wrote and synced"


def _checksums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1]] = parts[0]
    return sums
