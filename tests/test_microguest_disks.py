"""The micro-guest driving several virtio-blk devices at once (disks=N, issue 23).

The pure tests parse a per-disk result line and one from before disks=N.  The e2e
tests boot the 2012 builds (baseline, dataplane) under TCG with four devices
attached, each on its own raw image with the options vm.disk_args gives the first,
and check both what the guest says (every disk did its requests, read back what
it wrote) and what the images hold afterwards (each disk its own data).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from harness import microguest as mg
from harness.config import VariantSpec
from harness.errors import UserError
from harness.matrix import Workload
from harness.vm import VM, QemuExited, disk_args

from conftest import built_binary_or_skip

DISK_MB = 16
BS = 4096

# a result of the first driver of four disks, histogram shortened
PER_DISK = (
    "MICROGUEST-BOOT tsc_hz=2600000000 ram_mb=127\nMICROGUEST-BEGIN\nMICROGUEST-END\n\n"
    'MICROGUEST-RESULT {"ok":1,"mode":"bench","rw":"randwrite","bs":4096,"qd":8,'
    '"qd_requested":8,"n":300,"disks":3,"done":900,"seq":0,"wait":"irq","errors":0,'
    '"verify":1,"mismatches":0,"verified":900,"irqs":640,"tsc_hz":2600000000,'
    '"elapsed_ns":90000000,"halted_ns":1000,"iops":10000,'
    '"lat_ns":{"mean":700000,"min":90000,"max":3000000,"p50":650000,"p99":2500000,'
    '"p999":2900000},"hist":[[640000,660000,900]],'
    '"per_disk":[{"done":300,"iops":3400,"errors":0,"mismatches":0,"verified":300,"irqs":200,'
    '"pci_bdf":24},{"done":300,"iops":3300,"errors":0,"mismatches":0,"verified":300,'
    '"irqs":220,"pci_bdf":32},{"done":300,"iops":3350,"errors":0,"mismatches":0,'
    '"verified":300,"irqs":220,"pci_bdf":40}]}\n'
)

# as committed results before disks=N print it: no "disks", no "per_disk"
OLD = (
    'MICROGUEST-RESULT {"ok":1,"mode":"bench","rw":"randread","bs":4096,"qd":1,"n":2000,'
    '"done":2000,"wait":"poll","errors":0,"mismatches":0,"verified":0,"tsc_hz":2603998484,'
    '"elapsed_ns":75995021,"iops":26317,"lat_ns":{"mean":37567,"min":9832,"max":10428759,'
    '"p50":10027,"p99":1761721,"p999":1862391},"hist":[[9831,10224,2000]]}\n'
)


# ---- pure ----

def test_parse_per_disk_result():
    result = mg.parse_result(PER_DISK)
    assert result is not None and result.ok
    assert result.disks == 3 and result.done == 900 and result.n == 300
    assert result.per_disk_iops == (3400.0, 3300.0, 3350.0)
    assert result.iops == 10000 and result.verified == 900


def test_parse_result_from_before_disks():
    result = mg.parse_result(OLD)
    assert result is not None and result.ok
    assert result.disks == 1 and result.per_disk_iops == ()
    assert result.done == 2000 and result.iops == 26317


def test_cmdline_names_disks_only_when_more_than_one():
    one = mg.guest_cmdline(Workload("randread", "4k", 4, 1), 100, "poll")
    assert "disks=" not in one
    four = mg.guest_cmdline(Workload("randread", "4k", 4, 1), 100, "poll", disks=4)
    assert four.endswith(" disks=4") and four.startswith(one)
    for bad in (0, 9):
        with pytest.raises(UserError, match="disks"):
            mg.guest_cmdline(Workload("randread", "4k", 4, 1), 100, "poll", disks=bad)


def test_guest_limit_matches_python():
    hw_h = (mg.SOURCE_DIR / "hw.h").read_text()
    assert f"#define MG_MAX_DISKS    {mg.cmdline.MAX_DISKS}\n" in hw_h
    from harness.config import MAX_MICRO_DEVICES
    assert MAX_MICRO_DEVICES == mg.cmdline.MAX_DISKS   # the config refuses more


# ---- what the guest writes, computed as main.c does ----

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF


def pattern_sector(disk: int, sector: int, seed: int) -> bytes:
    """The 512 bytes verify=1 writes to sector of disk (pattern_word in main.c)."""
    base = ((sector & M32) * 0x9E3779B1) ^ seed ^ (sector >> 32) ^ (disk * 0x27D4EB2F)
    words = [(base ^ (w * 0x85EBCA77)) & M32 for w in range(128)]
    return struct.pack("<128I", *words)


def first_blocks(disk: int, seed: int, nblocks: int, count: int, random: bool) -> list[int]:
    """The first count blocks disk visits (its own xorshift, or 0, 1, 2... in order)."""
    if not random:
        return list(range(count))
    mixed = (seed ^ (disk * 0x632BE5AB)) & M32
    state = 0x9E3779B97F4A7C15 ^ (mixed << 17) ^ mixed or 1
    blocks = []
    for _ in range(count):
        state ^= (state << 13) & M64
        state ^= state >> 7
        state ^= (state << 17) & M64
        blocks.append(((state >> 32) * nblocks) >> 32)
    return blocks


def test_pattern_differs_between_disks_and_disk0_is_unchanged():
    # disk 0 keeps the single-disk pattern: sector * golden ^ word * c ^ seed
    assert pattern_sector(0, 5, 3)[:4] == struct.pack("<I", (5 * 0x9E3779B1 ^ 3) & M32)
    assert len({pattern_sector(d, 5, 3) for d in range(8)}) == 8
    assert len({tuple(first_blocks(d, 3, 4096, 4, True)) for d in range(8)}) == 8


# ---- real runs ----

@pytest.fixture(scope="session")
def kernel(tmp_path_factory) -> Path:
    patch = pytest.MonkeyPatch()
    patch.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        return mg.build_microguest()
    except UserError as exc:
        pytest.skip(f"gcc cannot build the 32-bit micro-guest: {exc}")
    finally:
        patch.undo()


def make_images(tmp_path: Path, count: int) -> list[Path]:
    images = []
    for i in range(count):
        path = tmp_path / f"disk{i}.img"
        with open(path, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, DISK_MB << 20)
        images.append(path)
    return images


def more_disk_args(spec, images: list[Path]) -> list[str]:
    """-drive/-device pairs for images[1:], with exactly the options the spec's own
    test disk gets (vm.disk_args), renamed disk1, disk2, ..."""
    argv: list[str] = []
    for i, image in enumerate(images[1:], start=1):
        args = disk_args(replace(spec, disk=image))
        assert "-object" not in args, "an iothread per extra disk is not handled here"
        argv += [arg.replace("id=disk0", f"id=disk{i}").replace("drive=disk0", f"drive=disk{i}")
                 for arg in args]
    return argv


def variant_binary(name: str) -> tuple[str, VariantSpec]:
    return str(built_binary_or_skip(name)), VariantSpec(name=name)


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant, wait, rw", [
    ("dataplane", "poll", "write"), ("dataplane", "irq", "randwrite"),
    ("baseline", "poll", "randwrite"), ("baseline", "irq", "write"),
    ("dataplane", "intx", "randwrite"),
])
def test_four_disks_verify(kernel, tmp_path, variant, wait, rw):
    binary, spec = variant_binary(variant)
    n, qd, seed, disks = 300, 8, 7, 4
    images = make_images(tmp_path, disks)
    console = tmp_path / "console.log"
    vm_spec = mg.microguest_spec(binary, "tcg", images[0], spec, "", console, kernel=kernel)
    result = mg.run_microguest_point(binary, "tcg", images[0], spec, Workload(rw, "4k", qd, 1),
                                     n, wait, console, timeout=240, kernel=kernel, verify=True,
                                     seed=seed, extra=tuple(more_disk_args(vm_spec, images)),
                                     disks=disks)
    raw = result.raw
    where = f"console: {result.log}"
    assert result.ok and not result.error, f"{raw}; {where}"
    assert result.disks == disks and result.qd == qd
    assert result.done == disks * n and result.verified == disks * n and result.mismatches == 0
    assert sum(b[2] for b in result.hist) == disks * n
    per = raw["per_disk"]
    assert len(per) == disks and len(result.per_disk_iops) == disks
    assert len({d["pci_bdf"] for d in per}) == disks, per
    for d in per:
        assert d["done"] == n and d["verified"] == n, per
        assert d["mismatches"] == 0 and d["errors"] == 0, per
        assert d["iops"] > 0, per
        if wait != "poll":     # each disk's own vector (irq) or its ISR on its line (intx)
            assert d["irqs"] > 0, per
    if wait == "poll":
        assert raw["irqs"] == 0
    assert raw["unexpected_irqs"] == 0

    # the host's view: each image holds its own disk's pattern where the guest wrote first
    nblocks = (DISK_MB << 20) // BS
    contents = []
    for i, image in enumerate(images):
        data = image.read_bytes()
        blocks = first_blocks(i, seed, nblocks, 3, rw == "randwrite")
        for block in blocks:
            sector = block * (BS // 512)
            got = data[sector * 512:sector * 512 + 512]
            assert got == pattern_sector(i, sector, seed), f"disk {i} block {block}"
        contents.append(data[blocks[0] * BS:blocks[0] * BS + 512])
        assert any(data), f"disk {i} was never written"
    if rw == "write":   # the same sector on every disk: four different contents
        assert len(set(contents)) == disks


def boot_result(binary: str, spec: VariantSpec, kernel: Path, images: list[Path], cmdline: str,
                console: Path) -> dict:
    """Boot with images attached (the first as the spec's disk) and return the result."""
    vm_spec = mg.microguest_spec(binary, "tcg", images[0], spec, cmdline, console, kernel=kernel)
    vm = VM(vm_spec)
    vm.add_args(*more_disk_args(vm_spec, images))
    with vm:
        try:
            vm.wait_until(lambda text: mg.RESULT_PREFIX in text
                          and text.rstrip("\x00").endswith("\n"), 120, "micro-guest result")
        except QemuExited:
            pass        # the guest powered off: its line is in the console, or the assert says
        data = mg.find_line(vm.console(), mg.RESULT_PREFIX)
    assert data is not None, f"no result line; console: {console}"
    return data


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_more_disks_than_attached_is_refused(kernel, tmp_path):
    binary, spec = variant_binary("dataplane")
    images = make_images(tmp_path, 2)
    line = mg.guest_cmdline(Workload("randread", "4k", 4, 1), 50, "poll", disks=3)
    data = boot_result(binary, spec, kernel, images, line, tmp_path / "three.log")
    assert data["ok"] == 0 and data["error"] == "disks-more-than-found", data
    assert (data["disks_requested"], data["disks_found"]) == (3, 2)
    result = mg.parse_result(f"{mg.RESULT_PREFIX}{json.dumps(data)}\n")
    assert not result.ok and result.error == "disks-more-than-found"

    # beyond what the guest supports, and a mode that drives one device only
    data = boot_result(binary, spec, kernel, images, "n=10 disks=9", tmp_path / "nine.log")
    assert data["error"] == "disks-more-than-supported" and data["disks_max"] == 8, data
    data = boot_result(binary, spec, kernel, images, "mode=stale-code n=4 disks=2",
                       tmp_path / "mode.log")
    assert data["error"] == "disks-need-mode-bench", data

    # and two of two is fine
    line = mg.guest_cmdline(Workload("randread", "4k", 4, 1), 50, "poll", disks=2)
    data = boot_result(binary, spec, kernel, images, line, tmp_path / "two.log")
    assert data["ok"] == 1 and data["disks"] == 2 and data["done"] == 100, data
    assert [d["done"] for d in data["per_disk"]] == [50, 50]


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_eight_disks_at_qd32_fit(kernel, tmp_path):
    """The most the guest drives (8 disks) at qd 32 with 64 KiB blocks: 8 rings and
    16 MiB of buffers from its allocator in the default 128 MiB VM, no request capped."""
    binary, spec = variant_binary("dataplane")
    n, qd, disks = 100, 32, mg.cmdline.MAX_DISKS
    images = make_images(tmp_path, disks)
    console = tmp_path / "console.log"
    vm_spec = mg.microguest_spec(binary, "tcg", images[0], spec, "", console, kernel=kernel)
    result = mg.run_microguest_point(binary, "tcg", images[0], spec,
                                     Workload("randwrite", "64k", qd, 1), n, "poll", console,
                                     timeout=240, kernel=kernel, verify=True, seed=11,
                                     extra=tuple(more_disk_args(vm_spec, images)), disks=disks)
    assert result.ok, f"{result.raw}; console: {result.log}"
    assert result.disks == disks and result.qd == qd and result.raw["qd_requested"] == qd
    assert [d["done"] for d in result.raw["per_disk"]] == [n] * disks
    assert result.verified == disks * n and result.mismatches == 0
