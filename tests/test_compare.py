"""Comparing two runs: real differences are flagged, noise is not."""

from __future__ import annotations

import pytest
from rich.console import Console

from harness.compare import compare_runs, render_markdown, render_rich
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
    a = write_run(tmp_path / "a", {("dataplane", 16): [100, 102, 98],
                                   ("baseline", 16): [100, 103, 97],
                                   ("baseline", 1): [50, 51, 49]})
    b = write_run(tmp_path / "b", {("dataplane", 16): [201, 198, 204],
                                   ("baseline", 16): [99, 104, 101],
                                   ("poll", 16): [10, 10, 10]})  # only in B: not matched
    df = compare_runs(a, b).set_index(["variant", "iodepth"])
    assert len(df) == 2
    doubled = df.loc[("dataplane", 16)]
    assert doubled["ratio"] == pytest.approx(2.0, rel=0.02)
    assert doubled["ci_low"] > 1.0 and doubled["differs"]
    same = df.loc[("baseline", 16)]
    assert same["ci_low"] <= 1.0 <= same["ci_high"] and not same["differs"]
    assert doubled["note"] == ""


def test_small_shift_within_the_noise_is_not_flagged(tmp_path):
    # The CI excludes 1 (every B rep beats the best A median) but the 3% shift is
    # below run A's 12% coefficient of variation.
    a = write_run(tmp_path / "a", {("baseline", 16): [80, 100, 100]})
    b = write_run(tmp_path / "b", {("baseline", 16): [101, 103, 120]})
    row = compare_runs(a, b).iloc[0]
    assert row["ci_low"] > 1.0
    assert not row["differs"]


def test_different_accelerators_are_labelled(tmp_path):
    a = write_run(tmp_path / "a", {("baseline", 16): [100, 101, 99]}, accel="kvm")
    b = write_run(tmp_path / "b", {("baseline", 16): [10, 11, 9]}, accel="tcg")
    df = compare_runs(a, b)
    assert df.iloc[0]["note"] == "different accelerators (kvm vs tcg)"
    text = render_markdown(df, "kvm-run", "tcg-run")
    assert "different accelerators" in text and "DIFFERS" in text


def test_renderings(tmp_path):
    a = write_run(tmp_path / "a", {("dataplane", 16): [100, 102, 98]})
    b = write_run(tmp_path / "b", {("dataplane", 16): [201, 198, 204]})
    df = compare_runs(a, b)
    markdown = render_markdown(df)
    assert "| fio | dataplane | file | randread 4k qd16 j1 | 100 | 201 | 2.01 [" in markdown
    table = render_rich(df)
    assert table.row_count == 1
    console = Console(record=True, width=200)
    console.print(table)
    assert "DIFFERS" in console.export_text()
