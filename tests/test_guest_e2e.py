"""End to end under TCG: build the fio guest, boot it, SSH in, run fio, quit via QMP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.accel import TCG
from harness.config import VariantSpec
from harness.errors import UserError
from harness.fio_jobs import open_connection, run_fio
from harness.hostinfo import prepare_disk
from harness.matrix import Workload
from harness.qemuinfo import qemu_info
from harness.vm import VM, linux_spec

from conftest import built_binary_or_skip, system_qemu_or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    return prepare_disk(tmp_path_factory.mktemp("disk") / "disk.raw", 64 << 20)


def _boot_and_fio(binary: str, variant: VariantSpec, guest, disk: Path, logs: Path,
                  record_property) -> None:
    spec = linux_spec(binary, TCG, guest, console_log=logs / "console.log",
                      legacy=qemu_info(binary).legacy, disk=disk, variant=variant)
    with VM(spec) as vm:
        marker_s = vm.wait_for_marker(guest.marker, timeout=120)
        conn = open_connection(spec.ssh_port, guest, timeout=60)
        ssh_s = time.monotonic() - vm.started_at
        record_property("boot_to_marker_s", round(marker_s, 2))
        record_property("boot_to_ssh_s", round(ssh_s, 2))
        print(f"{variant.name}: marker after {marker_s:.1f} s, SSH after {ssh_s:.1f} s")
        try:
            cpu_before = vm.host_cpu_seconds()
            run = run_fio(conn, Workload("randread", "4k", 4, 1), runtime_s=3, ramp_s=0,
                          timeout=120)
            cpu = vm.host_cpu_seconds() - cpu_before
        finally:
            conn.close()
        job = run.data["jobs"][0]
        print(f"{variant.name}: {job['read']['iops']:.0f} IOPS, guest CPU "
              f"{run.guest_cpu_pct:.0f}%, host CPU {100 * cpu / run.seconds:.0f}%")
        record_property("iops", round(job["read"]["iops"]))
        assert job["read"]["iops"] > 0
        assert job["jobname"] == "randread-4k-qd4-j1"
        assert run.json_text.lstrip().startswith("{")
        assert 0 <= run.guest_cpu_pct <= 100 and cpu > 0
        assert vm.shutdown(timeout=20) == 0
    assert (logs / "console.log").read_text().count(guest.marker) == 1


def test_system_qemu_boots_the_fio_guest(fio_guest, disk, tmp_path, record_property):
    binary = system_qemu_or_skip()
    variant = VariantSpec(name="system", binary=binary)
    _boot_and_fio(binary, variant, fio_guest, disk, tmp_path, record_property)


def test_system_qemu_iothread_io_uring(fio_guest, disk, tmp_path, record_property):
    binary = system_qemu_or_skip()
    variant = VariantSpec(name="system-io", binary=binary, iothread=True, aio="io_uring")
    _boot_and_fio(binary, variant, fio_guest, disk, tmp_path, record_property)


def test_2012_baseline_boots_the_fio_guest(fio_guest, disk, tmp_path, record_property):
    binary = built_binary_or_skip("baseline")
    _boot_and_fio(str(binary), VariantSpec(name="baseline"), fio_guest, disk, tmp_path,
                  record_property)


def test_qemu_that_dies_early_is_a_clear_infra_error(fio_guest, tmp_path):
    from harness.errors import InfraError

    binary = system_qemu_or_skip()
    variant = VariantSpec(name="bad", binary=binary, device_props={"no-such-prop": "1"})
    spec = linux_spec(binary, TCG, fio_guest, console_log=tmp_path / "console.log",
                      legacy=False, disk=tmp_path / "missing.raw", variant=variant)
    with pytest.raises(InfraError, match="QEMU exited with code 1") as caught:
        with VM(spec):
            pass
    message = str(caught.value)
    # one line: the exit code, QEMU's last words and where the log is; the argv is in the log
    assert "\n" not in message and len(message) < 500, message
    assert str(spec.stderr_log) in message and "-machine" not in message
    assert "-machine" in spec.stderr_log.read_text().splitlines()[0]


def test_too_little_memory_is_a_user_error(fio_guest, tmp_path):
    binary = system_qemu_or_skip()
    with pytest.raises(UserError, match="memory_mb 128 is too small"):
        linux_spec(binary, TCG, fio_guest, console_log=tmp_path / "console.log", legacy=False,
                   memory_mb=128)
