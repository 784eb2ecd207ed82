"""CPU per I/O: QEMU's threads from /proc, their kinds, the arithmetic, the report.

Pure tests use a fake /proc tree and recorded stat lines; the integration tests
boot the micro-guest on the built variants (skipped with the reason when a
variant is not built) and look at the real threads.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from harness import microguest as mg
from harness import stats, threads
from harness.config import VariantSpec
from harness.errors import UserError
from harness.runners.ceiling import host_fio_ceiling
from harness.matrix import Point, Workload
from harness.proc import Result
from harness.report import write_report
from harness.results import GUEST_BOUND, ResultsStore, load_results, new_row
from harness.summary import RunNumbers, summary_document
from harness.vm import qemu_argv
from harness.microguest.cmdline import microguest_spec

from conftest import built_binary_or_skip

DATA = Path(__file__).resolve().parent / "data"
TICKS = os.sysconf("SC_CLK_TCK")

# recorded from Debian's QEMU 7.2 with -name debug-threads=on (fields after stime cut short)
STAT_MAIN = "4200 (qemu-system-x86) S 1 4200 4200 0 -1 4194560 9034 0 0 0 40 12 0 0 20 0 6 0"
STAT_VCPU = "4212 (CPU 0/TCG) R 1 4200 4200 0 -1 4194368 1200 0 0 0 300 20 0 0 20 0 6 0"
STAT_ODD = "4215 (a) b (c)) S 1 4200 4200 0 -1 4194368 0 0 0 0 7 3 0 0 20 0 6 0"


# ---- parsing and classifying --------------------------------------------------------------

def test_parse_stat_names_with_spaces_and_parentheses():
    assert threads.parse_stat(STAT_MAIN) == (4200, "qemu-system-x86", 52)
    assert threads.parse_stat(STAT_VCPU) == (4212, "CPU 0/TCG", 320)
    assert threads.parse_stat(STAT_ODD) == (4215, "a) b (c)", 10)


@pytest.mark.parametrize("tid, name, vcpus, kind", [
    (100, "qemu-system-x86", (), "main"),
    (100, "qemu-system-x86", (100,), "vcpu"),      # QMP says the main thread runs the vCPU
    (100, "qemu-system-x86", (101, 100), "main"),  # 2012 TCG, 2 vCPUs: the 2nd's id is stale
    (101, "qemu-system-x86", (101, 100), "vcpu"),  # … and the TCG thread runs both
    (101, "qemu-system-x86", (101,), "vcpu"),      # the 2012 tree: ids from query-cpus only
    (102, "CPU 0/TCG", (), "vcpu"),
    (103, "CPU 3/KVM", (), "vcpu"),
    (104, "dataplane", (), "iothread"),
    (105, "IO io0", (), "iothread"),
    (106, "IO mon_iothread", (), "other"),         # QMP's monitor, not the disk
    (107, "worker", (), "other"),
    (108, "qemu-system-x86", (), "other"),         # a data-plane thread without a name
])
def test_classify(tid, name, vcpus, kind):
    assert threads.classify(tid, name, 100, vcpus) == kind


def test_vcpu_ids_from_both_qmp_dialects():
    legacy = [{"CPU": 0, "current": True, "halted": False, "pc": 1, "thread_id": 4212}]
    modern = [{"cpu-index": 0, "thread-id": 5301, "qom-path": "/machine/unattached/device[0]"},
              {"cpu-index": 1, "thread-id": 5302}]
    assert threads.parse_vcpu_threads(legacy) == (4212,)
    assert threads.parse_vcpu_threads(modern) == (5301, 5302)
    assert threads.parse_vcpu_threads({}) == () and threads.parse_vcpu_threads(None) == ()
    assert threads.vcpu_query(True) == "query-cpus"
    assert threads.vcpu_query(False) == "query-cpus-fast"


def test_debug_threads_only_for_modern_qemu():
    def argv(legacy):
        return qemu_argv(microguest_spec("qemu", "tcg", "d.img", VariantSpec(name="baseline"),
                                         "", "c.log", kernel="k", legacy=legacy))
    modern = argv(False)
    assert modern[modern.index("-name") + 1] == "debug-threads=on"
    assert "-name" not in argv(True)


# ---- a fake /proc --------------------------------------------------------------------------

def _stat(tid: int, name: str, ticks: int) -> str:
    return f"{tid} ({name}) S 1 100 100 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 0\n"


def _fake_proc(root: Path, pid: int, total: int, tasks: dict[int, tuple[str, int, int]]) -> Path:
    """root/<pid>/stat with `total` ticks and one task directory per (name, ticks, wait ns)."""
    base = root / str(pid)
    if base.exists():
        for task in (base / "task").iterdir():
            for f in task.iterdir():
                f.unlink()
            task.rmdir()
    (base / "task").mkdir(parents=True, exist_ok=True)
    (base / "stat").write_text(_stat(pid, "qemu-system-x86", total))
    for tid, (name, ticks, wait_ns) in tasks.items():
        (base / "task" / str(tid)).mkdir()
        (base / "task" / str(tid) / "stat").write_text(_stat(tid, name, ticks))
        (base / "task" / str(tid) / "schedstat").write_text(f"{ticks * 10**7} {wait_ns} 9\n")
    return root


def test_sample_and_split_from_a_fake_proc(tmp_path):
    t = TICKS
    _fake_proc(tmp_path, 100, 5 * t, {100: ("qemu-system-x86", 1 * t, 0),
                                      101: ("qemu-system-x86", 2 * t, 0),
                                      102: ("dataplane", 1 * t, 0),
                                      103: ("worker", 1 * t, 0)})
    before = threads.sample(100, tmp_path)
    assert [x.tid for x in before.threads] == [100, 101, 102, 103]
    assert before.total_s == pytest.approx(5.0)
    # one second later: worker 103 exited (its 0.5 s after the first sample only in the
    # total), a new worker 104 came and used 0.25 s
    _fake_proc(tmp_path, 100, 8 * t, {100: ("qemu-system-x86", int(1.25 * t), 0),
                                      101: ("qemu-system-x86", int(3 * t), 2 * 10**8),
                                      102: ("dataplane", int(1.5 * t), 0),
                                      104: ("worker", int(0.25 * t), 0)})
    after = threads.sample(100, tmp_path)
    split = threads.split(before, after, vcpu_tids=(101,))
    assert split.total_s == pytest.approx(3.0)
    assert split.kinds["vcpu"] == pytest.approx(1.0)
    assert split.kinds["main"] == pytest.approx(0.25)
    assert split.kinds["iothread"] == pytest.approx(0.5)
    # other = the total minus the named kinds: the new worker and the exited one's remainder
    assert split.kinds["other"] == pytest.approx(1.25)
    assert sum(split.kinds.values()) == pytest.approx(split.total_s)
    assert split.threads_s == pytest.approx(2.0)
    loads = {load.tid: load for load in split.loads(1.0)}
    assert loads[101].kind == "vcpu" and loads[101].cores == pytest.approx(1.0)
    assert loads[101].demand == pytest.approx(1.2)      # waited 0.2 s for a CPU besides
    assert loads[104].cores == pytest.approx(0.25)      # born between the samples: from zero


def test_time_of_an_exited_vcpu_thread_stays_vcpu(tmp_path):
    """The guest powers off as the END sample is taken: its vCPU thread is gone."""
    t = TICKS
    _fake_proc(tmp_path, 100, 2 * t, {100: ("qemu-system-x86", t, 0),
                                      101: ("qemu-system-x86", t, 0)})
    before = threads.sample(100, tmp_path)
    _fake_proc(tmp_path, 100, 5 * t, {100: ("qemu-system-x86", int(1.5 * t), 0)})
    split = threads.split(before, threads.sample(100, tmp_path), vcpu_tids=(101,))
    assert split.kinds == pytest.approx({"vcpu": 2.5, "main": 0.5, "iothread": 0.0,
                                         "other": 0.0})


def test_split_never_negative_and_unknown_without_samples(tmp_path):
    t = TICKS
    before = threads.parse_sample(7, _stat(7, "q", 10 * t), [_stat(7, "q", 10 * t)], t)
    # the per-thread file read a tick after the process file: other is clamped at zero
    # and the total raised to what the threads were seen to use, so the kinds add up
    after = threads.parse_sample(7, _stat(7, "q", 11 * t), [_stat(7, "q", 11 * t + 1)], t)
    split = threads.split(before, after)
    assert split.kinds["other"] == 0.0 and split.kinds["main"] == split.total_s
    assert split.total_s > after.total_s - before.total_s
    assert math.isnan(threads.split(None, after).total_s)
    assert threads.sample(2**22 + 12345, tmp_path) is None   # no such process


def test_cpu_per_io_arithmetic():
    split = threads.CpuSplit(2.0, {"vcpu": 1.0, "main": 0.5, "iothread": 0.25, "other": 0.25})
    per_io = split.per_io_us(wall_s=2.0, iops=10_000)
    assert per_io["cpu_us_per_io"] == pytest.approx(100.0)       # 1 core / 10K IOPS
    assert per_io["cpu_us_per_io_vcpu"] == pytest.approx(50.0)
    assert per_io["cpu_us_per_io_iothread"] == pytest.approx(12.5)
    assert sum(v for k, v in per_io.items() if k != "cpu_us_per_io") == \
        pytest.approx(per_io["cpu_us_per_io"])
    assert all(math.isnan(v) for v in threads.CpuSplit.unknown().per_io_us(2.0, 10_000).values())
    assert math.isnan(threads.cpu_per_io(1.0, 1.0, 0.0)["cpu_us_per_io"])
    assert math.isnan(threads.cpu_per_io(1.0, math.nan, 5.0)["cpu_us_per_io"])


class _RemoteHost:
    """An executor on another machine: only run() is used, with a shell script."""

    is_local = False
    label = "far"

    def __init__(self, output: str, returncode: int = 0):
        self.output, self.returncode, self.argv = output, returncode, None

    def run(self, argv, **_):
        self.argv = list(argv)
        return Result(tuple(argv), self.returncode, self.output)


def test_sample_on_a_remote_host_reads_the_same_files_with_one_command():
    host = _RemoteHost(f"100\n{STAT_MAIN}\n{STAT_MAIN}\n{STAT_VCPU}\n")
    got = threads.sample_on(host, 4200)
    assert host.argv[:2] == ["sh", "-c"] and "/proc/4200/task/*/stat" in host.argv[2]
    assert got.total_s == pytest.approx(0.52)
    assert [(x.name, x.seconds) for x in got.threads] == [("qemu-system-x86", 0.52),
                                                            ("CPU 0/TCG", 3.2)]
    assert threads.sample_on(_RemoteHost("", returncode=1), 4200) is None
    assert threads.sample_on(host, None) is None


# ---- rows --------------------------------------------------------------------------------

def test_micro_row_carries_cpu_per_io():
    result = mg.parse_result(
        'MICROGUEST-RESULT {"ok":1,"rw":"randread","bs":4096,"qd":1,"n":10,"done":10,'
        '"wait":"poll","elapsed_ns":1000000,"iops":20000,"lat_ns":{}}\n')
    split = threads.CpuSplit(1.0, {"vcpu": 0.5, "main": 0.1, "iothread": 0.3, "other": 0.1})
    from dataclasses import replace
    result = replace(result, cpu=replace(split, wall_s=1.0), wall_s=1.1)
    row = mg.micro_row("r", Point("microguest", "poll", "d", Workload("randread", "4k", 1, 1), 1),
                       "tcg", result, started_at="t")
    assert row["cpu_us_per_io"] == pytest.approx(50.0)
    assert row["cpu_us_per_io_vcpu"] == pytest.approx(25.0)
    assert row["cpu_us_per_io_iothread"] == pytest.approx(15.0)
    assert row["bound"] == ""          # a polling micro-guest is busy by design, not bound


def test_host_fio_ceiling_records_fios_own_cpu_per_io():
    text = (DATA / "fio" / "host" / "randread-4k-qd4-j1-latpct.json").read_text()
    data = json.loads(text[text.find("{"):])
    job = data["jobs"][0]
    row = host_fio_ceiling("/img/disk.raw", Workload("randread", "4k", 4, 1), 5,
                           host=_RemoteHost(text), size_bytes=1 << 26)
    cpu = float(job["usr_cpu"]) + float(job["sys_cpu"])
    assert row["cpu_us_per_io"] == pytest.approx(cpu / 100 / row["iops"] * 1e6)
    assert math.isnan(row["cpu_us_per_io_vcpu"])     # no threads to split


def test_guest_bound_threshold():
    assert stats.GUEST_BOUND_PCT == 90.0
    assert stats.guest_bound(98.0) == GUEST_BOUND
    assert stats.guest_bound(stats.GUEST_BOUND_PCT) == GUEST_BOUND
    assert stats.guest_bound(89.9) == ""
    assert stats.guest_bound(math.nan) == "" and stats.guest_bound(None) == ""


# ---- summary, report, plot -----------------------------------------------------------------

def _rows(guest_cpu: dict[str, float], iops: dict[str, float]):
    rows = []
    for variant in ("baseline", "dataplane"):
        for depth in (1, 16):
            for rep in (1, 2, 3):
                value = iops[variant] * depth ** 0.5 * (1 + 0.01 * rep)
                cpu = guest_cpu[variant]
                rows.append(new_row(
                    run_id="r", guest="fio", variant=variant, accel="tcg", disk="ram",
                    workload=Workload("randread", "4k", depth, 1), rep=rep, log="", started_at=
                    "2026-12-06T02:00:00+00:00", bound=stats.guest_bound(cpu), iops=value,
                    lat_p99_us=100.0, guest_cpu_pct=cpu, host_cpu_pct=150.0,
                    cpu_us_per_io=1.5e6 / value, cpu_us_per_io_vcpu=1.0e6 / value,
                    cpu_us_per_io_main=0.2e6 / value, cpu_us_per_io_iothread=0.2e6 / value,
                    cpu_us_per_io_other=0.1e6 / value))
    return rows


def test_summary_medians_and_guest_bound_flags():
    numbers = RunNumbers.of(load_frame(_rows({"baseline": 97.0, "dataplane": 98.0},
                                             {"baseline": 3500.0, "dataplane": 2700.0})),
                            "baseline")
    qd1 = numbers.summary[(numbers.summary["variant"] == "dataplane")
                          & (numbers.summary["iodepth"] == 1)].iloc[0]
    assert qd1["cpu_us_per_io_median"] == pytest.approx(1.5e6 / (2700 * 1.02))
    assert qd1["guest_bound"] and qd1["n_guest_bound"] == 3
    assert numbers.ratios["guest_bound"].all()
    doc = summary_document(numbers, "r", "tcg")
    assert doc["guest_bound_pct"] == stats.GUEST_BOUND_PCT
    workload = doc["workloads"][0]
    assert workload["guest_bound"] is True
    entry = next(v for v in workload["variants"] if v["variant"] == "dataplane")
    assert set(entry["cpu_us_per_io"]) == {"total", "vcpu", "main", "iothread", "other"}
    assert entry["cpu_us_per_io"]["total"] == pytest.approx(1.5e6 / (2700 * 1.02))
    assert entry["flags"]["guest_bound"] is True
    assert json.dumps(doc)       # plain JSON


def test_not_guest_bound_below_threshold():
    numbers = RunNumbers.of(load_frame(_rows({"baseline": 40.0, "dataplane": 50.0},
                                             {"baseline": 3500.0, "dataplane": 2700.0})),
                            "baseline")
    assert not numbers.summary["guest_bound"].any()
    assert not numbers.ratios["guest_bound"].any()


def load_frame(rows):
    from harness.results import frame_from_rows
    return frame_from_rows(rows)


def test_report_shows_price_and_guest_bound_and_draws_efficiency(tmp_path):
    store = ResultsStore(tmp_path)
    for row in _rows({"baseline": 97.0, "dataplane": 98.0}, {"baseline": 3500.0,
                                                              "dataplane": 2700.0}):
        store.append(row)
    assert load_results(tmp_path)["cpu_us_per_io_vcpu"].notna().all()
    report = write_report(tmp_path, "baseline", summary_json=True)
    text = report.markdown.read_text()
    assert "host CPU µs per I/O (vCPU / main / I/O thread / other)" in text
    assert "— *guest-bound*" in text
    assert "guest-bound, not the data plane's effect" in text
    assert "guest-bound (3 of 3)" in text
    assert "not judged (guest-bound)" in text and "| met |" not in text
    # the QD1 dataplane median: 1.5e6 / (2700 × 1.02) = 544.7 µs, its vCPU part 363.1
    assert "545 (363 / 73 / 73 / 36)" in text
    assert (tmp_path / "plots" / "efficiency.png").exists()
    assert "plots/efficiency.png" in text
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["workloads"][0]["variants"][0]["cpu_us_per_io"]["vcpu"] > 0


def test_published_comparison_never_gives_a_guest_bound_ratio_as_the_data_planes():
    from harness.published import compare_with_published

    bound = compare_with_published(load_frame(_rows({"baseline": 97.0, "dataplane": 98.0},
                                                    {"baseline": 3500.0, "dataplane": 2700.0})),
                                   "baseline")
    ratios = bound.ratios[bound.ratios["kind"] != "absolute"]
    assert len(ratios) and ratios["verdict"].str.startswith("guest-bound").all()
    free = compare_with_published(load_frame(_rows({"baseline": 40.0, "dataplane": 50.0},
                                                   {"baseline": 3500.0, "dataplane": 2700.0})),
                                  "baseline")
    assert not free.ratios["verdict"].str.startswith("guest-bound").any()


# ---- real QEMU threads (integration) -----------------------------------------------------------

@pytest.fixture(scope="module")
def kernel() -> Path:
    try:
        return mg.build_microguest()
    except UserError as exc:
        pytest.skip(f"cannot build the micro-guest: {exc}")


def _disk(tmp_path: Path, name: str = "disk.img") -> Path:
    path = tmp_path / name
    with open(path, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 64 << 20)
    return path


def _point(variant: str, wait: str, requests: int, kernel: Path, tmp_path: Path,
           window_s: float = 1.0):
    """One point whose measured window lasts about window_s: IOPS vary forty-fold with
    the variant and the host's load, so a run that was too short is repeated once with
    the request count scaled to the rate it showed."""
    binary = built_binary_or_skip(variant)
    for attempt in (1, 2):
        disk = _disk(tmp_path, f"disk{attempt}.img")
        result = mg.run_microguest_point(binary, "tcg", disk, VariantSpec(name=variant),
                                         Workload("randread", "4k", 1, 1), requests, wait,
                                         tmp_path / f"console{attempt}.log", timeout=120,
                                         kernel=kernel)
        assert result.ok, f"{result.error or result.raw}; console: {result.log}"
        assert result.cpu.samples is not None, "QEMU's threads were not sampled at BEGIN/END"
        if result.cpu.wall_s >= window_s:
            break
        requests = min(int(requests * 1.5 * window_s / max(result.cpu.wall_s, 0.02)), 3_000_000)
    return result


def _describe(result) -> str:
    return "; ".join(f"{x.name}[{x.tid}] {x.kind} {x.cores:.2f} cores (wants {x.demand:.2f})"
                     for x in result.cpu.loads(result.cpu.wall_s))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_thread_split_adds_up_to_the_process_total(kernel, tmp_path):
    # clock ticks of 10 ms where schedstat is missing, each thread rounded on its own: 5%
    # needs half a second of CPU, which a busy host may not give QEMU in one second of wall
    window_s = 1.0
    for _attempt in range(3):
        result = _point("poll", "poll", 30000, kernel, tmp_path, window_s)
        if result.cpu.total_s >= 0.5:
            break
        window_s *= 2
    split = result.cpu
    assert split.total_s >= 0.5, f"too little CPU to judge in clock ticks: {_describe(result)}"

    assert split.threads_s == pytest.approx(split.total_s, rel=0.05), _describe(result)
    assert sum(split.kinds.values()) == pytest.approx(split.total_s, rel=1e-9)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_polling_guest_on_poll_keeps_its_vcpu_busy(kernel, tmp_path):
    """The vCPU spins: it wants a whole core.  Measured as demand (CPU used plus time
    waiting for a CPU), so that a busy two-core host does not hide it."""
    result = _point("poll", "poll", 30000, kernel, tmp_path)
    loads = result.cpu.loads(result.cpu.wall_s)
    vcpu = [x for x in loads if x.kind == "vcpu"]
    assert len(vcpu) == 1, _describe(result)
    assert vcpu[0].demand >= 0.8, _describe(result)
    dataplane = [x for x in loads if x.name == threads.DATAPLANE_THREAD]
    if not dataplane:
        pytest.skip("the series' data-plane thread has no name yet (it shows as `other`): "
                    "its own load is not checked")
    assert dataplane[0].kind == "iothread"
    assert dataplane[0].demand >= 0.8, _describe(result)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_interrupt_guest_on_dataplane_leaves_the_data_plane_mostly_idle(kernel, tmp_path):
    result = _point("dataplane", "irq", 20000, kernel, tmp_path)
    loads = result.cpu.loads(result.cpu.wall_s)
    named = [x for x in loads if x.name == threads.DATAPLANE_THREAD]
    # without its name the data-plane thread is one of the `other` threads
    candidates = named or [x for x in loads if x.kind == "other"]
    assert candidates, _describe(result)
    assert max(x.cores for x in candidates) < 0.5, _describe(result)


# ---- a fio-guest point, QEMU and the guest faked ----------------------------------------------

class _FakeVM:
    """What runners.fio.FioRunner._point asks of a VM: CPU time, thread samples over 2 s of wall."""

    def __init__(self):
        self.calls = 0

    def host_cpu_seconds(self) -> float:
        self.calls += 1
        return 10.0 if self.calls == 1 else 13.0

    def thread_sample(self):
        return object()

    def cpu_split(self, before, after, wall_s):
        return threads.CpuSplit(3.0, {"vcpu": 2.0, "main": 0.5, "iothread": 0.0, "other": 0.5},
                                wall_s=wall_s)


@pytest.mark.parametrize("guest_cpu, bound", [(97.5, GUEST_BOUND), (30.0, "")])
def test_fio_guest_point_fills_cpu_per_io_and_bound(monkeypatch, tmp_path, guest_cpu, bound):
    from types import SimpleNamespace

    from harness.runners import fio as fio_runner
    from harness.fio_jobs import FioRun

    text = (DATA / "fio" / "randread-4k-qd4-j2.json").read_text()
    data = json.loads(text)
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(fio_runner.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(fio_runner, "run_fio",
                        lambda *a, **k: FioRun(text, data, guest_cpu, 2.0))
    from harness.hostload import PointWatch

    rows = []
    run = SimpleNamespace(
        run_id="r", watch=PointWatch(10.0, enabled=False), accel=SimpleNamespace(name="tcg"), relative=str,
        config=SimpleNamespace(workloads=SimpleNamespace(runtime_s=3, ramp_s=1),
                               timeouts=SimpleNamespace(point_s=60)),
        writer=SimpleNamespace(save_raw=lambda key, text: tmp_path / key, append=rows.append))
    runner = fio_runner.FioRunner.__new__(fio_runner.FioRunner)
    runner.run, runner.image = run, SimpleNamespace(device="/dev/vda")
    runner.spec = SimpleNamespace(vcpus=2)
    runner._point(_FakeVM(), None, Point("fio", "dataplane", "ram",
                                         Workload("randread", "4k", 4, 2), 1))
    (row,) = rows
    assert (row["devices"], row["vcpus"], row["device_iops"]) == (1, 2, "")
    assert row["host_cpu_pct"] == pytest.approx(150.0)
    # 1.5 cores of QEMU ÷ fio's IOPS, in µs; the vCPU threads' 1 core likewise
    assert row["cpu_us_per_io"] == pytest.approx(1.5 / row["iops"] * 1e6)
    assert row["cpu_us_per_io_vcpu"] == pytest.approx(1.0 / row["iops"] * 1e6)
    assert row["bound"] == bound
