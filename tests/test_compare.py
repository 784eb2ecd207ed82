"""Comparing two runs: real differences are flagged, noise is not."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.compare import compare_runs, regression_lines, render_markdown
from harness.errors import UserError
from harness.matrix import Workload
from harness.results import ResultsStore, new_row


def write_run(path, values: dict[tuple[str, int], list[float]], accel: str = "tcg"):
    """values: (variant, iodepth) → IOPS per repetition."""
    store = ResultsStore(path)
    for (variant, qd), series in values.items():
        for rep, iops in enumerate(series, start=1):
            store.append(new_row(run_id=path.name, guest="fio", variant=variant, accel=accel,
                                 disk="file", workload=Workload("randread", "4k", qd, 1), rep=rep,
                                 log="logs/x.log", started_at="2026-11-25T04:00:00+00:00",
                                 iops=iops))
    return path


def test_real_2x_is_flagged_and_noise_is_not(tmp_path):
    a = write_run(tmp_path / "a", {("dataplane", 16): [100, 102, 98, 101, 99],
                                   ("baseline", 16): [100, 103, 97, 101, 99],
                                   ("baseline", 1): [50, 51, 49, 50, 52]})
    b = write_run(tmp_path / "b", {("dataplane", 16): [201, 198, 204, 200, 199],
                                   ("baseline", 16): [99, 104, 101, 98, 100],
                                   ("poll", 16): [10, 10, 10, 10, 10]})  # only in B: not matched
    df = compare_runs(a, b).table.set_index(["variant", "iodepth"])
    assert len(df) == 2
    doubled = df.loc[("dataplane", 16)]
    assert doubled["ratio"] == pytest.approx(2.0, rel=0.02)
    assert doubled["ci_low"] > 1.0 and doubled["differs"] and not doubled["regression"]
    assert doubled["p"] == pytest.approx(2 / 252)      # exact test, complete separation
    same = df.loc[("baseline", 16)]
    assert same["ci_low"] <= 1.0 <= same["ci_high"] and not same["differs"]
    assert same["p"] > 0.5
    assert doubled["note"] == ""


def test_three_repetitions_cannot_call_a_difference(tmp_path):
    # The bootstrap CI excludes 1, but identical runs separate completely one time in ten
    # with 3 repetitions a side: the exact test's smallest p is 0.1.
    a = write_run(tmp_path / "a", {("baseline", 16): [100, 101, 99]})
    b = write_run(tmp_path / "b", {("baseline", 16): [201, 198, 204]})
    row = compare_runs(a, b).table.iloc[0]
    assert row["ci_low"] > 1.0
    assert row["p"] == pytest.approx(0.1)
    assert not row["differs"]
    assert "too few to call a difference" in row["note"]


def test_significant_shift_below_the_tolerance_is_not_flagged(tmp_path):
    a = write_run(tmp_path / "a", {("baseline", 16): [100, 100.5, 101, 101.5, 102]})
    b = write_run(tmp_path / "b", {("baseline", 16): [103, 103.5, 104, 104.5, 105]})
    row = compare_runs(a, b).table.iloc[0]
    assert row["q"] < 0.05 and not row["differs"]          # 3% < 5% tolerance
    assert compare_runs(a, b, tolerance=0.02).table.iloc[0]["differs"]


def test_one_shift_among_many_workloads_needs_more_evidence():
    from harness.stats import benjamini_hochberg

    q_values = benjamini_hochberg([0.008] + [0.5] * 19 + [float("nan")])
    assert q_values[0] == pytest.approx(0.16)              # 0.008 × 20 tests
    assert np.isnan(q_values[-1])
    assert list(benjamini_hochberg([0.01, 0.02, 0.03])) == pytest.approx([0.03, 0.03, 0.03])


def test_different_accelerators_are_labelled(tmp_path):
    a = write_run(tmp_path / "kvm-run", {("baseline", 16): [100, 101, 99, 100, 102]}, accel="kvm")
    b = write_run(tmp_path / "tcg-run", {("baseline", 16): [10, 11, 9, 10, 12]}, accel="tcg")
    comparison = compare_runs(a, b)
    assert comparison.table.iloc[0]["note"] == "different accelerators (kvm vs tcg)"
    text = render_markdown(comparison)
    assert "different accelerators" in text and "| **worse** |" in text
    assert "Benjamini-Hochberg" in text


def test_runs_are_labelled_by_their_ids(tmp_path):
    a = write_run(tmp_path / "rfc-v9-1", {("dataplane", 16): [100, 102, 98, 101, 99]})
    b = write_run(tmp_path / "rfc-v9-2", {("dataplane", 16): [201, 198, 204, 200, 199]})
    comparison = compare_runs(a, b)
    assert (comparison.name_a, comparison.name_b) == ("rfc-v9-1", "rfc-v9-2")
    markdown = render_markdown(comparison)
    assert "| guest | variant | disk | workload | IOPS rfc-v9-1 | IOPS rfc-v9-2 | ratio [95% CI] |" \
        in markdown
    assert "rfc-v9-2 against rfc-v9-1, ratio = rfc-v9-2 / rfc-v9-1" in markdown
    assert "| fio | dataplane | file | randread 4k qd16 j1 | 100 | 200 | 2.00 [" in markdown
    assert "| better |" in markdown and " A " not in markdown and "B/A" not in markdown
    same = compare_runs(a, a)
    assert (same.name_a, same.name_b) == ("rfc-v9-1 (A)", "rfc-v9-1 (B)")


def _gate_runs(tmp_path, b_values):
    a = write_run(tmp_path / "ref", {("dataplane", 16): [200, 202, 198, 201, 199],
                                     ("baseline", 16): [100, 101, 99, 100, 102]})
    b = write_run(tmp_path / "new", {("dataplane", 16): b_values,
                                     ("baseline", 16): [100, 102, 98, 101, 99]})
    return a, b


def test_fail_on_regression_exits_1_and_names_the_workload(tmp_path):
    a, b = _gate_runs(tmp_path, [150, 151, 149, 152, 148])        # dataplane lost 25%
    comparison = compare_runs(a, b)
    assert list(comparison.regressions["variant"]) == ["dataplane"]
    assert regression_lines(comparison) == [
        "regression: fio dataplane file randread 4k qd16 j1: 200 → 150 IOPS "
        f"({comparison.regressions.iloc[0]['ratio']:.2f} [{comparison.regressions.iloc[0]['ci_low']:.2f}, "
        f"{comparison.regressions.iloc[0]['ci_high']:.2f}], q 0.016)"]
    runner = CliRunner()
    gated = runner.invoke(app, ["compare", str(a), str(b), "--fail-on-regression"])
    assert gated.exit_code == 1, gated.output
    assert "regression: fio dataplane file randread 4k qd16 j1" in gated.output
    assert runner.invoke(app, ["compare", str(a), str(b)]).exit_code == 0      # no gate asked


def test_fail_on_regression_passes_improvements_and_shifts_within_tolerance(tmp_path):
    runner = CliRunner()
    for name, values in (("faster", [300, 301, 299, 302, 298]), ("small", [196, 195, 197, 194, 196])):
        a, b = _gate_runs(tmp_path / name, values)
        result = runner.invoke(app, ["compare", str(a), str(b), "--fail-on-regression"])
        assert result.exit_code == 0, result.output
        assert compare_runs(a, b).regressions.empty
    a, b = _gate_runs(tmp_path / "tight", [196, 195, 197, 194, 196])             # -2.5%
    result = runner.invoke(app, ["compare", str(a), str(b), "--fail-on-regression",
                                 "--tolerance", "0.01"])
    assert result.exit_code == 1


def test_compare_of_a_missing_run_is_a_user_error(tmp_path):
    a, _ = _gate_runs(tmp_path, [200, 200, 200, 200, 201])
    with pytest.raises(UserError, match="has no results.csv"):
        compare_runs(a, tmp_path / "nothing")
