"""The scaling-with-devices section and figure of a report (pure: rows written by hand)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from harness import scaling, stats
from harness.matrix import Workload
from harness.report import write_report
from harness.results import HOST_VARIANT, ResultsStore, new_row

MANIFEST = {"run_id": "r1", "status": "complete", "accel": "tcg",
            "host": {"cpu_model": "Test CPU", "cores": 2, "kernel": "6.1", "os": "Debian 12"}}
# (variant, devices) → IOPS, guest CPU %, QEMU's host CPU % of one core
POINTS = {("baseline", 1): (1000, 40, 100), ("baseline", 2): (1500, 60, 150),
          ("baseline", 4): (1600, 95, 160),  # guest vCPUs full
          ("dataplane", 1): (1500, 40, 90), ("dataplane", 2): (3900, 50, 185),  # both cores
          ("dataplane", 4): (8000, 50, 120)}  # the storage's ceiling (host fio on 4 images)
#: devices → fio on the host with one job per image on that many images
CEILING = {1: 2000, 2: 3000, 4: 8200}


def row(variant: str, devices: int, rep: int, iops: float, guest: float, host: float) -> dict:
    return new_row(run_id="r1", guest="fio" if variant != HOST_VARIANT else "host",
                   variant=variant, accel="tcg", disk="shm",
                   workload=Workload("randread", "4k", 16, 1), rep=rep, log="", started_at="",
                   devices=devices, vcpus=2, iops=iops * (1 + 0.01 * rep), guest_cpu_pct=guest,
                   host_cpu_pct=host, cpu_us_per_io=host * 1e4 / iops,
                   cpu_us_per_io_iothread=0.5 * host * 1e4 / iops,
                   bound=stats.guest_bound(guest), lat_mean_us=16e6 / iops,
                   lat_p50_us=15e6 / iops, lat_p99_us=30e6 / iops, lat_p999_us=40e6 / iops)


@pytest.fixture
def run_dir(tmp_path):
    store = ResultsStore(tmp_path)
    for rep in (1, 2, 3):
        for (variant, devices), (iops, guest, host) in POINTS.items():
            store.append(row(variant, devices, rep, iops, guest, host))
        for devices, iops in CEILING.items():
            store.append(row(HOST_VARIANT, devices, rep, iops / 1.02, math.nan, math.nan))
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    return tmp_path


def test_each_point_says_what_bounded_it(run_dir):
    frame = ResultsStore(run_dir).load()
    limits = scaling.Limits(2, stats.host_ceiling(frame))
    rows = scaling.scaling_rows(stats.summarize(frame), limits)
    found = {(r.variant, r.devices): (r.bound_by, round(r.gain, 2)) for r in rows.itertuples()}
    assert found == {("baseline", 1): ("not saturated", 1.0),
                     ("baseline", 2): ("not saturated", 1.5),
                     ("baseline", 4): ("guest CPU", 1.6),
                     ("dataplane", 1): ("not saturated", 1.0),
                     ("dataplane", 2): ("host cores", 2.6),
                     ("dataplane", 4): ("storage", 5.33)}
    assert scaling.bound_by(rows.iloc[1], scaling.Limits(None, pd.DataFrame())) == "unknown"


def test_the_report_has_the_section_and_the_figure(run_dir):
    write_report(run_dir, "baseline")
    text = (run_dir / "report.md").read_text()
    assert "## Scaling with devices" in text and "the host has 2 cores" in text
    section = text.split("## Scaling with devices")[1].split("\n## ")[0]
    assert "| dataplane | 4 | " in section and "| storage |" in section
    # the I/O threads' CPU: their µs per I/O × IOPS (half of QEMU's 120%; IOPS 2% up)
    assert "| 8,160 | 5.33× | 150.0 | 50 | 120 | — | — | 61 | storage |" in section
    assert "![scaling.png](plots/scaling.png)" in section
    assert (run_dir / "plots" / "scaling.png").stat().st_size > 10_000
    # the per-iodepth summary never pools two device counts
    assert "disk shm × 4" in text and "disk shm × 2" in text


def test_a_run_with_one_device_has_no_scaling_section(tmp_path):
    store = ResultsStore(tmp_path)
    for rep in (1, 2, 3):
        for variant in ("baseline", "dataplane"):
            store.append(row(variant, 1, rep, 1000, 40, 90))
    write_report(tmp_path, "baseline")
    assert "Scaling with devices" not in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "plots" / "scaling.png").exists()


def test_the_figure_draws_the_ceiling_measured_at_each_device_count(run_dir):
    from harness import plots, scaling_plot

    frame = ResultsStore(run_dir).load()
    limits = scaling.Limits(2, stats.host_ceiling(frame))
    rows = scaling.scaling_rows(stats.summarize(frame), limits)
    colors = plots.variant_colors(rows["variant"], "baseline")
    fig = scaling_plot.scaling_figure(rows, colors, limits, "test")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    ceiling = lines[scaling_plot.CEILING_LABEL]
    assert list(ceiling.get_xdata()) == [1, 2, 4]
    assert list(ceiling.get_ydata()) == pytest.approx(list(CEILING.values()))  # not 2000 × N


def test_a_ceiling_where_fio_had_its_cpu_full_is_not_the_storages(run_dir):
    """On tmpfs fio on the host runs out of CPU first: a guest near it is not storage-bound."""
    store = ResultsStore(run_dir)
    frame = store.load()
    frame = frame[frame["variant"] != HOST_VARIANT]
    busy = pd.DataFrame([row(HOST_VARIANT, 4, rep, 8200 / 1.02, math.nan, 199.0)
                         for rep in (1, 2, 3)])   # fio's 4 jobs at 199% of the 2 cores
    limits = scaling.Limits(2, stats.host_ceiling(pd.concat([frame, busy])))
    rows = scaling.scaling_rows(stats.summarize(frame), limits)
    four = rows[(rows["variant"] == "dataplane") & (rows["devices"] == 4)].iloc[0]
    assert scaling.ceiling_iops(limits.ceiling, four) == pytest.approx(8200)
    assert scaling.storage_ceiling(limits, four) is None
    assert four["bound_by"] == "not saturated"
    idle = scaling.Limits(2, stats.host_ceiling(pd.concat([frame, busy.assign(
        host_cpu_pct=120.0, cpu_us_per_io=120.0 * 1e4 / busy["iops"])])))
    assert scaling.bound_by(four, idle) == "storage"     # fio had CPU to spare: the storage's


def test_a_full_main_loop_bounds_the_point(run_dir):
    """The baseline's one main-loop thread at a full core (as under KVM, where the vCPUs run
    outside the global mutex) is what bounds it, before any storage verdict."""
    frame = ResultsStore(run_dir).load()
    base = frame["variant"] == "baseline"
    frame.loc[base, "cpu_us_per_io_main"] = 95.0 * 1e4 / frame.loc[base, "iops"]
    frame.loc[~base, "cpu_us_per_io_main"] = 20.0 * 1e4 / frame.loc[~base, "iops"]
    limits = scaling.Limits(8, stats.host_ceiling(frame))
    rows = scaling.scaling_rows(stats.summarize(frame), limits)
    found = {(r.variant, r.devices): r.bound_by for r in rows.itertuples()}
    assert found[("baseline", 1)] == found[("baseline", 2)] == "main loop"
    assert found[("baseline", 4)] == "guest CPU"          # the guest's vCPUs come first
    assert found[("dataplane", 2)] == "storage"   # its main loop at 20% is not full: next rule
    assert scaling.thread_pct(rows.iloc[0], "main") == pytest.approx(95.0)
