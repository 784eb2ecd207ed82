"""`harness bench --dry-run`: what a config will do, checked before anything runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.config import parse_config
from harness.errors import UserError
from harness.estimate import estimate, plan_lines

ROOT = Path(__file__).resolve().parent.parent
BASE = "name: x\nvariants: [baseline, dataplane]\ndisks: [{path: /tmp/x}]\n"


def test_points_and_boots_follow_the_matrix():
    config = parse_config(BASE + "workloads: {iodepth: [1, 16]}\nrepetitions: 3\n"
                          "guests: [{kind: fio}, {kind: microguest}]\n")
    found = estimate(config)
    # fio: 2 variants x 1 disk x 3 rounds boots, 2 workloads each; micro: one boot per point
    assert found.boots == (6 + 12, 6 + 12) and found.points == (12 + 12, 12 + 12)
    assert found.seconds[0] == found.seconds[1] > 0


def test_adaptive_repetitions_give_both_ends():
    config = parse_config(BASE + "repetitions: {min: 3, max: 9, target: 5%}\n"
                          "guests: [{kind: microguest}]\n")
    found = estimate(config)
    assert found.points == (12, 36) and found.seconds[1] == pytest.approx(3 * found.seconds[0])
    lines = plan_lines(config)
    assert "3–9 rounds until every ratio is within ±5%" in lines[0]
    assert lines[1].startswith("12–36 points in 12–36 boots")


def test_a_huge_matrix_is_said_in_days():
    config = parse_config(BASE + "workloads: {iodepth: [1,2,4,8,16,32,64,128], bs: [4k,8k,16k,32k,"
                          "64k,128k], rw: [randread, randwrite, read, write, randrw], numjobs: [1,2,4,"
                          "8], runtime_s: 300}\nrepetitions: 10\ntimeouts: {point_s: 400}\n")
    lines = plan_lines(config)
    assert lines[1].startswith("19,200 points") and "days" in lines[2]
    assert lines[-1].startswith("warning: 19,200 points is a very large matrix")


def test_a_fio_run_longer_than_the_point_timeout_is_refused():
    with pytest.raises(UserError, match=r"workloads.runtime_s \(300\) \+ ramp_s \(2\) do not fit "
                                        r"in timeouts.point_s \(180\).*at least 312"):
        parse_config(BASE + "workloads: {runtime_s: 300}\n")
    # the micro-guest does not run fio: its requests, not runtime_s, set its length
    parse_config(BASE + "workloads: {runtime_s: 300}\nguests: [{kind: microguest}]\n")


def test_cli_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    results = tmp_path / "results"
    done = subprocess.run([str(ROOT / ".venv/bin/harness"), "bench", "-c",
                           str(ROOT / "configs/micro-irq.yaml"), "--dry-run"],
                          capture_output=True, text=True, timeout=60,
                          env={"HARNESS_RESULTS": str(results), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "300 points in 300 boots, 10 host fio points, 80 hostile cases" in done.stdout
    assert "estimated time:" in done.stdout and not results.exists()


def test_cli_version_flag():
    done = subprocess.run([str(ROOT / ".venv/bin/harness"), "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("harness ")
