"""Aggregation, ratios and confidence intervals on synthetic rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness import stats
from harness.matrix import Workload
from harness.results import failed_row, frame_from_rows, new_row


def row(variant: str, iops: float, rep: int, *, qd: int = 16, p99: float = 100.0,
        accel: str = "tcg", guest: str = "fio") -> dict:
    return new_row(run_id="r", guest=guest, variant=variant, accel=accel, disk="file",
                   workload=Workload("randread", "4k", qd, 1), rep=rep, log=f"logs/{variant}.log",
                   started_at="2026-11-25T04:00:00+00:00", iops=iops, lat_p99_us=p99,
                   lat_p50_us=p99 / 3, lat_p999_us=p99 * 2, lat_mean_us=p99 / 2)


def frame(values: dict[str, list[float]], **kw):
    return frame_from_rows([row(v, x, i + 1, **kw) for v, xs in values.items() for i, x in enumerate(xs)])


def test_summarize_median_spread_and_noise():
    df = frame({"baseline": [100, 110, 90, 105], "dataplane": [200, 150, 260, 210]})
    summary = stats.summarize(df).set_index("variant")
    base = summary.loc["baseline"]
    assert base["iops_median"] == 102.5 and base["iops_min"] == 90 and base["iops_max"] == 110
    assert base["iops_iqr"] == pytest.approx(np.quantile([90, 100, 105, 110], 0.75)
                                             - np.quantile([90, 100, 105, 110], 0.25))
    assert base["n_ok"] == 4 and not base["noisy"]
    assert summary.loc["dataplane", "noisy"]  # CV ≈ 0.22
    assert summary.loc["dataplane", "iops_cv"] == pytest.approx(np.std([200, 150, 260, 210], ddof=1) / 205)


def test_summarize_counts_failures_and_keeps_all_failed_points():
    rows = [row("baseline", 100, 1), row("baseline", 101, 2)]
    rows.append(failed_row(run_id="r", guest="fio", variant="dataplane", accel="tcg", disk="file",
                           workload=Workload("randread", "4k", 16, 1), rep=1, error="boom",
                           log="logs/dp.log", started_at="2026-11-25T04:00:00+00:00"))
    summary = stats.summarize(frame_from_rows(rows)).set_index("variant")
    assert summary.loc["dataplane", "n_ok"] == 0 and summary.loc["dataplane", "n_failed"] == 1
    assert math.isnan(summary.loc["dataplane", "iops_median"])
    assert summary.loc["baseline", "n_failed"] == 0


def test_ratio_ci_is_deterministic_and_contains_the_ratio():
    a = [200, 210, 190, 205, 195]
    b = [100, 104, 98, 101, 99]
    first, second = stats.ratio_ci(a, b), stats.ratio_ci(a, b)
    assert first == second
    ratio, low, high = first
    assert ratio == pytest.approx(200 / 100)
    assert low <= ratio <= high and low > 1.0


def test_ratio_ci_includes_one_for_overlapping_samples():
    ratio, low, high = stats.ratio_ci([100, 120, 90], [110, 95, 105])
    assert low < 1.0 < high


def test_ratio_ci_with_three_reps_is_the_extreme_range():
    _, low, high = stats.ratio_ci([200, 210, 220], [100, 110, 105])
    assert low == pytest.approx(200 / 110) and high == pytest.approx(220 / 100)


def test_ratio_ci_single_repetition_has_no_interval():
    ratio, low, high = stats.ratio_ci([200], [100, 99, 101])
    assert ratio == 2.0 and math.isnan(low) and math.isnan(high)


def test_ratios_per_workload_with_latency_and_noise():
    df = frame_from_rows(
        [row("baseline", x, i + 1, p99=200) for i, x in enumerate([100, 101, 99])]
        + [row("dataplane", x, i + 1, p99=100) for i, x in enumerate([150, 300, 210])]
        + [row("host-fio", 1000, i + 1) for i in range(3)]
        + [row("dataplane", 500, 1, qd=64)])  # no baseline at qd64: no ratio
    out = stats.ratios(df, "baseline")
    assert list(out["variant"]) == ["dataplane"] and list(out["iodepth"]) == [16]
    result = out.iloc[0]
    assert result["ratio"] == pytest.approx(2.1)
    assert result["p99_ratio"] == pytest.approx(0.5)
    assert result["noisy"]  # the dataplane's CV is far above 10%


def test_ratios_keep_accelerators_apart():
    df = frame_from_rows([row("baseline", 100, 1, accel="kvm"), row("baseline", 100, 2, accel="kvm"),
                          row("dataplane", 300, 1, accel="tcg"), row("dataplane", 300, 2, accel="tcg")])
    assert stats.ratios(df, "baseline").empty


def test_host_ceiling():
    df = frame({"host-fio": [1000, 1200, 1100], "baseline": [10, 11, 12]})
    ceiling = stats.host_ceiling(df)
    assert len(ceiling) == 1 and ceiling.iloc[0]["host_iops_median"] == 1100
    assert ceiling.iloc[0]["host_n"] == 3
