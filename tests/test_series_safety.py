"""Safety of the data plane against the block layer, RAM changes and races (issue 14, part 2).

Each test drives one thing a guest or a management tool may legally do while
the data-plane thread runs, and asserts that QEMU neither crashes nor corrupts
nor silently misbehaves:

* MSI-X: the micro-guest (mode=msix-churn) masks, unmasks and re-targets the
  queue's vector while requests run; no completion and no pending interrupt
  may be lost, no message may arrive while masked;
* block layer: drive_del, snapshots, transaction, block_resize, eject, change
  and block_stream over QMP get "Device '...' is in use"; werror/rerror the
  data plane cannot honour are refused at start;
* Linux AIO: with a small fs.aio-max-nr the AIO context is small and
  io_submit() returns EAGAIN under load: requests are retried, none fails;
* cache=directsync: the data plane's O_DIRECT descriptor is also O_DSYNC;
* thread creation failing (a pids cgroup limit): a clear error, no abort, and
  the device works again after a reset once threads can be created;
* misaligned guest buffers (mode=misaligned): bounced, the data verified;
* guest RAM changing under the thread (an ivshmem BAR moved and disabled,
  mode=ram-change): the thread follows the change and never writes through a
  stale mapping;
* failed reads report a used length of 1 (the status byte only); a broken
  vring stays broken across a VM stop/cont; the build has no redundant
  declarations from iov.h.

The tests run on the data-plane builds (dataplane, poll) under TCG.  Tests
whose path differs under KVM take the accelerator from $HARNESS_SAFETY_ACCELS
(comma-separated, default "tcg"; e.g. HARNESS_SAFETY_ACCELS=kvm,tcg on a host
whose KVM runs the micro-guest); a kvm case skips when /dev/kvm cannot be
opened.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import microguest as mg
from harness.config import VariantSpec
from harness.errors import UserError
from harness.matrix import Workload
from harness.vm import VM, VMSpec, qemu_argv

from conftest import built_binary_or_skip

DATA_PLANE_VARIANTS = ("dataplane", "poll")
DISK_BYTES = 64 << 20
O_DSYNC = 0o10000
O_DIRECT = 0o40000


def _accels() -> list[str]:
    raw = os.environ.get("HARNESS_SAFETY_ACCELS", "tcg")
    accels = [a.strip() for a in raw.split(",") if a.strip()]
    bad = [a for a in accels if a not in ("tcg", "kvm")]
    if bad:
        raise UserError(f"HARNESS_SAFETY_ACCELS={raw!r}: use tcg and/or kvm, comma-separated")
    return accels


ACCELS = _accels()


def _variant(name: str) -> tuple[str, VariantSpec]:
    return str(built_binary_or_skip(name)), VariantSpec(name=name)


def _kvm_or_skip(accel: str) -> None:
    if accel != "kvm":
        return
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        pytest.skip(f"/dev/kvm cannot be opened ({exc.strerror}): the kvm case needs it")
    os.close(fd)


@pytest.fixture(scope="session")
def kernel() -> Path:
    try:
        return mg.build_microguest()
    except UserError as exc:
        pytest.skip(f"cannot build the micro-guest: {exc}")


@pytest.fixture
def disk(tmp_path) -> Path:
    path = tmp_path / "disk.img"
    with open(path, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, DISK_BYTES)
    return path


# ---------------------------------------------------------------- a running guest

QMP_TIMEOUT_S = 20.0  # a monitor busy beside a TCG guest on a loaded host answers late


@dataclass
class Guest:
    """A launched micro-guest (vm.VM) and what the tests ask of it."""

    vm: VM

    def text(self) -> str:
        return self.vm.console()

    def where(self) -> str:
        return f"console: {self.vm.spec.console_log}, QEMU output: {self.vm.spec.stderr_log}"

    def qemu_output(self) -> str:
        return self.vm.process.output()

    @property
    def pid(self) -> int | None:
        return self.vm.pid

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status once it has exited, else None."""
        return self.vm.returncode

    def wait_for(self, marker: str, timeout: float, count: int = 1) -> None:
        self.vm.wait_until(lambda text: text.count(marker) >= count, timeout,
                           f"{marker!r} from the guest")

    def result(self, timeout: float, count: int = 1) -> dict[str, Any]:
        self.wait_for(mg.RESULT_PREFIX, timeout, count)
        deadline = time.monotonic() + 10
        while not self.text().rstrip("\x00").endswith("\n") and time.monotonic() < deadline:
            time.sleep(0.05)
        data = mg.find_line(self.text(), mg.RESULT_PREFIX)
        assert data is not None, self.where()
        return data

    def exit_status(self, timeout: float) -> int:
        """QEMU's exit status once the guest has powered off."""
        status = self.vm.wait_exit(timeout)
        if status is None:
            raise AssertionError(f"QEMU still runs {timeout:.0f} s after the guest finished; "
                                 f"{self.where()}")
        return status

    def qmp_cmd(self, command: str, **arguments: Any) -> dict[str, Any]:
        """One QMP command; the whole reply ({"return": ...} or {"error": ...})."""
        return self.vm.qmp_reply(command, QMP_TIMEOUT_S, **arguments)

    def hmp(self, command_line: str) -> str:
        reply = self.qmp_cmd("human-monitor-command", **{"command-line": command_line})
        assert "return" in reply, reply
        return reply["return"]

    def quit(self, grace_s: float = 20.0) -> int | None:
        """QMP quit; QEMU's exit status (killed after grace_s: a signal's)."""
        return self.vm.shutdown(grace_s)


def guest_spec(binary: str, accel: str, disk: Path, spec: VariantSpec, cmdline: str,
               console: Path, kernel: Path, *, drive_opts: str = "", aio: str = "native",
               cache: str = "none", reboot: bool = False, memory_mb: int = 128) -> VMSpec:
    """The micro-guest's VM (microguest_spec) with the drive options a test needs;
    drive_opts: more of them as written on QEMU's command line (",werror=stop")."""
    options = {"cache": cache, "aio": aio,
               **dict(item.split("=", 1) for item in drive_opts.split(",") if item)}
    return replace(mg.microguest_spec(binary, accel, disk, spec, cmdline, console,
                                      kernel=kernel, memory_mb=memory_mb),
                   drive_options=options, no_reboot=not reboot)


@contextmanager
def running_guest(vm_spec: VMSpec, *, paused: bool = False,
                  extra: tuple[str, ...] = ()) -> Iterator[Guest]:
    """The guest launched (VM; paused: until the test sends cont, QEMU's own options
    plus extra); QEMU killed and reaped afterwards, whatever happened."""
    vm = VM(vm_spec, paused=paused)
    vm.add_args(*extra)
    try:
        vm.launch()
        yield Guest(vm)
    finally:
        vm.kill()


def bench_cmdline(rw: str, qd: int, n: int, wait: str, *, extra: str = "",
                  verify: bool = False, timeout_ms: int = 10000, seed: int = 5) -> str:
    line = mg.guest_cmdline(Workload(rw, "4k", qd, 1), n, wait, verify=verify, seed=seed,
                            timeout_ms=timeout_ms)
    return f"{line} {extra}".strip()


def assert_clean_quit(guest: Guest) -> None:
    status = guest.quit()
    assert status == 0, f"QMP quit: exit status {status}: {guest.qemu_output()[-800:]}"
    assert "Assertion" not in guest.qemu_output() and "Aborted" not in guest.qemu_output()


# ============================================== INTx raised again after each ISR read


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kick", ["honour", "every"])
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_intx_after_isr_read_is_never_lost(variant, kick, kernel, disk, tmp_path):
    """The poll variant does not raise INTx while the ISR is still set; the guest
    clears it by reading it in its handler, and the next completion must raise the
    line again.  A lost raise only shows as a wakeup by the guest's 10 Hz timer
    with a completion waiting (missed_irqs): count them, at QD1, where every
    request needs its own interrupt."""
    binary, spec = _variant(variant)
    n = 3000
    result = mg.run_microguest_point(binary, "tcg", disk, spec, Workload("randread", "4k", 1, 1),
                                     n, "intx", tmp_path / "console.log", timeout=200,
                                     kernel=kernel, kick=kick)
    where = f"console: {result.log}"
    assert result.ok and result.done == n and result.errors == 0, f"{result.raw}; {where}"
    assert result.raw["irqs"] > 0, where
    assert result.raw["missed_irqs"] <= n // 300, \
        f"{result.raw['missed_irqs']} completions got no interrupt; {where}"
    assert result.raw["unexpected_irqs"] == 0, where


# ============================================================ 4. MSI-X churn


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_msix_mask_and_retarget_lose_no_completion(variant, accel, kernel, disk, tmp_path):
    """mode=msix-churn: the queue vector masked (pending bit set, message on
    unmask, none while masked) and moved between two table entries while
    requests run; every request completes."""
    binary, spec = _variant(variant)
    _kvm_or_skip(accel)
    n = 3000
    cmdline = bench_cmdline("randread", 4, n, "irq", extra="mode=msix-churn churn=4")
    vm_spec = guest_spec(binary, accel, disk, spec, cmdline, tmp_path / "console.log", kernel)
    with running_guest(vm_spec) as guest:
        result = guest.result(timeout=240)
        status = guest.exit_status(30)
    churn = result.get("churn", {})
    print(f"{variant}/{accel}: {result.get('done')} done, churn {churn}")
    where = guest.where()
    assert result.get("mode") == "msix-churn", f"{result}; {where}"
    assert result.get("done") == n and result.get("errors") == 0, f"{result}; {where}"
    assert not result.get("timed_out"), f"a completion never came: {result}; {where}"
    assert not mg.churn_faults(result), f"{mg.churn_faults(result)}: {churn}; {where}"
    assert result.get("ok") == 1, f"{result}; {where}"
    assert status in mg.CLEAN_EXITS, f"QEMU exit status {status}; {where}"


# ============================================================ 1. block layer


def _block_commands(snapshot: Path, new_image: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, QMP command, arguments) of each command that changes the drive."""
    return [
        ("snapshot_blkdev", "blockdev-snapshot-sync",
         {"device": "disk0", "snapshot-file": str(snapshot), "format": "qcow2"}),
        # the pinned tree's transaction: blockdev-group-snapshot-sync
        ("transaction", "blockdev-group-snapshot-sync",
         {"devlist": [{"device": "disk0", "snapshot-file": str(snapshot),
                       "format": "qcow2"}]}),
        ("block_resize", "block_resize", {"device": "disk0", "size": DISK_BYTES * 2}),
        ("eject", "eject", {"device": "disk0", "force": True}),
        ("change", "change", {"device": "disk0", "target": str(new_image)}),
        ("block_stream", "block_stream", {"device": "disk0"}),
    ]


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_block_commands_refused_while_data_plane_runs(variant, kernel, disk, tmp_path):
    """Every command that would change the drive under the thread's own file
    descriptor gets a clear error naming the device; the guest's writes and
    reads keep working and the image stays a raw image of the same size."""
    binary, spec = _variant(variant)
    snapshot, new_image = tmp_path / "snap.qcow2", tmp_path / "other.img"
    new_image.write_bytes(b"\0" * (1 << 20))
    n = 1500
    cmdline = bench_cmdline("randwrite", 4, n, "poll", verify=True, timeout_ms=60000)
    vm_spec = guest_spec(binary, "tcg", disk, spec, cmdline, tmp_path / "console.log", kernel)
    refused: dict[str, str] = {}
    accepted: list[str] = []
    with running_guest(vm_spec) as guest:
        guest.wait_for(mg.BEGIN_MARK, 60)
        for name, command, args in _block_commands(snapshot, new_image):
            reply = guest.qmp_cmd(command, **args)
            if "error" in reply:
                refused[name] = reply["error"].get("desc", "")
            else:
                accepted.append(name)
        out = guest.hmp("drive_del disk0")
        if out.strip():
            refused["drive_del"] = out.strip()
        else:
            accepted.append("drive_del")
        result = guest.result(timeout=240)
        status = guest.exit_status(30)
    print(f"{variant}: refused {refused}; accepted {accepted}")
    assert not accepted, f"accepted while the data plane runs: {accepted} (refused: {refused})"
    for name, desc in refused.items():
        assert "disk0" in desc and "in use" in desc, f"{name}: unclear error {desc!r}"
    assert not snapshot.exists(), "a snapshot file was created"
    assert result.get("ok") == 1 and result.get("mismatches") == 0, f"{result}; {guest.where()}"
    assert disk.stat().st_size == DISK_BYTES
    assert status in mg.CLEAN_EXITS


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("option", ["werror=stop", "werror=enospc", "werror=ignore",
                                    "rerror=stop", "rerror=ignore"])
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_error_action_it_cannot_honour_is_refused(variant, option, kernel, disk, tmp_path):
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec, bench_cmdline("randread", 1, 10, "poll"),
                         tmp_path / "console.log", kernel, drive_opts=f",{option}")
    result = subprocess.run(qemu_argv(vm_spec, paused=False), capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    message = result.stderr + result.stdout
    assert result.returncode != 0, f"QEMU started with {option} on a data-plane drive"
    assert "disk0" in message and option.split("=")[0] in message, message[-500:]


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("option", ["", ",werror=report,rerror=report"])
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_error_action_report_is_accepted(variant, option, kernel, disk, tmp_path):
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec, bench_cmdline("randread", 1, 50, "poll"),
                         tmp_path / "console.log", kernel, drive_opts=option)
    with running_guest(vm_spec) as guest:
        data = guest.result(timeout=90)
    assert data.get("ok") == 1, f"{data}; {guest.qemu_output()[-500:]}"


# ============================================================ 6. io_submit EAGAIN

AIO_MAX_NR = Path("/proc/sys/fs/aio-max-nr")
AIO_NR = Path("/proc/sys/fs/aio-nr")


@contextmanager
def aio_max_nr_headroom(headroom: int) -> Iterator[None]:
    """Lower fs.aio-max-nr to what is in use plus headroom; always restored.

    The limit is system-wide: it is only held while QEMU sets up its AIO
    contexts (a second or two), so that other processes on the machine are
    affected as briefly as possible.
    """
    try:
        old = AIO_MAX_NR.read_text().strip()
        AIO_MAX_NR.write_text(old + "\n")
    except OSError as exc:
        pytest.skip(f"cannot write {AIO_MAX_NR} ({exc.strerror}): needs root on the host")
    try:
        AIO_MAX_NR.write_text(f"{int(AIO_NR.read_text()) + headroom}\n")
        yield
    finally:
        AIO_MAX_NR.write_text(old + "\n")


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_small_aio_context_requeues_instead_of_failing(variant, kernel, disk, tmp_path):
    """With fs.aio-max-nr leaving room for a single-request AIO context, the
    data plane takes the small context and io_submit() returns EAGAIN at
    queue depth 32: requests wait and are retried, none fails."""
    binary, spec = _variant(variant)
    n = 3000
    # 128 requests in flight (one indirect descriptor each): more than the
    # ring of the smallest AIO context holds (126 events with one page)
    cmdline = bench_cmdline("randwrite", 128, n, "poll", verify=True, timeout_ms=60000,
                            extra="indirect=1")
    # aio=threads: the block layer's own Linux AIO context is not the point
    vm_spec = guest_spec(binary, "tcg", disk, spec, cmdline, tmp_path / "console.log", kernel,
                         aio="threads")
    with ExitStack() as stack:
        with aio_max_nr_headroom(1):
            guest = stack.enter_context(running_guest(vm_spec, paused=True))
            # the monitor answers once the devices (and their AIO contexts) exist
            guest.qmp_cmd("query-status")
        reply = guest.qmp_cmd("cont")
        assert "return" in reply, reply
        result = guest.result(timeout=240)
        status = guest.exit_status(30)
    output = guest.qemu_output()
    print(f"{variant}: {result.get('done')} done, {result.get('errors')} errors; QEMU: "
          f"{output.strip()[-300:]}")
    assert "limited to" in output, f"the AIO context was not limited: {output[-500:]}"
    assert "context full" in output, f"io_submit() never ran out of room: {output[-500:]}"
    assert result.get("qd") == 128, result
    assert result.get("errors") == 0, f"requests failed: {result}; {guest.where()}"
    assert result.get("ok") == 1 and result.get("verified") == n, f"{result}; {guest.where()}"
    assert status in mg.CLEAN_EXITS


# ============================================================ 3. cache=directsync


def _image_fds(pid: int, image: Path) -> list[int]:
    """Open flags of each of QEMU's descriptors of the image file."""
    flags = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if Path(os.readlink(fd)).resolve() != image.resolve():
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("flags:"):
                flags.append(int(line.split()[1], 8))
    return flags


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("cache", ["directsync", "none"])
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_cache_mode_is_honoured(variant, cache, kernel, disk, tmp_path):
    """cache=directsync: every O_DIRECT descriptor of the image is O_DSYNC and
    no write cache is offered (the guest would never flush); cache=none: a
    write cache is offered, flushes reach fdatasync."""
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec,
                         bench_cmdline("randwrite", 4, 300, "poll", extra="halt=1"),
                         tmp_path / "console.log", kernel, cache=cache)
    with running_guest(vm_spec) as guest:
        result = guest.result(timeout=120)
        fds = _image_fds(guest.pid, disk)
        assert_clean_quit(guest)
    direct = [f for f in fds if f & O_DIRECT]
    print(f"{variant}/{cache}: image fds flags {[oct(f) for f in fds]}")
    assert result.get("ok") == 1, result
    assert direct, f"no O_DIRECT descriptor of the image: {[oct(f) for f in fds]}"
    wce = bool(result.get("host_features", 0) & (1 << 9))   # VIRTIO_BLK_F_WCACHE
    if cache == "directsync":
        assert all(f & O_DSYNC for f in direct), \
            f"an O_DIRECT descriptor without O_DSYNC: {[oct(f) for f in direct]}"
        assert not wce, "write cache offered with cache=directsync"
    else:
        assert wce, "no write cache offered with cache=none: the guest would not flush"


# ============================================================ 5. thread creation fails

PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@contextmanager
def pids_cgroup() -> Iterator[Path]:
    """A pids cgroup of our own (v1 hierarchy), removed afterwards."""
    if not (PIDS_CGROUP / "cgroup.procs").exists():
        pytest.skip(f"no cgroup v1 pids controller at {PIDS_CGROUP}")
    group = PIDS_CGROUP / f"s2-safety-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a pids cgroup ({exc.strerror}): needs root")
    try:
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_thread_creation_failure_is_an_error_not_an_abort(variant, kernel, disk, tmp_path):
    """QEMU in a pids cgroup that allows no more threads when the guest starts
    the device: pthread_create fails.  QEMU must report it, stay up and
    answer QMP; after the limit is lifted a system_reset makes the device work."""
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec,
                         bench_cmdline("randread", 4, 200, "poll", extra="halt=1",
                                       timeout_ms=3000),
                         tmp_path / "console.log", kernel, reboot=True)
    with pids_cgroup() as group, running_guest(vm_spec, paused=True) as guest:
        # once the monitor answers, the devices exist with their threads (TCG
        # vCPU, the block layer's AIO thread of the geometry probe)
        guest.qmp_cmd("query-status")
        (group / "cgroup.procs").write_text(f"{guest.pid}\n")
        threads = len(list(Path(f"/proc/{guest.pid}/task").iterdir()))
        (group / "pids.max").write_text(f"{threads}\n")
        assert "return" in guest.qmp_cmd("cont")
        deadline = time.monotonic() + 120
        while "data plane thread" not in guest.qemu_output():
            assert guest.returncode is None, \
                f"QEMU died ({guest.returncode}): {guest.qemu_output()[-800:]}"
            assert time.monotonic() < deadline, \
                f"no thread-creation error reported: {guest.qemu_output()[-800:]}"
            time.sleep(0.1)
        time.sleep(2.0)
        assert guest.returncode is None, \
            f"QEMU died ({guest.returncode}) after the failed start: " \
            f"{guest.qemu_output()[-800:]}"
        status = guest.qmp_cmd("query-status")
        assert status.get("return", {}).get("status") == "running", status
        output = guest.qemu_output()
        # once per start: SeaBIOS's and the micro-guest's device setup
        assert output.count("cannot create the data plane thread") >= 1, output[-800:]
        assert "pthread_create failed" not in output, output[-800:]
        (group / "pids.max").write_text("max\n")
        results_before = guest.text().count(mg.RESULT_PREFIX)
        assert "return" in guest.qmp_cmd("system_reset")
        result = guest.result(timeout=180, count=results_before + 1)
        assert result.get("ok") == 1, f"the device does not work after the reset: {result}; " \
                                      f"{guest.where()}"
        assert_clean_quit(guest)


# ============================================================ 7. misaligned buffers


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_misaligned_buffers_are_bounced(variant, kernel, disk, tmp_path):
    """mode=misaligned: data buffers at odd addresses and of odd lengths (the
    total a multiple of 512) are written and read back correctly."""
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec, "mode=misaligned n=200 seed=3 timeout_ms=20000",
                         tmp_path / "console.log", kernel)
    with running_guest(vm_spec) as guest:
        result = guest.result(timeout=240)
        status = guest.exit_status(30)
    print(f"{variant}: {result}")
    assert result.get("mode") == "misaligned"
    assert result.get("aligned_errors") == 0, f"even aligned requests failed: {result}"
    assert result.get("errors") == 0, f"misaligned requests failed: {result}; {guest.where()}"
    assert result.get("mismatches") == 0, f"data read back wrong: {result}"
    assert result.get("ok") == 1 and result.get("done") == 400, result
    assert status in mg.CLEAN_EXITS


# ============================================================ 2. guest RAM changes


def rc_pattern(sector: int) -> bytes:
    """The 4 KiB the micro-guest expects at sector (safety.c: rc_pattern)."""
    return bytes((sector * 131 + (sector >> 8) * 17 + k * 7 + 0x3C) & 0xFF for k in range(4096))


def _ram_change_run(variant: str, kernel: Path, disk: Path, tmp_path: Path,
                    cmdline: str) -> tuple[dict[str, Any], bytes, dict[int, bytes]]:
    """Boot mode=ram-change with an ivshmem device; (result, first 4 KiB of
    the shared memory afterwards, the blocks the host wrote)."""
    binary, spec = _variant(variant)
    blocks = {128: rc_pattern(128), 256: rc_pattern(256), 384: rc_pattern(384)}
    assert len(set(blocks.values())) == 3
    with open(disk, "r+b") as fh:
        for sector, data in blocks.items():
            fh.seek(sector * 512)
            fh.write(data)
    shm_name = f"s2-safety-{uuid.uuid4().hex[:8]}"
    shm = Path("/dev/shm") / shm_name
    vm_spec = guest_spec(binary, "tcg", disk, spec, cmdline, tmp_path / "console.log", kernel)
    try:
        ivshmem = ("-device", f"ivshmem,shm={shm_name},size=1M")
        with running_guest(vm_spec, extra=ivshmem) as guest:
            result = guest.result(timeout=120)
            guest.exit_status(30)
        shared = shm.read_bytes()[:4096] if shm.exists() else b""
    finally:
        shm.unlink(missing_ok=True)
    print(f"{variant}: {result}")
    assert result.get("mode") == "ram-change", f"{result}; {guest.where()}"
    assert result.get("at_a") == "ok", f"read into the ivshmem BAR: {result}"
    assert shared, f"no shared memory file {shm}"
    return result, shared, blocks


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_no_write_into_unmapped_guest_ram(variant, kernel, disk, tmp_path):
    """ram-change unmap_first=1: the BAR disabled after a read into it, a
    second read into the same address must fail and must not write the
    shared memory behind it."""
    result, shared, blocks = _ram_change_run(variant, kernel, disk, tmp_path,
                                             "mode=ram-change unmap_first=1 timeout_ms=3000")
    assert shared != blocks[384], \
        "the data plane wrote into RAM the guest had unmapped (a stale host pointer)"
    assert result.get("after_unmap") != "ok", f"read into a disabled BAR succeeded: {result}"
    assert shared == blocks[128]


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_thread_follows_guest_ram_changes(variant, kernel, disk, tmp_path):
    """mode=ram-change with an ivshmem RAM BAR: a read into the BAR works; the
    BAR moved, a read into its new address works (the data plane followed
    the change); the BAR disabled, a read into it fails and leaves the shared
    memory alone (no write through a stale mapping)."""
    result, shared, blocks = _ram_change_run(variant, kernel, disk, tmp_path,
                                             "mode=ram-change timeout_ms=3000")
    assert result.get("at_b") == "ok", \
        f"read into the moved BAR failed, the data plane kept the old RAM map: {result}"
    assert result.get("after_unmap") != "ok", f"read into a disabled BAR succeeded: {result}"
    assert shared != blocks[384], "the data plane wrote into RAM that the guest had unmapped"
    assert shared == blocks[256], "the shared memory does not hold the read into the moved BAR"


# ============================================================ 8. smaller items


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_failed_read_reports_only_the_status_byte(variant, kernel, disk, tmp_path):
    """Reads that fail in Linux AIO (past the end of an image truncated on the
    host after QEMU opened it: short reads) complete with IOERR and a used
    length of 1, the status byte: no data was written to the guest."""
    binary, spec = _variant(variant)
    n = 40
    vm_spec = guest_spec(binary, "tcg", disk, spec,
                         f"mode=misaligned rw=read n={n} seed=3 timeout_ms=20000",
                         tmp_path / "console.log", kernel)
    with running_guest(vm_spec, paused=True) as guest:
        guest.qmp_cmd("query-status")      # the drive is open
        os.truncate(disk, 0)
        assert "return" in guest.qmp_cmd("cont")
        result = guest.result(timeout=120)
        guest.exit_status(30)
    print(f"{variant}: {result}")
    assert result.get("reads_only") == 1 and result.get("done") == n, result
    assert result.get("errors") == n, f"reads past the end of the file succeeded: {result}"
    assert result.get("bad_used_len") == 0, \
        f"failed reads reported more than the status byte as written: {result}"


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_broken_vring_stays_broken_across_stop_cont(variant, kernel, disk, tmp_path):
    """hostile status-readonly (the request is taken, then the vring is found
    broken) with pause_ms: QMP stop and cont while the guest waits; the next
    valid read must still get no completion (broken until reset), and after
    the guest resets the device it works."""
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec,
                         "mode=hostile case=status-readonly timeout_ms=1500 halt=1 pause_ms=6000",
                         tmp_path / "console.log", kernel)
    with running_guest(vm_spec) as guest:
        guest.wait_for("MICROGUEST-PAUSE", 90)
        assert "return" in guest.qmp_cmd("stop")
        time.sleep(0.5)
        assert "return" in guest.qmp_cmd("cont")
        guest.wait_for("MICROGUEST-HALT", 90)
        result = mg.find_line(guest.text(), mg.HOSTILE_PREFIX)
        assert_clean_quit(guest)
    print(f"{variant}: {result}")
    assert result is not None and result.get("case") == "status-readonly", guest.where()
    assert result.get("observed") == "no-completion", result
    assert result.get("after_pause") == "timeout", \
        f"stop/cont made a broken vring work again: {result}"
    assert result.get("device_ok") == 1, f"the device did not work after a reset: {result}"


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_build_has_no_redundant_declarations(variant):
    """iosched.h includes iov.h again after virtio-blk.c did: without an
    include guard in iov.h, GCC warns (-Wredundant-decls) on every build."""
    from harness.paths import cache_dir

    built_binary_or_skip(variant)
    log = cache_dir() / "build" / variant / "build.log"
    if not log.is_file():
        pytest.skip(f"no build log {log}")
    # the log keeps every build of the variant: judge the last make only
    text = log.read_text(errors="replace").rpartition("\n$ make")[2]
    if "virtio-blk.o" not in text:
        pytest.skip(f"{log} is not of a build that compiled hw/virtio-blk.c")
    redundant = [line for line in text.splitlines()
                 if "redundant redeclaration" in line and "iov.h" in line]
    assert not redundant, f"{len(redundant)} redundant declarations: {redundant[:3]}"


# ================================== issue 21: what the data-plane thread writes, whom it calls

ALL_VARIANTS = ("baseline",) + DATA_PLANE_VARIANTS


def _threads_named(pid: int, name: str) -> list[int]:
    """The thread ids of process pid whose comm is name."""
    tids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
        except FileNotFoundError:       # the thread ended meanwhile
            continue
        if comm == name:
            tids.append(int(task.name))
    return tids


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_code_read_from_disk_runs_not_its_stale_translation(variant, kernel, disk, tmp_path):
    """mode=stale-code (TCG): the guest reads "return 1" and "return 2" from the
    disk into the same page in turn and calls it after each read.  Each call must
    run the function just read: the block layer's path invalidates the code TCG
    translated from the page, and the data plane's writes into guest RAM (Linux
    AIO, bounce copies) must do the same."""
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec, "mode=stale-code n=6 timeout_ms=20000",
                         tmp_path / "console.log", kernel)
    with running_guest(vm_spec) as guest:
        result = guest.result(timeout=120)
        status = guest.exit_status(30)
    print(f"{variant}: {result}")
    assert result.get("mode") == "stale-code", f"{result}; {guest.where()}"
    assert result.get("io") == "ok", f"the guest's requests failed: {result}; {guest.where()}"
    assert result.get("ran") == 6, result
    assert result.get("stale") == 0, \
        f"the guest ran the old code after a read over it (first in round " \
        f"{result.get('first_stale_round')}): {result}"
    assert result.get("ok") == 1, result
    assert status in mg.CLEAN_EXITS


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", DATA_PLANE_VARIANTS)
def test_msix_message_into_vga_registers_leaves_one_thread(variant, kernel, disk, tmp_path):
    """mode=msix-vga (TCG): the guest addresses the queue's MSI-X message to the
    cirrus VGA's bank register, so that each "interrupt" the device sends maps or
    unmaps VRAM as guest RAM, i.e. changes the memory map under the data plane.
    QEMU must stay up, every request complete, exactly one thread named
    "dataplane" exist afterwards (the thread must never restart itself from
    inside), and QMP quit must end QEMU cleanly."""
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec, "mode=msix-vga n=24 timeout_ms=5000 halt=1",
                         tmp_path / "console.log", kernel)
    with running_guest(vm_spec) as guest:
        result = guest.result(timeout=120)
        guest.wait_for("MICROGUEST-HALT", 30)
        time.sleep(0.5)
        alive = guest.returncode is None
        threads = _threads_named(guest.pid, "dataplane") if alive else []
        status = guest.quit() if alive else guest.returncode
        output = guest.qemu_output()
    print(f"{variant}: {result}; dataplane threads {threads}; exit {status}")
    assert alive, f"QEMU died: {output[-800:]}"
    assert result.get("mode") == "msix-vga", f"{result}; {guest.where()}"
    assert result.get("done") == 24 and result.get("ok") == 1, \
        f"requests did not complete: {result}; {guest.where()}"
    # half the rounds expect the register's reset value: most of the others
    # must see the message's write, or the memory map never changed
    assert result.get("vga_writes_seen", 0) >= 18, \
        f"the messages did not reach the VGA register, nothing was tested: {result}"
    assert len(threads) == 1, \
        f"{len(threads)} threads named 'dataplane' (want exactly 1): {threads}; {output[-800:]}"
    assert status == 0, f"QMP quit: exit status {status}: {output[-800:]}"
    assert "Assertion" not in output and "Aborted" not in output, output[-800:]


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_intx_after_msix_disabled_is_raised(variant, kernel, disk, tmp_path):
    """mode=msix-then-intx (TCG): reads with MSI-X interrupts (the device sets
    its ISR bit each time and the guest, rightly, never reads it), then MSI-X
    disabled without a reset and reads waiting for INTx.  Every INTx completion
    must interrupt: the ISR bit left from MSI-X must not make the data plane
    believe the line is up (issue 21 item 5).  A completion the guest only
    found when its 10 Hz timer woke it counts in missed_irqs."""
    binary, spec = _variant(variant)
    vm_spec = guest_spec(binary, "tcg", disk, spec, "mode=msix-then-intx n=16 timeout_ms=5000",
                         tmp_path / "console.log", kernel)
    with running_guest(vm_spec) as guest:
        result = guest.result(timeout=120)
        status = guest.exit_status(30)
    print(f"{variant}: {result}")
    assert result.get("mode") == "msix-then-intx", f"{result}; {guest.where()}"
    assert result.get("msix_done") == 16, f"reads under MSI-X failed: {result}"
    assert result.get("intx_done") == 16, f"reads under INTx failed: {result}"
    assert result.get("missed_irqs") == 0, \
        f"{result.get('missed_irqs')} of 16 INTx completions raised no interrupt: {result}"
    assert result.get("ok") == 1, result
    assert status in mg.CLEAN_EXITS
