"""Many disks per guest: the config, the plan, the images and the QEMU command line (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.accel import TCG
from harness.config import DiskSpec, VariantSpec, parse_config
from harness.devices import guest_devices, image_paths, most_devices, prepare_images
from harness.errors import UserError
from harness.matrix import Point, Workload, plan
from harness.vm import VMSpec, qemu_argv

CONFIG = """
name: t
variants: [baseline, dataplane]
disks: [{name: shm, path: /dev/shm/x.img, size: 64M}]
workloads: {iodepth: [1, 16]}
repetitions: 1
"""


def spec(variant: VariantSpec, disks: int) -> VMSpec:
    paths = image_paths(Path("d/disk.raw"), disks)
    return VMSpec(binary="qemu", accel=TCG, memory_mb=256, console_log=Path("r/c.log"),
                  qmp_socket=Path("r/q.sock"), legacy=variant.build is not None,
                  kernel=Path("k"), disk=paths[0], more_disks=paths[1:], variant=variant)


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_disks_per_guest_defaults_to_one_and_is_a_matrix_dimension():
    config = parse_config(CONFIG + "guest: {kind: fio, disks_per_guest: [1, 2, 4]}")
    assert parse_config(CONFIG).guests[0].disks_per_guest == [1]
    sessions = plan(config)
    # per device count the variants stay side by side (interleaved, not blocked)
    assert [(s.devices, s.variant) for s in sessions] == [
        (1, "baseline"), (1, "dataplane"), (2, "baseline"), (2, "dataplane"),
        (4, "baseline"), (4, "dataplane")]
    assert all(p.devices == s.devices for s in sessions for p in s.points)
    keys = [p.key for s in sessions for p in s.points]
    assert len(keys) == len(set(keys)) == 12
    assert most_devices(config) == 4


def test_a_one_device_key_is_the_key_of_before():
    workload = Workload("randread", "4k", 1, 1)
    assert Point("fio", "poll", "shm", workload, 2).key == "fio.poll.shm.randread-4k-qd1-j1.r2"
    assert Point("fio", "poll", "shm", workload, 2, 4).key == \
        "fio.poll.shm-x4.randread-4k-qd1-j1.r2"


@pytest.mark.parametrize("value, message", [
    ("[0]", "from 1 to 16"), ("[17]", "from 1 to 16"), ("[2, 2]", "distinct"), ("[]", "at least 1"),
])
def test_bad_disks_per_guest_names_the_field(value, message):
    with pytest.raises(UserError, match=message) as caught:
        parse_config(CONFIG + f"guest: {{kind: fio, disks_per_guest: {value}}}")
    assert "guests.0.disks_per_guest" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_iothread_modes():
    assert VariantSpec(name="q", binary="qemu", iothread=True).iothread_mode == "shared"
    assert VariantSpec(name="q", binary="qemu").iothread_mode is None
    assert VariantSpec(name="q", binary="qemu", iothread="per-disk").iothread_mode == "per-disk"
    with pytest.raises(UserError, match="iothread"):
        parse_config(CONFIG.replace("[baseline, dataplane]",
                                    "[baseline, {name: dataplane, iothread: per-disk}]"))
    with pytest.raises(UserError, match="iothread"):
        parse_config(CONFIG.replace("[baseline, dataplane]",
                                    "[baseline, {name: q, binary: qemu, iothread: each}]"))


def test_images_are_the_path_then_numbered_beside_it():
    assert image_paths(Path("/dev/shm/x.img"), 3) == (
        Path("/dev/shm/x.img"), Path("/dev/shm/x.img.1"), Path("/dev/shm/x.img.2"))
    assert guest_devices("/dev/vda", 4) == ("/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd")
    with pytest.raises(UserError, match="fewer disks"):
        guest_devices("/dev/vdy", 3)


def test_each_device_is_its_own_drive_and_virtio_blk_pci_on_its_own_image():
    argv = qemu_argv(spec(VariantSpec(name="dataplane"), 4))
    drives, devices = option(argv, "-drive"), option(argv, "-device")
    assert [d.split(",")[1] for d in drives] == ["id=disk0", "id=disk1", "id=disk2", "id=disk3"]
    assert [d.split(",")[2] for d in drives] == [
        "file=d/disk.raw", "file=d/disk.raw.1", "file=d/disk.raw.2", "file=d/disk.raw.3"]
    assert all("cache=none" in d and "aio=native" in d for d in drives)
    blk = [d for d in devices if d.startswith("virtio-blk-pci")]
    assert blk == [f"virtio-blk-pci,drive=disk{i}" for i in range(4)]
    assert "-object" not in argv  # the 2012 tree: a data-plane thread per device, no objects


def test_one_device_argv_is_unchanged():
    argv = qemu_argv(spec(VariantSpec(name="q", binary="qemu", iothread=True), 1))
    assert option(argv, "-object") == ["iothread,id=io0"]
    assert option(argv, "-device") == ["virtio-blk-pci,drive=disk0,iothread=io0"]


@pytest.mark.parametrize("mode, objects, threads", [
    (True, ["iothread,id=io0"], ["io0", "io0", "io0"]),
    ("shared", ["iothread,id=io0"], ["io0", "io0", "io0"]),
    ("per-disk", ["iothread,id=io0", "iothread,id=io1", "iothread,id=io2"], ["io0", "io1", "io2"]),
])
def test_iothread_shared_or_per_disk(mode, objects, threads):
    argv = qemu_argv(spec(VariantSpec(name="q", binary="qemu", iothread=mode), 3))
    assert option(argv, "-object") == objects
    devices = [d for d in option(argv, "-device") if d.startswith("virtio-blk-pci")]
    assert [d.split("iothread=")[1] for d in devices] == threads


def test_prepare_images_fills_each_and_names_the_one_that_fails(tmp_path):
    disk = DiskSpec(name="shm", path=tmp_path / "x.img", size="16M")
    made = prepare_images(disk, 2, lambda _m: None)
    assert [p.name for p in made] == ["x.img", "x.img.1"]
    assert all(p.stat().st_size == 16 << 20 for p in made)
    assert made[0].read_bytes()[:4096] != made[1].read_bytes()[:4096]  # random, each its own
    (tmp_path / "x.img.2").mkdir()  # device 2's path is taken by a folder
    with pytest.raises(UserError) as caught:
        prepare_images(disk, 3, lambda _m: None)
    assert str(caught.value).startswith("disk shm device 2: ")
    assert len(str(caught.value).splitlines()) == 1
