"""hosts/check.py's free-space check counts every image a disk needs (one per device)."""

from __future__ import annotations

import subprocess

from harness.config import DiskSpec
from harness.devices import image_paths
from harness.hosts.check import _facts_script, problems

MIB = 1 << 20


def facts_here(disks: list[DiskSpec], images: int) -> dict[str, str]:
    """The facts script run by this machine's shell (as a host's would be over SSH)."""
    out = subprocess.run(["sh", "-c", _facts_script(disks, images)], capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_the_space_images_already_take_is_summed(tmp_path):
    disk = DiskSpec(name="d", path=tmp_path / "d.img", size="16M")
    for path in image_paths(disk.path, 2):      # two of three images are there, filled
        path.write_bytes(b"\1" * (4 * MIB))
    facts = facts_here([disk], 3)
    assert int(facts["disk_d_have_kb"]) == 2 * 4 * 1024
    assert int(facts["disk_d_free_kb"]) > 0


def test_a_disk_with_several_devices_needs_room_for_each_image(tmp_path):
    disk = DiskSpec(name="d", path=tmp_path / "d.img", size="64M")
    facts = {"os": "Linux", "machine": "x86_64", "disk_d_free_kb": str(100 * 1024),
             "disk_d_have_kb": "0", **{f"have_{t}": "yes" for t in
                                       ("fio", "setsid", "python3", "ldd", "getconf")}}
    assert problems("h", facts, [disk], "tcg", images=1) == []
    found = problems("h", facts, [disk], "tcg", images=2)
    assert found == [f"host h: disk d ({disk.path} and 1 beside it) needs 128 MiB more but its "
                     "filesystem has 100 MiB free: free space there or move the disk "
                     "(disks: path)"]
    # an image already filled counts as space had
    assert problems("h", {**facts, "disk_d_have_kb": str(64 * 1024)}, [disk], "tcg",
                    images=2) == []
    assert problems("h", {**facts, "disk_d_block": "yes"}, [disk], "tcg", images=8) == []
