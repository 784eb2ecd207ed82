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
    assert first.ratio == pytest.approx(200 / 100) and first.method == "BCa"
    assert first.low <= first.ratio <= first.high and first.low > 1.0


def test_ratio_ci_is_scipy_bca():
    from scipy.stats import bootstrap

    a, b = np.array([3689, 3700, 3650, 3710, 3600.0]), np.array([3212, 3220, 3180, 3300, 3250.0])
    expected = bootstrap((a, b), lambda x, y, axis: np.median(x, axis) / np.median(y, axis),
                         n_resamples=stats.RESAMPLES, method="BCa", vectorized=True,
                         **{stats._RNG_KEYWORD: np.random.default_rng(stats.SEED)}).confidence_interval
    ci = stats.ratio_ci(a, b)
    assert (ci.low, ci.high) == pytest.approx((expected.low, expected.high))


def test_ratio_ci_includes_one_for_overlapping_samples():
    ci = stats.ratio_ci([100, 120, 90], [110, 95, 105])
    assert ci.low < 1.0 < ci.high


def test_ratio_ci_with_three_reps_ends_at_ratios_of_observed_values():
    ci = stats.ratio_ci([200, 210, 220], [100, 110, 105])
    assert ci.low == pytest.approx(200 / 110) and ci.high == pytest.approx(220 / 100)


def test_ratio_ci_single_repetition_has_no_interval():
    ci = stats.ratio_ci([200], [100, 99, 101])
    assert ci.ratio == 2.0 and math.isnan(ci.low) and math.isnan(ci.high)
    assert ci.method == "none" and not ci.has_interval


def test_ratio_ci_all_equal_has_a_zero_width_interval():
    ci = stats.ratio_ci([300, 300, 300], [100, 100, 100])
    assert (ci.ratio, ci.low, ci.high, ci.method) == (3.0, 3.0, 3.0, "no spread")


def test_ratio_ci_falls_back_to_percentile_where_bca_is_undefined():
    ci = stats.ratio_ci([1, 1, 1, 2], [1, 1, 1])     # BCa's bias correction is infinite here
    assert ci.method == "percentile" and (ci.low, ci.high) == (1.0, 2.0)


def test_ratio_ci_zero_baseline_is_nan():
    ci = stats.ratio_ci([1, 2], [0, 0])
    assert math.isnan(ci.ratio) and ci.method == "none"


def test_benjamini_hochberg_matches_the_definition_and_skips_nan():
    q = stats.benjamini_hochberg([0.01, float("nan"), 0.04, 0.03, 0.5])
    # sorted p 0.01 0.03 0.04 0.5 over m = 4 tests: 0.04, 0.0533, 0.0533, 0.5
    assert q[0] == pytest.approx(0.04) and math.isnan(q[1])
    assert q[2] == pytest.approx(0.04 * 4 / 3) and q[3] == pytest.approx(0.04 * 4 / 3)
    assert q[4] == pytest.approx(0.5)
    assert np.isnan(stats.benjamini_hochberg([float("nan")])).all()
    assert len(stats.benjamini_hochberg([])) == 0


def test_mann_whitney_exact_and_degenerate():
    assert stats.mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert stats.mann_whitney_p([5, 5, 5], [5, 5, 5]) == 1.0
    assert math.isnan(stats.mann_whitney_p([1], [2, 3]))
    assert stats.smallest_p(3, 3) == pytest.approx(0.1)


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
