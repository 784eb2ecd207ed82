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


def _welch_log(values, base, confidence=0.95):
    """The interval from scipy's own Welch t-test on the logs: an independent check."""
    from scipy.stats import ttest_ind

    result = ttest_ind(np.log(values), np.log(base), equal_var=False)
    return np.exp(result.confidence_interval(confidence))


def test_ratio_ci_is_welch_t_on_the_logs():
    a, b = np.array([3689, 3700, 3650, 3710, 3600.0]), np.array([3212, 3220, 3180, 3300, 3250.0])
    ci = stats.ratio_ci(a, b)
    assert ci.method == stats.CI_METHOD == "Welch t on logs (ratio of geometric means)"
    assert ci.ratio == pytest.approx(np.exp(np.log(a).mean() - np.log(b).mean()))
    assert (ci.low, ci.high) == pytest.approx(tuple(_welch_log(a, b)))
    assert ci.low < ci.ratio < ci.high and ci.low > 1.0
    assert stats.ratio_ci(a, b) == ci                      # no randomness
    assert (ci.n, ci.n_base) == (5, 5) and 4 <= ci.df <= 8


def test_ratio_ci_is_symmetric_in_log_space():
    a, b = [200, 210, 190, 205], [100, 104, 98]
    forward, backward = stats.ratio_ci(a, b), stats.ratio_ci(b, a)
    assert forward.ratio == pytest.approx(1 / backward.ratio)
    assert (forward.low, forward.high) == pytest.approx((1 / backward.high, 1 / backward.low))


def test_ratio_ci_widens_honestly_at_three_repetitions():
    # same spread, fewer repetitions: wider, and by more than 1/sqrt(n) (the t quantile)
    rng = np.random.default_rng(1)
    base = 1000 * np.exp(rng.normal(0, 0.04, 10))
    wide, narrow = stats.ratio_ci(base[:3] * 1.1, base[3:6]), stats.ratio_ci(base * 1.1, base[::-1])
    assert np.log(wide.high / wide.low) > 2 * np.log(narrow.high / narrow.low)


def test_ratio_ci_covers_about_95_percent_at_three_repetitions():
    # log-normal repetitions with unequal spread, 3 a side: the Welch interval holds its level
    # (a bootstrap of 3 values covers far less)
    rng = np.random.default_rng(2)
    trials, covered = 2000, 0
    for _ in range(trials):
        a = 100 * np.exp(rng.normal(0, 0.03, 3))
        b = 80 * np.exp(rng.normal(0, 0.08, 3))
        ci = stats.ratio_ci(b, a)
        covered += ci.low <= 0.8 <= ci.high
    assert 0.93 <= covered / trials <= 0.98


def test_ratio_ci_at_another_level_is_wider_and_keeps_the_estimate():
    ci = stats.ratio_ci([200, 210, 190], [100, 104, 98])
    strict = ci.at(0.99)
    assert strict.ratio == ci.ratio and strict.confidence == 0.99
    assert strict.low < ci.low and strict.high > ci.high
    assert (strict.low, strict.high) == pytest.approx(
        tuple(_welch_log([200, 210, 190], [100, 104, 98], 0.99)))


def test_ratio_ci_includes_one_for_overlapping_samples():
    ci = stats.ratio_ci([100, 120, 90], [110, 95, 105])
    assert ci.low < 1.0 < ci.high


def test_ratio_ci_below_three_repetitions_gives_the_min_max_instead():
    ci = stats.ratio_ci([200, 210], [100, 99, 101])
    assert ci.ratio == pytest.approx(np.sqrt(200 * 210) / np.cbrt(100 * 99 * 101))
    assert math.isnan(ci.low) and math.isnan(ci.high) and not ci.has_interval
    assert ci.method == "none: fewer than 3 repetitions"
    assert (ci.range_low, ci.range_high) == pytest.approx((200 / 101, 210 / 99))
    single = stats.ratio_ci([200], [100])
    assert single.ratio == pytest.approx(2.0) and not single.has_interval and single.range_low == 2.0


def test_ratio_ci_all_equal_has_a_zero_width_interval():
    ci = stats.ratio_ci([300, 300, 300], [100, 100, 100])
    assert (ci.ratio, ci.low, ci.high) == pytest.approx((3.0, 3.0, 3.0)) and ci.method == "no spread"


def test_ratio_ci_one_side_without_spread_uses_the_others_df():
    ci = stats.ratio_ci([300, 300, 300], [100, 110, 90])
    assert ci.df == pytest.approx(2) and ci.low < 3.0 < ci.high


def test_ratio_ci_zero_or_missing_is_nan():
    ci = stats.ratio_ci([1, 2], [0, 0])
    assert math.isnan(ci.ratio) and ci.method == "none"
    assert math.isnan(stats.ratio_ci([], [1, 2, 3]).ratio)


def test_goal_verdict_reads_the_whole_interval():
    assert stats.goal_verdict(1.02, 1.3, 1.0) == "met"
    assert stats.goal_verdict(1.0, 1.3, 1.0) == "met"              # at the goal counts
    assert stats.goal_verdict(0.5, 0.99, 1.0) == "missed"
    assert stats.goal_verdict(0.45, 2.02, 1.0) == "undecided"       # irq QD1 1.09× of the README
    assert stats.goal_verdict(float("nan"), float("nan"), 1.0) == "undecided"


def test_change_verdict_against_the_band():
    assert stats.change_verdict(0.4, 0.94, 0.05) == "regressed"
    assert stats.change_verdict(0.4, 0.96, 0.05) == "inconclusive"
    assert stats.change_verdict(1.06, 1.3, 0.05) == "improved"
    assert stats.change_verdict(0.97, 1.04, 0.05) == "unchanged"
    assert stats.change_verdict(0.90, 1.04, 0.05) == "inconclusive"
    assert stats.change_verdict(float("nan"), 1.0, 0.05) == "inconclusive"


def test_fcr_confidence_is_benjamini_yekutieli():
    assert stats.fcr_confidence(1, 20) == pytest.approx(1 - 0.05 / 20)
    assert stats.fcr_confidence(36, 36) == pytest.approx(0.95)
    assert stats.fcr_confidence(4, 8) == pytest.approx(0.975)
    assert stats.fcr_confidence(0, 8) == 0.95


def test_ratios_per_workload_with_latency_and_noise():
    df = frame_from_rows(
        [row("baseline", x, i + 1, p99=200) for i, x in enumerate([100, 101, 99])]
        + [row("dataplane", x, i + 1, p99=100) for i, x in enumerate([150, 300, 210])]
        + [row("host-fio", 1000, i + 1) for i in range(3)]
        + [row("dataplane", 500, 1, qd=64)])  # no baseline at qd64: no ratio
    out = stats.ratios(df, "baseline")
    assert list(out["variant"]) == ["dataplane"] and list(out["iodepth"]) == [16]
    result = out.iloc[0]
    # ratio of geometric means: (150·300·210)^(1/3) / (100·101·99)^(1/3)
    assert result["ratio"] == pytest.approx(np.cbrt(150 * 300 * 210) / np.cbrt(100 * 101 * 99))
    assert result["ci_method"] == stats.CI_METHOD and result["ci_low"] < 1.0 < result["ci_high"]
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
