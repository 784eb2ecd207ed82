"""Comparing two runs: a gate that can fail, says when it cannot tell, and never pools."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from harness import stats
from harness.cli import app, run_cli
from harness.compare import (compare_frames, compare_runs, inconclusive_lines, json_document,
                             parse_tolerance, regression_lines, render_markdown)
from harness.errors import EXIT_INCONCLUSIVE, EXIT_REGRESSION, EXIT_USER, UserError
from harness.matrix import Workload
from harness.results import ResultsStore, frame_from_rows, new_row

ROOT = Path(__file__).resolve().parent.parent
MICRO_V2 = ROOT / "results" / "micro-v2-20261202-030452"
VARIANTS = ("baseline", "dataplane")
WORKLOADS = [("randread", 1), ("randread", 16), ("randwrite", 1), ("randwrite", 16)]


def make_rows(run_id: str, reps: int, cv: float, seed: int, scale: dict | None = None,
              host: str = "local", accel: str = "kvm", disturbed: int = 0) -> list[dict]:
    """2 variants × 4 workloads; IOPS log-normal around a base with this CV; `scale`:
    variant → factor on its IOPS.  `disturbed`: the first that many repetitions of each
    point are flagged disturbed."""
    rng = np.random.default_rng(seed)
    scale = scale or {}
    rows = []
    for variant in VARIANTS:
        for w, (rw, qd) in enumerate(WORKLOADS):
            base = 10_000 * (w + 1) * (2 if variant == "dataplane" else 1)
            for rep in range(1, reps + 1):
                iops = base * scale.get(variant, 1.0) * float(np.exp(rng.normal(0, cv)))
                rows.append(new_row(run_id=run_id, guest="fio", variant=variant, accel=accel,
                                    disk="file", workload=Workload(rw, "4k", qd, 1), rep=rep,
                                    log="logs/x.log", started_at="2026-12-06T03:00:00+00:00",
                                    host=host, disturbed=rep <= disturbed, iops=iops))
    return rows


def frame(*args, **kw):
    return frame_from_rows(make_rows(*args, **kw))


def write_run(path: Path, rows: list[dict]) -> Path:
    store = ResultsStore(path)
    for row in rows:
        store.append(row)
    return path


def verdicts(comparison) -> dict[str, str]:
    table = comparison.table
    return {f"{r.variant} {r.rw} qd{r.iodepth}": r.verdict for r in table.itertuples()}


# --- the verdicts --------------------------------------------------------------------------

def test_identical_runs_are_unchanged_when_tight():
    rows = frame("r", 3, 0.01, seed=1)
    comparison = compare_frames(rows, rows)
    assert set(comparison.table["verdict"]) == {"unchanged"}
    assert comparison.table["ratio"].tolist() == pytest.approx([1.0] * 8)


def test_identical_runs_with_3_noisy_repetitions_are_inconclusive_not_unchanged():
    # CV 4% and 3 a side: the interval is typically ±10% (t = 2.8 at df 4), wider than the
    # ±5% band, so the gate says it cannot tell rather than calling them the same (a sample
    # of 3 that happens to be tight can still give "unchanged").
    rows = frame("r", 3, 0.04, seed=2)
    counts = compare_frames(rows, rows).counts()
    assert counts["regressed"] == counts["improved"] == 0
    assert counts["inconclusive"] >= 6, counts


def test_halved_variant_with_3_repetitions_regresses():
    a = frame("a", 3, 0.04, seed=3)
    b = frame("b", 3, 0.04, seed=4, scale={"dataplane": 0.5})
    comparison = compare_frames(a, b)
    got = verdicts(comparison)
    assert all(v == "regressed" for k, v in got.items() if k.startswith("dataplane")), got
    assert not any(v == "regressed" for k, v in got.items() if k.startswith("baseline")), got
    assert comparison.selected == 4 and comparison.tested == 8
    assert comparison.adjusted_confidence == pytest.approx(1 - 0.05 * 4 / 8)
    regressed = comparison.regressions
    assert np.allclose(regressed["confidence"], 0.975)
    assert (regressed["ci_high"] < 0.95).all() and (regressed["ratio"] < 0.6).all()


def test_one_halved_workload_among_eight_still_regresses_at_3_repetitions():
    # R = 1 of m = 8: shown at 99.4%, the t quantile at df ~4 near 5.6, still clear of -5%.
    a = frame("a", 3, 0.04, seed=5)
    b_rows = make_rows("b", 3, 0.04, seed=6)
    for row in b_rows:
        if row["variant"] == "dataplane" and row["iodepth"] == 16 and row["rw"] == "randread":
            row["iops"] /= 2
    comparison = compare_frames(a, frame_from_rows(b_rows))
    assert list(comparison.regressions["variant"]) == ["dataplane"]
    assert comparison.adjusted_confidence == pytest.approx(1 - 0.05 / 8)
    assert comparison.regressions.iloc[0]["confidence"] == pytest.approx(0.99375)


@pytest.mark.parametrize("seed", range(20))
def test_down_20pct_with_5_repetitions_is_never_unchanged(seed):
    a = frame("a", 5, 0.04, seed=100 + seed)
    b = frame("b", 5, 0.04, seed=200 + seed, scale={"dataplane": 0.8})
    got = verdicts(compare_frames(a, b))
    moved = {k: v for k, v in got.items() if k.startswith("dataplane")}
    assert set(moved.values()) <= {"regressed", "inconclusive"}, moved
    assert "regressed" in moved.values()          # at CV 4% and 5 a side it is seen


def test_up_2pct_with_10_tight_repetitions_is_unchanged():
    a = frame("a", 10, 0.01, seed=7)
    b = frame("b", 10, 0.01, seed=8, scale={"dataplane": 1.02})
    comparison = compare_frames(a, b)
    assert set(comparison.table["verdict"]) == {"unchanged"}
    dataplane = comparison.table[comparison.table["variant"] == "dataplane"]
    assert dataplane["ratio"].tolist() == pytest.approx([1.02] * 4, abs=0.01)


def test_a_shift_inside_the_tolerance_is_not_a_regression_but_a_tighter_gate_sees_it():
    a = frame("a", 10, 0.005, seed=9)
    b = frame("b", 10, 0.005, seed=10, scale={"dataplane": 0.97})
    assert compare_frames(a, b).regressions.empty
    tight = compare_frames(a, b, tolerance=0.01)
    assert set(tight.regressions["variant"]) == {"dataplane"}


def test_improvement_is_improved():
    a = frame("a", 5, 0.03, seed=11)
    b = frame("b", 5, 0.03, seed=12, scale={"dataplane": 1.5})
    comparison = compare_frames(a, b)
    assert set(comparison.table.loc[comparison.table["variant"] == "dataplane", "verdict"]) \
        == {"improved"}
    assert comparison.regressions.empty


def test_fcr_adjustment_can_take_back_a_marginal_claim():
    # 20 workloads, one whose 95% interval barely clears -5%: at 1 - 0.05/20 it does not.
    a_rows, b_rows = [], []
    for qd in range(1, 21):
        base = [100.0, 102.0, 98.0]
        shifted = [0.86 * x for x in base] if qd == 1 else base
        for rep, (x, y) in enumerate(zip(base, shifted), start=1):
            common = dict(guest="fio", variant="baseline", accel="kvm", disk="file",
                          workload=Workload("randread", "4k", qd, 1), rep=rep, log="x",
                          started_at="2026-12-06T03:00:00+00:00")
            a_rows.append(new_row(run_id="a", iops=x, **common))
            b_rows.append(new_row(run_id="b", iops=y, **common))
    ci = stats.ratio_ci([0.86 * x for x in (100, 102, 98)], [100, 102, 98])
    assert ci.high < 0.95 and ci.at(1 - 0.05 / 20).high > 0.95   # the premise
    comparison = compare_frames(frame_from_rows(a_rows), frame_from_rows(b_rows))
    row = comparison.table[comparison.table["iodepth"] == 1].iloc[0]
    assert row["verdict"] == "inconclusive"
    assert "not at the adjusted 99.75%" in row["note"]
    assert comparison.selected == 1 and comparison.regressions.empty


def test_single_repetition_is_inconclusive_with_no_interval():
    a = frame("a", 1, 0.03, seed=13)
    b = frame("b", 1, 0.03, seed=14, scale={"dataplane": 0.5})
    comparison = compare_frames(a, b)
    assert set(comparison.table["verdict"]) == {"inconclusive"}
    assert comparison.table["ci_low"].isna().all() and comparison.tested == 0
    assert "1/1 repetitions: fewer than 3 a side, no interval (min–max" in \
        comparison.table.iloc[0]["note"]


def test_two_repetitions_give_no_interval_either():
    a = frame("a", 2, 0.001, seed=15)
    comparison = compare_frames(a, a)
    assert set(comparison.table["verdict"]) == {"inconclusive"}


def test_disturbed_repetitions_are_kept_and_noted():
    a = frame("a", 3, 0.01, seed=16, disturbed=1)
    b = frame("b", 3, 0.01, seed=17)
    comparison = compare_frames(a, b)
    row = comparison.table.iloc[0]
    assert row["n_a"] == 3 and row["disturbed_a"] == 1
    assert "disturbed repetitions: 1 of 3 in A, 0 of 3 in B" in row["note"]


# --- never pooled, never an empty pass -------------------------------------------------------

def test_two_hosts_are_never_pooled():
    a = frame_from_rows(make_rows("a", 3, 0.01, seed=18, host="h1")
                        + make_rows("a", 3, 0.01, seed=19, host="h2",
                                    scale={"baseline": 0.5, "dataplane": 0.5}))
    b = frame("b", 3, 0.01, seed=20, host="h1")
    comparison = compare_frames(a, b)
    assert set(comparison.table["host"]) == {"h1"} and len(comparison.table) == 8
    assert (comparison.table["n_a"] == 3).all()                 # not 6: h2 stays out
    assert set(comparison.table["verdict"]) == {"unchanged"}
    with pytest.raises(UserError, match=r"host \{h2\} in A vs \{h1\} in B"):
        compare_frames(frame("a", 3, 0.01, seed=21, host="h2"), b)


def test_two_accelerators_are_never_pooled():
    a = frame_from_rows(make_rows("a", 3, 0.01, seed=22, accel="kvm")
                        + make_rows("a", 3, 0.01, seed=23, accel="tcg",
                                    scale={"baseline": 0.1, "dataplane": 0.1}))
    b = frame("b", 3, 0.01, seed=24, accel="kvm")
    comparison = compare_frames(a, b)
    assert set(comparison.table["accel"]) == {"kvm"} and (comparison.table["n_a"] == 3).all()
    with pytest.raises(UserError, match=r"accel \{tcg\} in A vs \{kvm\} in B"):
        compare_frames(frame("a", 3, 0.01, seed=25, accel="tcg"), b)


def test_no_matched_workload_exits_2_and_says_which_keys_differ(tmp_path, capsys):
    a = write_run(tmp_path / "kvm-run", make_rows("kvm-run", 3, 0.01, seed=26, accel="kvm"))
    b = write_run(tmp_path / "tcg-run", make_rows("tcg-run", 3, 0.01, seed=27, accel="tcg"))
    assert run_cli(["compare", str(a), str(b), "--fail-on-regression"]) == EXIT_USER
    err = capsys.readouterr().err
    assert "no workload in common" in err and "accel {kvm} in kvm-run vs {tcg} in tcg-run" in err
    assert "never pooled" in err


def test_unrelated_committed_runs_are_an_error(capsys):
    code = run_cli(["compare", str(MICRO_V2), str(ROOT / "results" / "kvm-nested-20261202-043556")])
    assert code == EXIT_USER
    err = capsys.readouterr().err
    assert "no workload in common: accel {host, tcg} in micro-v2-20261202-030452 vs {kvm-nested}" \
        in err


def test_compare_of_a_missing_run_is_a_user_error(tmp_path):
    a = write_run(tmp_path / "a", make_rows("a", 3, 0.01, seed=28))
    with pytest.raises(UserError, match="has no results.csv"):
        compare_runs(a, tmp_path / "nothing")


# --- the command line ------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("0.05", 0.05), ("5%", 0.05), ("5", 0.05),
                                         (" 2.5 % ", 0.025), ("0", 0.0), ("0.5", 0.5),
                                         ("99%", 0.99), ("1", 0.01)])
def test_tolerance_takes_a_fraction_or_a_percentage(text, value):
    assert parse_tolerance(text) == pytest.approx(value)


@pytest.mark.parametrize("text, message", [("-5", "negative"), ("-0.05", "negative"),
                                           ("-5%", "negative"), ("100", "100% or more"),
                                           ("100%", "100% or more"), ("250", "100% or more"),
                                           ("five", "not a number"), ("", "not a number"),
                                           ("nan", "not a finite"), ("inf%", "not a finite")])
def test_tolerance_refuses_nonsense(text, message):
    with pytest.raises(UserError, match=message):
        parse_tolerance(text)


def test_cli_tolerance_nonsense_is_one_line_and_exit_2(tmp_path, capsys):
    a = write_run(tmp_path / "a", make_rows("a", 3, 0.01, seed=29))
    assert run_cli(["compare", str(a), str(a), "--tolerance", "-3%"]) == EXIT_USER
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --tolerance '-3%' is negative") and "\n" not in err


def _gate_runs(tmp_path: Path, reps: int, cv: float, factor: float, seeds=(30, 31)):
    a = write_run(tmp_path / "ref", make_rows("ref", reps, cv, seed=seeds[0]))
    b = write_run(tmp_path / "new", make_rows("new", reps, cv, seed=seeds[1],
                                              scale={"dataplane": factor}))
    return a, b


def test_cli_halved_at_3_repetitions_exits_4_and_names_each_regression(tmp_path):
    a, b = _gate_runs(tmp_path, 3, 0.04, 0.5)
    runner = CliRunner()
    gated = runner.invoke(app, ["compare", str(a), str(b), "--fail-on-regression"])
    assert gated.exit_code == EXIT_REGRESSION, gated.output
    assert gated.output.count("regression: fio dataplane file") == 4
    assert "| fio | dataplane | file | randread 4k qd16 j1 | local kvm | 3/3 |" in gated.output
    assert "| **regressed** |" in gated.output
    assert runner.invoke(app, ["compare", str(a), str(b)]).exit_code == 0      # no gate asked


def test_cli_down_20pct_at_5_repetitions_exits_4(tmp_path):
    a, b = _gate_runs(tmp_path, 5, 0.04, 0.8)
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--fail-on-regression"])
    assert result.exit_code == EXIT_REGRESSION, result.output


def test_cli_up_2pct_at_10_tight_repetitions_passes_both_gates(tmp_path):
    a, b = _gate_runs(tmp_path, 10, 0.01, 1.02)
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--fail-on-regression",
                                      "--fail-on-inconclusive"])
    assert result.exit_code == 0, result.output
    assert "8 matched workloads" in result.output and "8 unchanged" in result.output


def test_cli_fail_on_inconclusive_exits_5_and_regression_wins(tmp_path):
    a, b = _gate_runs(tmp_path / "wide", 3, 0.04, 1.0)
    runner = CliRunner()
    result = runner.invoke(app, ["compare", str(a), str(b), "--fail-on-inconclusive"])
    assert result.exit_code == EXIT_INCONCLUSIVE, result.output
    assert "inconclusive: fio baseline file" in result.output
    assert runner.invoke(app, ["compare", str(a), str(b), "--fail-on-regression"]).exit_code == 0
    a, b = _gate_runs(tmp_path / "both", 3, 0.04, 0.5)
    both = runner.invoke(app, ["compare", str(a), str(b), "--fail-on-regression",
                               "--fail-on-inconclusive"])
    assert both.exit_code == EXIT_REGRESSION


def test_cli_tolerance_as_percentage_keeps_the_gate(tmp_path):
    # `--tolerance 5` once meant 500% and silently disabled the gate
    a, b = _gate_runs(tmp_path, 3, 0.04, 0.5)
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--fail-on-regression",
                                      "--tolerance", "5"])
    assert result.exit_code == EXIT_REGRESSION, result.output
    assert "tolerance ±5%" in result.output


def test_cli_json_holds_the_verdicts(tmp_path):
    a, b = _gate_runs(tmp_path, 3, 0.04, 0.5)
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["run_a"] == "ref" and document["run_b"] == "new"
    assert document["counts"]["regressed"] == 4 and document["tolerance"] == 0.05
    assert document["method"]["selected"] == 4 and document["method"]["tested"] == 8
    entry = next(w for w in document["workloads"] if w["variant"] == "dataplane")
    assert entry["verdict"] == "regressed" and entry["host"] == "local" and entry["accel"] == "kvm"
    assert entry["ci_high"] < 0.95 and entry["n_a"] == 3 and isinstance(entry["iodepth"], int)


def test_markdown_is_labelled_with_the_runs_and_the_method(tmp_path):
    a, b = _gate_runs(tmp_path, 3, 0.04, 0.5)
    comparison = compare_runs(a, b)
    text = render_markdown(comparison)
    assert text.startswith("8 matched workloads, B = new against A = ref: 4 regressed, ")
    assert "Welch t interval on log IOPS at 95%" in text
    assert "the 4 of 8 intervals that cleared the band are shown at 97.5%" in text
    assert ("| guest | variant | disk | workload | host accel | n A/B | IOPS A: ref (median) | "
            "IOPS B: new (median) | B/A [95% CI] | verdict | note |") in text
    line = regression_lines(comparison)[0]
    assert line.startswith("regression: fio dataplane file randread 4k qd1 j1 on local kvm: ")
    assert line.endswith("at 97.5%")
    assert inconclusive_lines(comparison) == [] or all(
        l.startswith("inconclusive: ") for l in inconclusive_lines(comparison))
    same = compare_runs(a, a)
    assert (same.name_a, same.name_b) == ("ref (A)", "ref (B)")
    assert json_document(same)["counts"]["regressed"] == 0


def test_a_slower_machine_is_named_when_host_fio_moved_too():
    a = frame_from_rows(make_rows("a", 3, 0.01, seed=32)
                        + [{**r, "variant": "host-fio", "accel": "host", "guest": "host"}
                           for r in make_rows("a", 3, 0.01, seed=33) if r["variant"] == "baseline"])
    b = frame_from_rows(make_rows("b", 3, 0.01, seed=34, scale={"baseline": 0.8, "dataplane": 0.8})
                        + [{**r, "variant": "host-fio", "accel": "host", "guest": "host"}
                           for r in make_rows("b", 3, 0.01, seed=35, scale={"baseline": 0.8})
                           if r["variant"] == "baseline"])
    comparison = compare_frames(a, b)
    assert comparison.counts()["regressed"] == 12
    assert "Note: fio on the host itself regressed on 4 of 4 workloads" in render_markdown(comparison)
    assert json_document(comparison)["host_note"].startswith("fio on the host itself regressed")
    assert json_document(compare_frames(a, a))["host_note"] is None


# --- the issue's own reproduction ------------------------------------------------------------

def _halve(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    path = dest / "results.csv"
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    for row in rows:
        if row["iops"]:
            row["iops"] = repr(float(row["iops"]) / 2)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return dest


def test_halved_micro_v2_copy_exits_4(tmp_path, capsys):
    halved = _halve(MICRO_V2, tmp_path / "halved")
    assert run_cli(["compare", str(MICRO_V2), str(halved), "--fail-on-regression"]) \
        == EXIT_REGRESSION
    captured = capsys.readouterr()
    assert "36 matched workloads" in captured.out
    assert captured.err.count("regression: ") >= 30
    # and the run against itself: nothing regressed, nothing improved
    assert run_cli(["compare", str(MICRO_V2), str(MICRO_V2), "--fail-on-regression"]) == 0
    assert "0 regressed, 0 improved" in capsys.readouterr().out
