"""`harness bench` with accel kvm-nested: L1 is a KVM host, the points go through the runners
every host uses (nested/host.py), with real QEMU at both levels, a real L2 Linux, SSH and fio.

About five minutes here: L1 boots in seconds, the variants and guests are shipped into
it (~140 MB over SSH), each fio guest boots in about a minute under L1's KVM (Debian's
QEMU, carried in the L1 image, in half that).  Both
guests drive two disks.  The micro-guest polls (wait: poll): a halting L2 meets L0's
hang now and then (docs/kvm-nested.md); its interrupt paths under L1 are
tests/test_kvm_nested.py's, and so is the crc32c verify of both disks of an L2 Linux
(test_fio_guest_under_l1_kvm, whose one L2 boot serves its other checks too).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from harness.paths import cache_dir

pytestmark = pytest.mark.e2e

VARIANTS = ("baseline", "dataplane")           # built ones
PEER = {"name": "qemu-system", "binary": "qemu-system-x86_64"}  # Debian's, carried into L1
DEVICES = 2   # each point's guest drives two disks: L1 gets four virtio disks (two images each)


def _config(tmp_path: Path) -> Path:
    config = {
        "name": "l1-bench",
        "variants": [*VARIANTS, PEER],
        "baseline": "baseline",
        "guests": [{"kind": "microguest", "wait": "poll", "memory_mb": 128,
                    "disks_per_guest": [DEVICES]},
                   {"kind": "fio", "memory_mb": 512, "disks_per_guest": [DEVICES]}],
        "disks": [{"name": "disk", "path": str(tmp_path / "l1-bench.img"), "size": "64M"}],
        "workloads": {"rw": ["randwrite"], "bs": ["4k"], "iodepth": [16], "numjobs": [1],
                      "runtime_s": 2, "ramp_s": 1, "requests": 1000},
        "repetitions": 1,
        "accel": "kvm-nested",
        "timeouts": {"boot_s": 480, "point_s": 120},
    }
    path = tmp_path / "l1-bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(1500)
def test_bench_through_l1_runs_fio_and_the_micro_guest_under_kvm(tmp_path, monkeypatch):
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("Debian's qemu-system-x86_64 boots L1: run scripts/install.sh")
    missing = [v for v in VARIANTS if not (cache_dir() / "build" / v / "manifest.json").exists()]
    if missing:
        pytest.skip(f"variants {missing} are not built in {cache_dir()}: run `harness build`")
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path / "results"))
    from harness.bench import run_bench

    said: list[str] = []
    run_dir = run_bench(_config(tmp_path), say=said.append)

    with open(run_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = (*VARIANTS, PEER["name"])
    assert len(rows) == 2 * len(names)
    failed = [(r["guest"], r["variant"], r["error"], r["log"]) for r in rows if r["status"] != "ok"]
    assert not failed, failed
    assert {(r["guest"], r["variant"]) for r in rows} == {
        (g, v) for g in ("microguest-poll", "fio") for v in names}
    assert {r["accel"] for r in rows} == {"kvm-nested"} and {r["host"] for r in rows} == {"l1"}
    assert all(float(r["iops"]) > 0 for r in rows)
    for row in rows:  # both disks of every point did I/O; fio's row is their sum
        per_device = [float(x) for x in row["device_iops"].split(";")]
        assert int(row["devices"]) == DEVICES and len(per_device) == DEVICES, row
        assert all(x > 0 for x in per_device), row
        if row["guest"] == "fio":
            assert float(row["iops"]) == pytest.approx(sum(per_device), rel=0.01), row
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["hosts"]["l1"]["accel"] == "kvm" and manifest["hosts"]["l1"]["kvm_device"]
    for variant in VARIANTS:  # the shipped binary, run there with KVM
        line = manifest["qemu_command_lines"][variant]
        assert "accel=kvm " in line and line.startswith("/root/harness/trees/"), line
    peer = manifest["qemu_command_lines"][PEER["name"]]   # Debian's, from L1's /usr/bin
    assert "accel=kvm" in peer and peer.startswith("/usr/bin/qemu-system-x86_64 "), peer
    assert any(line.startswith("kvm-nested: L1 answers SSH") for line in said), said
    assert any("shipped" in line and "host l1" in line for line in said), said
