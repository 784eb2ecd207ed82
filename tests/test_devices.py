"""Many disks per guest: the config, the plan, the images and the QEMU command line (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.accel import TCG
from harness.config import DiskSpec, VariantSpec, load_config, parse_config
from harness.devices import (device_counts, guest_devices, image_paths, most_devices,
                             prepare_images)
from harness.errors import InfraError, UserError
from harness.estimate import estimate
from harness.fio_jobs import device_job, fio_argv
from harness.fio_merge import device_iops, merged_bins, percentile_ns
from harness.matrix import Point, Workload, plan
from harness.results import (V4_COLUMNS, ResultsStore, new_row, parse_device_iops, read_results,
                             row_from_fio, row_line)
from harness.runners.ceiling import host_fio_argv
from harness.runners.micro_disks import device_columns, extra_args, short_of_disks
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


# ------------------------------------------------------------------ fio and rows

FIO_3DEV = Path(__file__).parent / "data" / "fio" / "randread-4k-qd4-j1-3dev.json"
RUN = dict(run_id="r", guest="fio", variant="dataplane", accel="tcg", disk="shm", rep=1,
           guest_cpu_pct=50.0, host_cpu_pct=80.0, log="raw/x.json", started_at="")


def test_fio_runs_one_job_per_device_with_the_iodepth_each():
    argv = fio_argv(Workload("randread", "4k", 16, 1), 5, 1, guest_devices("/dev/vda", 3))
    names, files = option_values(argv, "--name"), option_values(argv, "--filename")
    assert names == ["randread-4k-qd16-j1.d0", "randread-4k-qd16-j1.d1", "randread-4k-qd16-j1.d2"]
    assert files == ["/dev/vda", "/dev/vdb", "/dev/vdc"]
    # the workload is global (before the first --name), so every device job gets it
    first_job = argv.index("--name=randread-4k-qd16-j1.d0")
    assert "--iodepth=16" in argv[:first_job] and "--direct=1" in argv[:first_job]
    assert "--group_reporting" not in argv and "--output-format=json+" in argv
    one = fio_argv(Workload("randread", "4k", 16, 1), 5, 1, ("/dev/vda",))
    assert one == fio_argv(Workload("randread", "4k", 16, 1), 5, 1)  # one device: as before
    assert "--group_reporting" in one


def test_device_jobs_are_pinned_round_robin_over_the_vcpus():
    workload = Workload("randread", "4k", 16, 1)
    argv = fio_argv(workload, 5, 1, guest_devices("/dev/vda", 3), vcpus=2)
    assert option_values(argv, "--cpus_allowed") == ["0", "1", "0"]
    # each pin follows its own job's name (a job option, not a global one)
    for index in range(3):
        at = argv.index(f"--name={device_job(workload, index)}")
        assert argv[at + 2] == f"--cpus_allowed={index % 2}"
    assert option_values(fio_argv(workload, 5, 1, guest_devices("/dev/vda", 3)),
                         "--cpus_allowed") == []                    # one vCPU: nothing to pin
    assert option_values(fio_argv(workload, 5, 1, "/dev/vda", vcpus=2), "--cpus_allowed") == []


def option_values(argv: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]


def test_a_row_sums_the_devices_and_keeps_each_devices_iops():
    data = json.loads(FIO_3DEV.read_text())
    row = row_from_fio(data, workload=Workload("randread", "4k", 4, 1), devices=3, vcpus=2, **RUN)
    per_job = [job["read"]["iops"] for job in data["jobs"]]
    assert row["iops"] == pytest.approx(sum(per_job))
    assert parse_device_iops(row["device_iops"]) == pytest.approx(per_job, abs=0.05)
    assert (row["devices"], row["vcpus"], row["status"]) == (3, 2, "ok")
    lows = [job["read"]["clat_ns"]["percentile"]["50.000000"] / 1000 for job in data["jobs"]]
    assert min(lows) <= row["lat_p50_us"] <= max(lows)
    assert row["lat_p50_us"] not in lows  # over all requests, not one job's


def test_merged_percentiles_are_fios_own_for_one_job():
    data = json.loads(FIO_3DEV.read_text())
    for job in data["jobs"]:
        block = job["read"]["clat_ns"]
        bins = merged_bins([block])
        for text, value in block["percentile"].items():
            assert percentile_ns(bins, float(text)) == value


def test_merged_percentiles_weigh_every_request():
    fast = {"bins": {"100": 99}, "N": 99, "mean": 100.0}
    slow = {"bins": {"10000": 1}, "N": 1, "mean": 10000.0}
    bins = merged_bins([fast, slow])
    assert percentile_ns(bins, 50) == 100 and percentile_ns(bins, 99.9) == 10000
    assert percentile_ns([], 50) != percentile_ns([], 50)  # NaN


def test_a_job_that_names_no_device_is_an_error():
    data = json.loads(FIO_3DEV.read_text())
    data["jobs"][1]["jobname"] = "something"
    with pytest.raises(InfraError, match="names no device"):
        device_iops(data)


def test_rows_of_before_schema_5_read_as_one_device(tmp_path):
    row = new_row(run_id="r", guest="fio", variant="v", accel="tcg", disk="d",
                  workload=Workload("randread", "4k", 1, 1), rep=1, log="", started_at="",
                  iops=100.0)
    (tmp_path / "results.csv").write_text(row_line(dict(zip(V4_COLUMNS, V4_COLUMNS)), V4_COLUMNS)
                                          + row_line({**row, "schema_version": 4}, V4_COLUMNS))
    frame = read_results(tmp_path).frame
    assert list(frame["devices"]) == [1] and frame["vcpus"].isna().all()
    assert list(frame["device_iops"]) == [""]


def test_devices_round_trip_through_results_csv(tmp_path):
    data = json.loads(FIO_3DEV.read_text())
    store = ResultsStore(tmp_path)
    store.append(row_from_fio(data, workload=Workload("randread", "4k", 4, 1), devices=3, vcpus=2,
                              **RUN))
    frame = read_results(tmp_path).frame
    assert (int(frame["devices"][0]), int(frame["vcpus"][0])) == (3, 2)
    assert len(parse_device_iops(frame["device_iops"][0])) == 3
    assert store.done_keys() == {"fio.dataplane.shm-x3.randread-4k-qd4-j1.r1"}


# ------------------------------------------------------------------ the micro-guest


@dataclass(frozen=True)
class AgreedResult:
    """The two attributes the micro-guest's MicroResult adds (the agreed interface)."""

    disks: int
    per_disk_iops: tuple[float, ...]


def test_micro_guest_gets_the_other_devices():
    variant = VariantSpec(name="q", binary="qemu", iothread="per-disk")
    images = image_paths(Path("d/x.img"), 3)
    extra = extra_args(variant, images)
    assert "-append" not in extra   # disks=3 is run_microguest_point's (its `disks`)
    assert option(list(extra), "-object") == ["iothread,id=io1", "iothread,id=io2"]
    assert [d for d in option(list(extra), "-device")] == [
        "virtio-blk-pci,drive=disk1,iothread=io1", "virtio-blk-pci,drive=disk2,iothread=io2"]
    assert extra_args(variant, images[:1]) == ()


def test_micro_guest_row_columns_and_a_guest_that_drove_fewer_disks():
    result = AgreedResult(3, (10.0, 20.0, 30.5))
    assert short_of_disks(result, 3) is None
    assert device_columns(result, 3) == {"devices": 3, "vcpus": 1, "device_iops": "10.0;20.0;30.5"}
    assert "drove 1 disk(s), not 3" in short_of_disks(AgreedResult(1, (5.0,)), 3)
    assert "reported 2 per-disk" in short_of_disks(AgreedResult(3, (1.0, 2.0)), 3)
    assert short_of_disks(object(), 1) is None


def test_the_estimate_counts_a_boot_per_device_count():
    one = estimate(parse_config(CONFIG + "guest: {kind: fio}"))
    three = estimate(parse_config(CONFIG + "guest: {kind: fio, disks_per_guest: [1, 2, 4]}"))
    assert three.boots == (3 * one.boots[0], 3 * one.boots[1])
    assert three.points[0] == 3 * one.points[0] and three.seconds[0] > 2.5 * one.seconds[0]


def test_the_host_ceiling_runs_one_fio_job_per_image():
    workload = Workload("randread", "4k", 16, 2)
    argv = host_fio_argv(image_paths(Path("/i/d.img"), 3), workload, 4, 1 << 26)
    assert option_values(argv, "--filename") == ["/i/d.img", "/i/d.img.1", "/i/d.img.2"]
    assert option_values(argv, "--name") == [device_job(workload, i) for i in range(3)]
    first_job = argv.index(f"--name={device_job(workload, 0)}")
    assert {"--iodepth=16", "--numjobs=2", f"--size={1 << 26}"} <= set(argv[:first_job])
    assert "--group_reporting" not in argv and "--output-format=json+" in argv
    one = host_fio_argv(image_paths(Path("/i/d.img"), 1), workload, 4, 1 << 26)
    assert option_values(one, "--filename") == ["/i/d.img"] and "--group_reporting" in one


def test_the_host_ceiling_is_measured_at_every_device_count():
    config = parse_config(CONFIG + "host_ceiling: true\nguests: [{kind: fio, disks_per_guest: "
                          "[1, 4]}, {kind: microguest, disks_per_guest: [2, 4]}]")
    assert device_counts(config) == [1, 2, 4]
    none = parse_config(CONFIG + "host_ceiling: true\nguest: {kind: fio}")
    # 2 workloads × 1 disk × 1 repetition, at 1, 2 and 4 images
    assert (estimate(none).host_points, estimate(config).host_points) == (2, 6)


def test_the_scaling_config_dry_runs_with_per_disk_iothreads():
    config = load_config(Path(__file__).parent.parent / "configs" / "scaling.yaml")
    assert {tuple(g.disks_per_guest) for g in config.guests} == {(1, 2, 4)}
    assert config.variant("qemu-iothreads").iothread_mode == "per-disk"
    assert estimate(config).seconds[1] < 20 * 60


def test_a_failed_point_keeps_its_devices_and_the_guests_vcpus():
    from types import SimpleNamespace

    from harness.runstate import fail_points

    config = parse_config(CONFIG + "guests: [{kind: fio, vcpus: 2, disks_per_guest: [4]},"
                                   " {kind: microguest, vcpus: 3, disks_per_guest: [2]}]")
    rows: list[dict] = []
    run = SimpleNamespace(run_id="r", accel=SimpleNamespace(name="tcg"), relative=str,
                          config=config, writer=SimpleNamespace(append=rows.append))
    first = {}
    for point in (p for s in plan(config) for p in s.points):
        first.setdefault(point.guest, point)
    points = list(first.values())
    fail_points(run, points, "boom", Path("logs/x.log"))
    assert [(r["guest"], r["devices"], r["vcpus"], r["status"]) for r in rows] == [
        ("fio", 4, 2, "failed"), ("microguest-poll", 2, 1, "failed")]


def test_numjobs_clones_of_a_device_add_up_to_its_iops():
    def job(name: str, iops: float) -> dict:
        return {"jobname": name, "error": 0, "read": {"iops": iops, "total_ios": 10},
                "write": {"iops": 0.0, "total_ios": 0}}
    data = {"jobs": [job("w.d0", 10.0), job("w.d0", 5.0), job("w.d1", 7.0), job("w.d1", 1.0)]}
    assert device_iops(data) == [15.0, 8.0]
    data["jobs"].append(job("w.d3", 1.0))  # device 2 missing: not a run of ours
    with pytest.raises(InfraError, match="not 0"):
        device_iops(data)


@pytest.mark.parametrize("extra, message", [
    ("guest: {kind: microguest, trace: true, disks_per_guest: [2]}", "trace: true traces one disk"),
])
def test_several_disks_where_only_one_is_supported_is_refused(extra, message):
    with pytest.raises(UserError, match=message) as caught:
        parse_config(CONFIG + extra)
    assert "disks_per_guest: [1]" in str(caught.value)



def test_a_micro_guest_with_more_disks_than_it_drives_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"micro-guest drives at most 8 disks; lower "
                                        r"disks_per_guest") as caught:
        parse_config(CONFIG + "guest: {kind: microguest, disks_per_guest: [1, 9]}")
    assert len(str(caught.value).splitlines()) == 1
    parse_config(CONFIG + "guest: {kind: microguest, disks_per_guest: [1, 8]}")


def test_under_kvm_nested_every_image_is_an_l1_disk_named_as_the_harness_names_images(tmp_path):
    """L1 gets every image of every disk as a virtio disk, in order, and links each to the
    name devices.image_paths gives it, so the runners find device i of a disk there."""
    from harness.nested.host import l1_disk_paths, l1_images

    config = parse_config(CONFIG.replace("disks: [{name: shm, path: /dev/shm/x.img, size: 64M}]",
                                         "disks: [{name: a, path: /x/a.img, size: 64M}, "
                                         "{name: b, path: /x/b.img, size: 64M}]")
                          + "accel: kvm-nested\nguest: {kind: fio, disks_per_guest: [1, 2]}")
    run = SimpleNamespace(config=config, disks={"a": Path("/x/a.img"), "b": Path("/x/b.img")})
    assert [(str(here), device, name) for here, device, name in l1_images(run)] == [
        ("/x/a.img", "/dev/vda", "/root/disks/a"), ("/x/a.img.1", "/dev/vdb", "/root/disks/a.1"),
        ("/x/b.img", "/dev/vdc", "/root/disks/b"), ("/x/b.img.1", "/dev/vdd", "/root/disks/b.1")]
    assert l1_disk_paths(run) == {"a": "/root/disks/a", "b": "/root/disks/b"}
    assert [str(p) for p in image_paths(Path(l1_disk_paths(run)["b"]), 2)] == [
        "/root/disks/b", "/root/disks/b.1"]
