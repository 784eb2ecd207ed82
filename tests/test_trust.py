"""A host that is checked and repetitions until the answer is clear (issue 20).

Pure logic on a fake /proc and in-memory rows; orchestration with the fake QEMU
(tests/fakeqemu.py, FAKE_QEMU_NOISE for a noisy host); and, with a real build
and the real micro-guest, a CPU hog started beside a run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import bench, hostload, rounds
from harness.config import parse_config
from harness.errors import UserError
from harness.matrix import Point, Session, Workload
from harness.results import frame_from_rows, new_row

from conftest import built_binary_or_skip
from test_bench import FAKE, env, shared_cache, write_config  # noqa: F401  (fixtures)

TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ hostload, pure

def _stat_line(pid: int, comm: str, ppid: int, ticks: int, child_ticks: int = 0) -> str:
    # fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    #              utime stime cutime cstime ...
    return (f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 0 0 0 0 0 {ticks} 0 {child_ticks} 0 "
            "20 0 1 0 0 0 0\n")


def _fake_proc(root: Path, busy_ticks: int, processes: dict[int, tuple[str, int, int]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(f"cpu  {busy_ticks} 0 0 100000 0 0 0 0 0 0\ncpu0 0 0 0 0\n")
    for pid, (comm, ppid, ticks) in processes.items():
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "stat").write_text(_stat_line(pid, comm, ppid, ticks))
    return root


def test_parse_stat_reads_names_with_spaces_and_parentheses():
    stat = hostload.parse_stat(_stat_line(42, "qemu (x) 1", 7, 3 * TICK, 2 * TICK))
    assert (stat.pid, stat.ppid, stat.comm) == (42, 7, "qemu (x) 1")
    assert stat.own_s == pytest.approx(3.0) and stat.children_s == pytest.approx(2.0)


def test_foreign_load_is_the_hosts_busy_time_minus_the_run_tree(tmp_path):
    # 1 = init, 10 = the harness, 11 = its QEMU, 20 = somebody else's compiler
    before = _fake_proc(tmp_path / "a", 1000, {1: ("init", 0, 0), 10: ("harness", 1, 100),
                                               11: ("qemu", 10, 200), 20: ("cc1", 1, 50)})
    after = _fake_proc(tmp_path / "b", 1000 + 2 * TICK, {
        1: ("init", 0, 0), 10: ("harness", 1, 100), 11: ("qemu", 10, 200 + TICK),
        20: ("cc1", 1, 50 + TICK)})
    first = hostload.sample(root=10, proc=before, keep_foreign=True)
    second = hostload.sample(root=10, proc=after, keep_foreign=True)
    second = hostload.LoadSample(first.at + 2.0, second.busy_s, second.own_s, second.per_process)
    # in 2 s the host was busy 2 s: 1 s QEMU (the run's), 1 s cc1 (foreign) → 50% of a core
    assert hostload.foreign_pct(first, second) == pytest.approx(50.0)
    assert [name for name, _pid, _pct in hostload.busiest(first, second)] == ["cc1"]


def test_descendants_follow_the_tree_not_the_names():
    stats = {pid: hostload.ProcStat(pid, ppid, "x", 0, 0)
             for pid, ppid in {1: 0, 10: 1, 11: 10, 12: 11, 20: 1, 21: 20}.items()}
    assert hostload.descendants(stats, 10) == {10, 11, 12}


def test_a_watch_flags_a_point_above_the_threshold():
    watch = hostload.Watch(threshold_pct=10.0, foreign_pct=25.0)
    assert watch.disturbed and watch.columns() == {"foreign_cpu_pct": 25.0, "disturbed": 1}
    quiet = hostload.Watch(threshold_pct=10.0, foreign_pct=3.0)
    assert not quiet.disturbed and quiet.columns()["disturbed"] == 0


# ------------------------------------------------------------------ rounds, pure

def _row(variant: str, iops: float, rep: int, disturbed: bool = False, qd: int = 1) -> dict:
    return new_row(run_id="r", guest="g", variant=variant, accel="tcg", disk="d",
                   workload=Workload("randread", "4k", qd, 1), rep=rep, log="", started_at="",
                   iops=iops, disturbed=disturbed)


def test_disturbed_points_of_a_round_become_sessions_again():
    rows = [{k: str(v) for k, v in _row("dataplane", 1.0, rep, disturbed=(rep == 2), qd=qd).items()}
            for rep in (1, 2) for qd in (1, 16)]
    points = rounds.disturbed_points(rows, 2)
    assert [p.key for p in points] == ["g.dataplane.d.randread-4k-qd1-j1.r2",
                                       "g.dataplane.d.randread-4k-qd16-j1.r2"]
    assert rounds.disturbed_points(rows, 1) == []
    sessions = rounds.as_sessions(points)
    assert len(sessions) == 1 and sessions[0].key == "g.dataplane.d.r2" and \
        len(sessions[0].points) == 2


def test_sessions_group_into_rounds_in_plan_order():
    def session(rep, variant):
        return Session("g", variant, "d", rep, (Point("g", variant, "d", Workload("randread", "4k", 1, 1), rep),))
    plan = [session(1, "a"), session(1, "b"), session(2, "b"), session(2, "a")]
    assert [(rep, [s.variant for s in todo]) for rep, todo in rounds.by_round(plan)] == \
        [(1, ["a", "b"]), (2, ["b", "a"])]


def test_a_ratio_is_off_target_until_its_interval_is_narrow():
    tight = [_row(v, base * (1 + 0.001 * rep), rep) for rep in range(1, 6)
             for v, base in (("baseline", 1000.0), ("dataplane", 2000.0))]
    assert rounds.off_target(frame_from_rows(tight), "baseline", {"g"}, 0.05) == []
    noisy = [_row(v, base * f, rep) for rep, f in enumerate((0.6, 1.4, 0.9), start=1)
             for v, base in (("baseline", 1000.0), ("dataplane", 2000.0 / f ** 2))]
    wide = rounds.off_target(frame_from_rows(noisy), "baseline", {"g"}, 0.05)
    assert len(wide) == 1 and wide[0].startswith("g dataplane d randread 4k qd1 j1: ±")
    assert rounds.half_width(1.0, float("nan"), float("nan")) == float("inf")


def test_repetitions_take_a_number_or_min_max_target():
    base = "name: x\nvariants: [baseline]\ndisks: [{path: /tmp/x}]\n"
    config = parse_config(base + "repetitions: {min: 3, max: 8, target: 5%}\n")
    assert (config.min_repetitions, config.max_repetitions, config.target) == (3, 8, 0.05)
    assert parse_config(base + "repetitions: 4\n").target is None
    for bad, said in (("{min: 5, max: 3, target: 0.05}", r"min \(5\) is above max \(3\)"),
                      ("{min: 3, max: 4}", "target"), ("0", "from 1 to 100"),
                      ("{min: 3, max: 4, target: 1.5}", "target")):
        with pytest.raises(UserError, match=said):
            parse_config(base + f"repetitions: {bad}\n")
    with pytest.raises(UserError, match="host_check.foreign_cpu_pct"):
        parse_config(base + "host_check: {foreign_cpu_pct: -1}\n")


# ------------------------------------------------------------------ adaptive, fake QEMU

def _reps(run_dir: Path) -> set[int]:
    with open(run_dir / "results.csv", newline="") as handle:
        return {int(r["rep"]) for r in csv.DictReader(handle)}


def test_adaptive_repetitions_stop_at_min_when_every_ratio_is_precise(tmp_path, env):
    messages: list[str] = []
    config = write_config(tmp_path, repetitions={"min": 3, "max": 6, "target": 0.05})
    run_dir = bench.run_bench(config, say=messages.append)
    assert _reps(run_dir) == {1, 2, 3}
    assert any("round 4: not needed" in m for m in messages), messages
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["host_check"]["precision"] == {"target": 0.05, "off_target": []}
    assert "every ratio's interval within ±5%" in (run_dir / "report.md").read_text()


def test_adaptive_repetitions_stop_at_max_on_a_noisy_host(tmp_path, env, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_NOISE", "0.4")
    messages: list[str] = []
    config = write_config(tmp_path, repetitions={"min": 2, "max": 4, "target": 0.02})
    run_dir = bench.run_bench(config, say=messages.append)
    assert _reps(run_dir) == {1, 2, 3, 4}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["host_check"]["precision"]["off_target"], manifest["host_check"]
    assert any("still wider than ±2% after 4 rounds" in m for m in messages), messages[-3:]
    assert "wider than ±2% at max" in (run_dir / "report.md").read_text()


# ------------------------------------------------------------------ a real hog beside a real run

def _start_hog(seconds: float) -> None:
    """A CPU spinner outside the run's process tree (setsid -f: re-parented away from us)."""
    subprocess.run(["setsid", "-f", "timeout", str(seconds), sys.executable, "-c",
                    "while True: pass"], check=True)


def _kill_hogs() -> None:
    subprocess.run(["pkill", "-f", "while True: pass"], check=False)


@pytest.fixture
def real_env(tmp_path, monkeypatch) -> None:
    """The real cache (built variants), a results directory of the test's own."""
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path / "results"))


def _micro_config(tmp_path: Path, repetitions: int, retries: int,
                  iodepth: tuple[int, ...] = (1, 16)) -> Path:
    built_binary_or_skip("baseline")
    built_binary_or_skip("dataplane")
    config = {
        "name": "hog", "variants": ["baseline", "dataplane"], "baseline": "baseline",
        "guests": [{"kind": "microguest", "wait": "poll"}],
        "disks": [{"name": "disk", "path": str(tmp_path / "disk.img"), "size": "16M"}],
        "workloads": {"rw": ["randread"], "bs": ["4k"], "iodepth": list(iodepth), "requests": 30000},
        "repetitions": repetitions, "accel": "tcg",
        "host_check": {"foreign_cpu_pct": 10, "retries": retries, "quiet_wait_s": 20},
    }
    path = tmp_path / "hog.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _final_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.integration
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_short_hog_disturbs_the_points_it_overlaps_and_they_are_run_again(tmp_path, real_env):
    messages: list[str] = []
    started: list[float] = []

    def say(line: str) -> None:
        messages.append(line)
        if line.startswith("[1/") and not started:  # the first point is done: hog for 3 s
            _start_hog(3)
            started.append(time.monotonic())

    try:
        run_dir = bench.run_bench(_micro_config(tmp_path, repetitions=1, retries=3), say=say)
    finally:
        _kill_hogs()
    assert started, messages
    again = [m for m in messages if "disturbed point(s) again" in m]
    assert again, messages
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["host_check"]["reruns"] >= 1
    final = _final_rows(run_dir)
    assert len(final) == 4 and {r["status"] for r in final} == {"ok"}
    assert {r["disturbed"] for r in final} == {"0"}, [(r["variant"], r["foreign_cpu_pct"]) for r in final]
    assert all(float(r["foreign_cpu_pct"]) <= 10 for r in final)
    assert "Not a reference run" not in (run_dir / "report.md").read_text()


@pytest.mark.integration
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_hog_that_stays_leaves_the_rows_flagged_and_the_report_says_so(tmp_path, real_env):
    messages: list[str] = []
    config = _micro_config(tmp_path, repetitions=1, retries=1, iodepth=(1,))
    text = yaml.safe_load(config.read_text())
    text["host_check"]["quiet_wait_s"] = 3
    config.write_text(yaml.safe_dump(text))
    _start_hog(120)
    try:
        run_dir = bench.run_bench(config, say=messages.append)
    finally:
        _kill_hogs()
    assert any(m.startswith("warning: host check: not quiet after") and "python" in m
               for m in messages), messages[:6]
    final = _final_rows(run_dir)
    assert len(final) == 2 and {r["disturbed"] for r in final} == {"1"}
    assert all(float(r["foreign_cpu_pct"]) > 10 for r in final)
    assert any("still disturbed after 1 re-run(s)" in m for m in messages)
    report = (run_dir / "report.md").read_text()
    assert "Not a reference run: 2 point(s) ran while other processes used more than 10% " \
        "of a core" in report
    assert "| disturbed points (final rows) | 2 |" in report
