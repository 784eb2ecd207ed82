"""A fio guest with four data-plane disks, under TCG: four data-plane threads, each disk its own data.

Real QEMU (the `dataplane` build; skips when it is not built) boots the Linux
fio guest with four virtio-blk devices on four images (devices.image_paths).
The series gives every virtio-blk device a data-plane thread of its own, named
`dataplane` (threads.DATAPLANE_THREAD); fio then writes and crc32c-verifies
every device at once, one job per device, and the harness's own multi-device
fio run is merged into one row with four per-device IOPS.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

import pytest

from harness.accel import accel_named
from harness.config import VariantSpec
from harness.devices import guest_devices, image_paths
from harness.matrix import Workload
from harness.results import parse_device_iops, parse_fio_output, row_from_fio
from harness.threads import DATAPLANE_THREAD
from harness.vm import VM, linux_spec

from conftest import built_binary_or_skip

DEVICES = 4
IMAGE_BYTES = 32 << 20
VERIFY_SIZE = "8M"
BOOT_TIMEOUT_S = 300.0


def images(tmp_path: Path) -> tuple[Path, ...]:
    paths = image_paths(tmp_path / "disk.raw", DEVICES)
    for path in paths:
        with open(path, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, IMAGE_BYTES)
    return paths


def thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass  # a thread that ended meanwhile
    return names


def verify_command(devices: tuple[str, ...]) -> str:
    """Every device written and crc32c-verified at once, one fio job each, own random data."""
    argv = ["fio", "--direct=1", "--ioengine=libaio", "--rw=randwrite", "--bs=4k",
            "--iodepth=8", f"--size={VERIFY_SIZE}", "--verify=crc32c", "--do_verify=1",
            "--verify_fatal=1", "--randrepeat=0", "--output-format=json"]
    for index, device in enumerate(devices):
        argv += [f"--name=verify.d{index}", f"--filename={device}"]
    return shlex.join(argv)


def sh(conn, command: str, timeout: float = 300.0):
    result = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
    assert result.exited == 0, f"{command}: {(result.stderr or result.stdout).strip()[-800:]}"
    return result


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_four_data_plane_disks_have_four_threads_and_keep_their_own_data(fio_guest, tmp_path):
    from harness.fio_jobs import open_connection, run_fio

    binary = str(built_binary_or_skip("dataplane"))
    paths = images(tmp_path)
    spec = linux_spec(binary, accel_named("tcg"), fio_guest, console_log=tmp_path / "console.log",
                      legacy=True, memory_mb=max(512, fio_guest.min_memory_mb), vcpus=2,
                      disk=paths[0], more_disks=paths[1:], variant=VariantSpec(name="dataplane"))
    devices = guest_devices(fio_guest.device, DEVICES)
    with VM(spec) as vm:
        vm.wait_for_marker(fio_guest.marker, timeout=BOOT_TIMEOUT_S)
        conn = open_connection(spec.ssh_port, fio_guest, timeout=120)
        try:
            seen = sh(conn, "ls /sys/block").stdout.split()
            verified = sh(conn, verify_command(devices), timeout=600)
            before = vm.thread_sample()
            measured = run_fio(conn, Workload("randread", "4k", 4, 1), runtime_s=3, ramp_s=1,
                               timeout=180, device=devices, vcpus=2)
            split = vm.cpu_split(before, vm.thread_sample())
            threads = thread_names(vm.pid)
        finally:
            conn.close()
        assert vm.shutdown(timeout=30) == 0

    assert {Path(d).name for d in devices} <= set(seen), seen
    assert threads.count(DATAPLANE_THREAD) == DEVICES, sorted(threads)
    # 2 vCPUs under the 2012 tree's TCG: QMP names the main thread for the second vCPU (a
    # stale id); the split still gives the main loop its own time (it serves the network)
    assert vm.pid in vm.vcpu_threads and len(set(vm.vcpu_threads)) == 2, vm.vcpu_threads
    assert split.kinds["main"] > 0 and split.kinds["vcpu"] > 0, split.kinds
    assert split.kinds["iothread"] > 0, split.kinds          # the four data-plane threads

    jobs = {job["jobname"]: job for job in parse_fio_output(verified.stdout)["jobs"]}
    assert set(jobs) == {f"verify.d{i}" for i in range(DEVICES)}
    size = 8 << 20
    for name, job in jobs.items():
        assert job["error"] == 0 and job.get("total_err", 0) == 0, name
        assert job["write"]["io_bytes"] == size, f"{name}: wrote {job['write']['io_bytes']}"
        assert job["read"]["io_bytes"] == size, f"{name}: verified {job['read']['io_bytes']}"
    # what each device holds, seen from the host: written, and not another device's copy
    heads = [path.read_bytes()[:size] for path in paths]
    assert all(head.count(0) < len(head) // 2 for head in heads)
    assert len({hashlib.sha256(head).hexdigest() for head in heads}) == DEVICES

    row = row_from_fio(measured.data, run_id="e2e", guest="fio", variant="dataplane",
                       accel="tcg", disk="tmp", workload=Workload("randread", "4k", 4, 1), rep=1,
                       guest_cpu_pct=measured.guest_cpu_pct, host_cpu_pct=None, log="",
                       started_at="", devices=DEVICES, vcpus=2)
    per_device = parse_device_iops(row["device_iops"])
    assert len(per_device) == DEVICES and all(iops > 0 for iops in per_device)
    assert row["iops"] == pytest.approx(sum(per_device), rel=1e-3)
    assert row["lat_p50_us"] > 0 and row["lat_p99_us"] >= row["lat_p50_us"]
    # the device jobs ran pinned round-robin over the two vCPUs (fio refuses a CPU not there)
    pins = [job["job options"].get("cpus_allowed") for job in measured.data["jobs"]]
    assert pins == ["0", "1", "0", "1"], pins


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize("variant", ["dataplane", "qemu-per-disk"])
def test_micro_guest_drives_the_added_devices(variant, tmp_path):
    """micro_disks adds devices 1… to run_microguest_point's boot and it passes disks=N:
    both QEMUs take them (QEMU 7.2 with an iothread each), the guest drives every one."""
    from harness.microguest import run_microguest_point
    from harness.runners.micro_disks import extra_args

    if variant == "dataplane":
        binary, spec = str(built_binary_or_skip("dataplane")), VariantSpec(name="dataplane")
    else:
        from conftest import system_qemu_or_skip
        binary = system_qemu_or_skip()
        spec = VariantSpec(name=variant, binary=binary, iothread="per-disk")
    paths = images(tmp_path)
    result = run_microguest_point(binary, "tcg", paths[0], spec, Workload("randread", "4k", 4, 1),
                                  500, "poll", tmp_path / "console.log", 120, warmup=50,
                                  extra=extra_args(spec, paths), disks=len(paths))
    assert result.ok, result.error
    assert result.disks == DEVICES and len(result.per_disk_iops) == DEVICES
    assert all(iops > 0 for iops in result.per_disk_iops), result.per_disk_iops
    argv = (tmp_path / "console.log.stderr").read_text().splitlines()[0]
    assert argv.count("virtio-blk-pci") == DEVICES
