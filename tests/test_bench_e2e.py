"""End to end: the smoke config with real QEMU, a real guest, real SSH and real fio.

Debian's qemu-system-x86_64 always takes part; the variants `harness build`
made take part where they are built (CI on a machine with a filled cache runs
them all).  Under TCG this takes a few minutes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.paths import PROJECT_ROOT, cache_dir

from conftest import system_qemu_or_skip

pytestmark = pytest.mark.e2e


def _available_variants(variants: list) -> list:
    kept = []
    for variant in variants:
        name = variant if isinstance(variant, str) else variant.get("build") or variant.get("name")
        if isinstance(variant, dict) and variant.get("binary"):
            kept.append(variant)
        elif (cache_dir() / "build" / name / "manifest.json").exists():
            kept.append(variant)
    return kept


@pytest.mark.timeout(600)
def test_smoke_end_to_end(tmp_path: Path, monkeypatch):
    system_qemu_or_skip()
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "smoke.yaml").read_text())
    config["variants"] = _available_variants(config["variants"])
    names = [v if isinstance(v, str) else v["name"] for v in config["variants"]]
    if config["baseline"] not in names:
        config["baseline"] = names[0]
    config["disks"][0]["path"] = str(tmp_path / "smoke.img")
    config_file = tmp_path / "smoke.yaml"
    config_file.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path / "results"))

    from harness.bench import run_bench

    messages: list[str] = []
    run_dir = run_bench(config_file, accel="auto", say=messages.append)

    df = pd.read_csv(run_dir / "results.csv")
    workloads = len(config["workloads"]["iodepth"])
    assert len(df) == len(names) * workloads * config["repetitions"]
    failed = df[df.status != "ok"]
    assert failed.empty, failed[["variant", "error", "log"]].to_string()
    for column in ("variant", "accel", "rw", "bs", "iodepth", "numjobs", "rep", "iops", "bw_mib_s",
                   "lat_mean_us", "lat_p50_us", "lat_p99_us", "lat_p999_us", "guest_cpu_pct",
                   "host_cpu_pct"):
        assert column in df.columns
    assert set(df.variant) == set(names)
    assert (df.iops > 0).all() and (df.lat_p99_us >= df.lat_p50_us).all()
    assert df.accel.isin(["kvm", "tcg"]).all()
    for plot in ("iops_vs_iodepth", "latency_percentiles", "speedup"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 1000
        assert (run_dir / "plots" / f"{plot}.svg").exists()
    report = (run_dir / "report.md").read_text()
    assert "randread" in report and df.accel.iloc[0].upper() in report.upper()
    assert (run_dir / "manifest.json").exists() and len(list((run_dir / "raw").glob("*.json"))) == len(df)
