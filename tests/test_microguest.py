"""The micro-guest: build, output parsing, and real runs under QEMU.

Runs that need a QEMU binary or a 32-bit-capable gcc skip with the reason.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import microguest as mg
from harness.config import VariantSpec
from harness.devices import image_paths
from harness.errors import InfraError, UserError
from harness.runners.ceiling import host_fio_ceiling
from harness.matrix import Point, Workload
from harness.paths import cache_dir
from harness.proc import cpu_seconds, run
from harness.results import COLUMNS, HOST_VARIANT, parse_device_iops, row_key
from harness.vm import DEBUG_EXIT, qemu_argv

SYSTEM_QEMU = shutil.which("qemu-system-x86_64")
DISK_MB = 64

# captured from a run under Debian's QEMU 7.2 (TCG), histogram shortened
CAPTURED = (
    "MICROGUEST-BOOT tsc_hz=2603998484 ram_mb=63\nMICROGUEST-BEGIN\nMICROGUEST-END\n\n"
    'MICROGUEST-RESULT {"ok":1,"mode":"bench","rw":"randread","bs":4096,"qd":1,'
    '"qd_requested":1,"n":2000,"done":2000,"seq":0,"wait":"poll","msix":0,"errors":0,'
    '"verify":0,"mismatches":0,"verified":0,"timed_out":0,"seed":1,"queue_size":256,'
    '"capacity_sectors":131072,"host_features":2030071380,"notifies":2000,"irqs":0,'
    '"unexpected_irqs":0,"tsc_hz":2603998484,"elapsed_ns":75995021,"iops":26317,'
    '"lat_ns":{"mean":37567,"min":9832,"max":10428759,"p50":10027,"p99":1761721,'
    '"p999":1862391},"hist":[[9831,10224,1225],[10224,10617,289],[10617,11010,40],'
    '[33032,34605,406],[1711386,1812056,20],[1812056,1912726,18],[5033490,5234830,1],'
    '[10066981,10469660,1]]}\n'
)


# ---- pure ----

def test_parse_captured_result():
    result = mg.parse_result(CAPTURED)
    assert result is not None and result.ok
    assert (result.rw, result.bs, result.qd, result.n, result.done) == ("randread", 4096, 1, 2000, 2000)
    assert result.iops == 26317
    assert result.tsc_hz == 2603998484
    assert result.lat_min_ns <= result.p50_ns <= result.p99_ns <= result.p999_ns <= result.lat_max_ns
    assert sum(b[2] for b in result.hist) == 2000
    assert result.bw_mib_s == pytest.approx(26317 * 4096 / 2**20)


def test_hist_percentiles_match_guest_rule():
    result = mg.parse_result(CAPTURED)
    assert mg.hist_percentile(result.hist, 0.50) == pytest.approx(result.p50_ns, rel=0.001)
    assert mg.hist_percentile(result.hist, 0.99) == pytest.approx(result.p99_ns, rel=0.001)
    assert mg.hist_percentile(result.hist, 0.999) == pytest.approx(result.p999_ns, rel=0.001)
    assert math.isnan(mg.hist_percentile([], 0.5))


def test_parse_absent_and_malformed():
    assert mg.parse_result("MICROGUEST-BOOT tsc_hz=1\n") is None
    with pytest.raises(InfraError):
        mg.parse_result('MICROGUEST-RESULT {"ok":1,"rw":\n')
    hostile = mg.find_line('x\nMICROGUEST-HOSTILE {"case":"desc-loop","verdict":"no-completion"}\r\n',
                           mg.HOSTILE_PREFIX)
    assert hostile == {"case": "desc-loop", "verdict": "no-completion"}


def test_failed_result_line():
    result = mg.parse_result('MICROGUEST-RESULT {"ok":0,"mode":"bench","error":"no-virtio-blk"}\n')
    assert result is not None and not result.ok and result.error == "no-virtio-blk"
    row = mg.micro_row("r1", Point("microguest", "v", "d", Workload("randread", "4k", 1, 1), 1), "tcg", result,
                       started_at="t")
    assert row["status"] == "failed" and row["error"] == "no-virtio-blk"


def test_guest_cmdline():
    line = mg.guest_cmdline(Workload("randwrite", "8k", 4, 1), 500, "irq", verify=True, seed=7)
    assert "rw=randwrite" in line and "bs=8192" in line and "qd=4" in line and "n=500" in line
    assert "wait=irq" in line and "verify=1" in line and "seed=7" in line
    with pytest.raises(UserError, match="numjobs"):
        mg.guest_cmdline(Workload("randread", "4k", 1, 2), 10)
    with pytest.raises(UserError, match="wait"):
        mg.guest_cmdline(Workload("randread", "4k", 1, 1), 10, "sleep")
    assert "kick=honour" in line
    line = mg.guest_cmdline(Workload("randread", "4k", 1, 1), 10, "poll-irq-on", kick="every")
    assert "wait=poll-irq-on" in line and "kick=every" in line
    with pytest.raises(UserError, match="kick"):
        mg.guest_cmdline(Workload("randread", "4k", 1, 1), 10, kick="never")


def test_argv_system_variant_with_iothread():
    variant = VariantSpec(name="q72-io", binary="qemu-system-x86_64", iothread=True,
                          aio="io_uring", device_props={"queue-size": "128"})
    argv = qemu_argv(mg.microguest_spec("qemu", "tcg", "/d/a,b.img", variant, "rw=read", "con.log",
                                        kernel="mg.elf", legacy=False))
    text = " ".join(argv)
    assert argv[argv.index("-object") + 1] == "iothread,id=io0"
    assert "virtio-blk-pci,drive=disk0,iothread=io0,queue-size=128" in argv
    assert "if=none,id=disk0,file=/d/a,,b.img,format=raw,cache=none,aio=io_uring" in argv
    assert DEBUG_EXIT in argv and "-serial" in argv and "file:con.log" in argv
    assert "-no-reboot" in argv and "unix:con.qmp,server=on,wait=off" in argv
    assert "-nodefaults" not in text and "-vga" not in text
    assert argv[argv.index("-append") + 1] == "rw=read"


def test_argv_built_variant_has_no_debug_exit():
    argv = qemu_argv(mg.microguest_spec("qemu", "kvm", "d.img", VariantSpec(name="baseline"), "",
                                        "c.log", kernel="mg.elf", memory_mb=64, legacy=True))
    assert DEBUG_EXIT not in argv and "-object" not in argv
    assert "unix:c.qmp,server,nowait" in argv
    assert "pc,accel=kvm" in argv and argv[argv.index("-m") + 1] == "64"
    with pytest.raises(UserError, match="accel 'hvf'"):
        mg.microguest_spec("qemu", "hvf", "d.img", VariantSpec(name="baseline"), "", "c",
                           kernel="k", legacy=True)


def test_micro_row_columns():
    result = mg.parse_result(CAPTURED)
    point = Point("microguest", "baseline", "tmpfs", Workload("randread", "4k", 1, 1), 2)
    row = mg.micro_row("run1", point, "tcg", result, started_at="2026-01-01T00:00:00Z")
    assert tuple(row) == COLUMNS
    assert row_key(row) == point.key
    assert row["guest"] == "microguest" and row["status"] == "ok" and row["rep"] == 2
    assert row["guest_cpu_pct"] == 100.0
    assert row["lat_p50_us"] == pytest.approx(10.027)
    failed = mg.micro_row("run1", point, "tcg", None, started_at="t", error="boom", log_path="x")
    assert failed["status"] == "failed" and failed["error"] == "boom" and math.isnan(failed["iops"])


def test_build_errors_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\necho \"cc1: error: unrecognized command-line option '-m32'\"\n"
                    "exit 1\n")
    fake.chmod(0o755)
    with pytest.raises(UserError, match="gcc-multilib"):
        mg.build_microguest(cc=str(fake))
    with pytest.raises(UserError, match="package gcc"):
        mg.build_microguest(cc=str(tmp_path / "no-such-cc"))


def test_hostile_cases_are_known_to_the_guest():
    source = (mg.SOURCE_DIR / "hostile.c").read_text()
    for case in mg.HOSTILE_CASES:
        assert f'"{case}"' in source, case


# ---- build and run ----

@pytest.fixture(scope="session")
def build_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def kernel(build_cache) -> Path:
    patch = pytest.MonkeyPatch()
    patch.setenv("HARNESS_CACHE", str(build_cache))
    try:
        return mg.build_microguest()
    except UserError as exc:
        pytest.skip(f"gcc cannot build the 32-bit micro-guest: {exc}")
    finally:
        patch.undo()


@pytest.fixture()
def disk(tmp_path) -> Path:
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, DISK_MB << 20)
    return path


def test_build_is_multiboot_elf_and_cached(kernel, build_cache, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(build_cache))
    data = kernel.read_bytes()
    assert data[:5] == b"\x7fELF\x01"
    assert (0x1BADB002).to_bytes(4, "little") in data[:8192]
    assert mg.build_microguest() == kernel


needs_qemu = pytest.mark.skipif(SYSTEM_QEMU is None,
                                reason="qemu-system-x86_64 not installed (Debian package "
                                       "qemu-system-x86)")
SYSTEM = VariantSpec(name="system", binary=SYSTEM_QEMU or "qemu-system-x86_64")


def _check_run(result: mg.MicroResult, n: int) -> None:
    assert result.ok, result.raw
    assert result.done == n and result.errors == 0
    assert result.iops > 0 and result.elapsed_ns > 0 and result.tsc_hz > 10**8
    assert result.lat_min_ns <= result.p50_ns <= result.p99_ns <= result.p999_ns
    assert result.p999_ns <= result.lat_max_ns
    assert sum(b[2] for b in result.hist) == n
    assert result.exit_status in mg.CLEAN_EXITS


@pytest.mark.e2e
@needs_qemu
@pytest.mark.timeout(180)
@pytest.mark.parametrize("qd", [1, 16])
@pytest.mark.parametrize("wait", ["poll", "irq", "intx"])
def test_randread(kernel, disk, tmp_path, qd, wait):
    n = 2000
    result = mg.run_microguest_point(SYSTEM_QEMU, "tcg", disk, SYSTEM,
                                     Workload("randread", "4k", qd, 1), n, wait,
                                     tmp_path / "console.log", timeout=120, kernel=kernel)
    _check_run(result, n)
    assert result.qd == qd and result.wait == wait
    assert (result.raw["irqs"] > 0) == (wait != "poll")
    assert 0 <= result.guest_cpu_pct <= 100
    if result.wall_s > 0.05:        # shorter runs can fall between two console polls
        assert result.host_cpu_pct > 0
    row = mg.micro_row("t", Point("microguest", "system", "disk", Workload("randread", "4k", qd, 1), 1),
                       "tcg", result, started_at="t")
    assert row["status"] == "ok" and row["iops"] > 0


@pytest.mark.e2e
@needs_qemu
@pytest.mark.timeout(180)
@pytest.mark.parametrize("wait, kick", [("poll", "every"), ("irq", "every"),
                                        ("poll-irq-on", "honour"), ("poll-irq-on", "every")])
def test_wait_and_kick_modes(kernel, disk, tmp_path, wait, kick):
    """QEMU 7.2 offers EVENT_IDX: kick=honour negotiates it, kick=every does not and
    notifies once per request; poll-irq-on takes no interrupt (it never reads the ISR)."""
    n, qd = 1000, 8
    result = mg.run_microguest_point(SYSTEM_QEMU, "tcg", disk, SYSTEM,
                                     Workload("randread", "4k", qd, 1), n, wait,
                                     tmp_path / "console.log", timeout=120, kernel=kernel,
                                     kick=kick)
    _check_run(result, n)
    raw = result.raw
    assert raw["wait"] == wait and raw["kick"] == kick
    assert raw["event_idx"] == (kick == "honour")
    if kick == "every":
        assert raw["notifies"] == n
    assert (raw["irqs"] > 0) == (wait == "irq")
    assert raw["unexpected_irqs"] == 0
    assert result.guest_cpu_pct == 100.0 or wait == "irq"


@pytest.mark.e2e
@needs_qemu
@pytest.mark.timeout(180)
def test_randwrite_verify(kernel, disk, tmp_path):
    n = 1000
    result = mg.run_microguest_point(SYSTEM_QEMU, "tcg", disk, SYSTEM,
                                     Workload("randwrite", "8k", 8, 1), n, "poll",
                                     tmp_path / "console.log", timeout=120, kernel=kernel,
                                     verify=True, seed=3)
    _check_run(result, n)
    assert result.raw["verify"] == 1 and result.verified == n and result.mismatches == 0


@pytest.mark.e2e
@needs_qemu
@pytest.mark.timeout(120)
def test_no_result_is_infra_error(kernel, tmp_path):
    missing = tmp_path / "absent.img"
    with pytest.raises(InfraError, match="console"):
        mg.run_microguest_point(SYSTEM_QEMU, "tcg", missing, SYSTEM,
                                Workload("randread", "4k", 1, 1), 10, "poll",
                                tmp_path / "console.log", timeout=60, kernel=kernel)


def _independent_exit(binary: str, variant: VariantSpec, disk: Path, case: str, kernel: Path,
                      log: Path) -> tuple[int, str]:
    """Run the same case again without the harness (guest powers off itself)."""
    spec = mg.microguest_spec(binary, "tcg", disk, variant,
                              mg.hostile_cmdline(case, 1000, halt=False), log, kernel=kernel)
    result = run(qemu_argv(spec, paused=False), timeout=120, check=False)
    return result.returncode, result.output


def _check_hostile_consistent(result: mg.HostileResult, binary: str, variant: VariantSpec,
                              disk: Path, kernel: Path, tmp_path: Path) -> None:
    status, stderr = _independent_exit(binary, variant, disk, result.case, kernel,
                                       tmp_path / "again.log")
    if result.qemu_survived:
        assert result.guest is not None and result.guest["case"] == result.case
        assert result.qemu_state == "running" and not result.qemu_died
        assert result.qemu_exit_status == 0            # our QMP quit
        assert status in mg.CLEAN_EXITS, stderr
    else:
        assert result.qemu_died and result.guest is None
        assert result.qemu_exit_status == status not in mg.CLEAN_EXITS
        assert result.qemu_message and result.qemu_message.splitlines()[-1] in stderr


@pytest.mark.e2e
@needs_qemu
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["unknown-type", "desc-loop", "head-out-of-range"])
def test_hostile_system_qemu(kernel, disk, tmp_path, case):
    result = mg.run_hostile_case(SYSTEM_QEMU, "tcg", disk, SYSTEM, case,
                                 tmp_path / "console.log", timeout=120, kernel=kernel)
    _check_hostile_consistent(result, SYSTEM_QEMU, SYSTEM, disk, kernel, tmp_path)
    if result.guest is not None:
        assert result.guest["pre"] == "ok"
        assert result.guest["canary_ok"] == 1
        if case == "unknown-type":
            # written to disk exactly when the device accepted it (status 0)
            assert result.disk_changed == (result.guest["status"] == 0)
    row = result.as_row()
    assert tuple(row) == mg.HOSTILE_COLUMNS
    assert row["case"] == case and row["observed"] and "\n" not in row["qemu_message"]


def _baseline_binary() -> Path | None:
    path = cache_dir() / "build" / "baseline" / "x86_64-softmmu" / "qemu-system-x86_64"
    return path if path.is_file() and os.access(path, os.X_OK) else None


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_hostile_baseline_records_exit(kernel, disk, tmp_path):
    """The 2012 baseline exits on a looped descriptor chain (README, Robustness):
    the case must be recorded as QEMU's exit with its message, not as a survival."""
    binary = os.environ.get("HARNESS_BASELINE_QEMU") or _baseline_binary()
    if not binary:
        pytest.skip("no 2012 baseline build (set HARNESS_BASELINE_QEMU or build it first)")
    variant = VariantSpec(name="baseline")
    result = mg.run_hostile_case(binary, "tcg", disk, variant, "desc-loop",
                                 tmp_path / "console.log", timeout=120, kernel=kernel)
    assert not result.qemu_survived and result.qemu_state == "exited"
    assert result.qemu_exit_status == 1 and "Looped descriptor" in result.qemu_message
    assert result.observed == "qemu-exited"
    _check_hostile_consistent(result, str(binary), variant, disk, kernel, tmp_path)


def _kvm_usable() -> str | None:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as exc:
        return f"/dev/kvm cannot be opened: {exc.strerror}"
    os.close(fd)
    return None


@pytest.mark.e2e
@needs_qemu
@pytest.mark.timeout(180)
def test_microguest_kvm(kernel, disk, tmp_path):
    reason = _kvm_usable()
    if reason:
        pytest.skip(reason)
    n = 200
    result = mg.run_microguest_point(SYSTEM_QEMU, "kvm", disk, SYSTEM,
                                     Workload("randread", "4k", 4, 1), n, "poll",
                                     tmp_path / "console.log", timeout=120, kernel=kernel)
    _check_run(result, n)


def test_cpu_seconds_of_a_process():
    child = subprocess.Popen(["python3", "-c", "x = 0\nfor i in range(10**7): x += i"])
    try:
        first = cpu_seconds(child.pid)
        time.sleep(0.3)
        second = cpu_seconds(child.pid)
    finally:
        child.kill()
        child.wait()
    assert first is not None and second is not None and second > first
    assert cpu_seconds(2**22 + 12345) is None      # no such process


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed (Debian package fio)")
@pytest.mark.timeout(180)
def test_host_fio_ceiling(disk):
    row = host_fio_ceiling(disk, Workload("randread", "4k", 4, 1), 1)
    assert tuple(row) == COLUMNS
    assert row["variant"] == HOST_VARIANT and row["status"] == "ok" and row["iops"] > 0
    assert row["lat_p50_us"] <= row["lat_p99_us"]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed (Debian package fio)")
@pytest.mark.timeout(180)
def test_host_fio_ceiling_on_two_images_sums_one_job_each(tmp_path):
    images = image_paths(tmp_path / "d.img", 2)
    for image in images:
        with open(image, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, 16 << 20)
    row = host_fio_ceiling(images[0], Workload("randread", "4k", 4, 1), 1, devices=2)
    per_device = parse_device_iops(row["device_iops"])
    assert row["status"] == "ok" and row["devices"] == 2 and len(per_device) == 2
    assert all(iops > 0 for iops in per_device)
    assert row["iops"] == pytest.approx(sum(per_device), rel=0.01)
    assert row["lat_p50_us"] <= row["lat_p99_us"] and row["cpu_us_per_io"] > 0


def test_churn_faults_name_each_count_behind_them():
    clean = {"churn": {"masks": 94, "retargets": 93, "irqs_entry1": 300, "pending_set": 41},
             "unexpected_irqs": 0}
    assert mg.churn_faults(clean) == []
    raced = {**clean, "churn": {**clean["churn"], "pending_missing": 3, "irq_while_masked": 1}}
    faults = mg.churn_faults(raced)
    assert faults == ["an MSI-X message arrived while the vector was masked (1×)",
                      "a completion while masked left the pending bit clear (3×)"]
    idle = mg.churn_faults({"churn": {"masks": 2, "retargets": 1}})
    assert any("too little churn" in f for f in idle) and any("re-targeted" in f for f in idle)
