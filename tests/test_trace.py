"""The per-request latency breakdown: trace flavour, simple-trace reader, stage pairing,
report section; end to end, a real traced micro-guest point through `harness bench`.

The fixtures in tests/data/trace are real traces: the micro-guest (300 requests, 4k
random reads at QD1, 30 of warm-up) on baseline+trace, dataplane+trace and poll+trace,
polling and interrupt-driven, with the event lists of those builds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.build import CONFIGURE_FLAGS, configure_flags, variant_layers, variant_patches
from harness.config import parse_config
from harness.errors import UserError
from harness.trace_build import base_variant, traced
from harness.trace_parse import (DROPPED_EVENT_ID, RECORD, parse_trace, read_bytes,
                                 read_trace)
from harness.tracepoints import (HOST_SPAN, STAGES, TURNAROUND, events_file_text,
                                 read_events_list, seen_stages, segment, spans, wanted_events)

DATA = Path(__file__).parent / "data" / "trace"
ROOT = Path(__file__).resolve().parent.parent


def _names(variant: str) -> tuple[str, ...]:
    return read_events_list(DATA / f"{variant}.events.txt")


def _fixture(variant: str, wait: str):
    return read_trace(DATA / f"{variant}-{wait}.trace.gz", _names(variant))


# --- the trace flavour -----------------------------------------------------------------------


def test_trace_flavour_adds_layers_and_backend_only():
    assert traced("poll") == "poll+trace" and base_variant("poll+trace") == "poll"
    assert variant_layers("baseline") == ("compat",)
    assert variant_layers("baseline+trace") == ("compat", "trace")
    assert variant_layers("poll+trace") == ("compat", "dataplane", "beyond", "trace",
                                            "trace-dataplane")
    assert configure_flags("poll") == CONFIGURE_FLAGS  # the normal builds are not perturbed
    assert configure_flags("poll+trace") == CONFIGURE_FLAGS + ("--enable-trace-backend=simple",)
    normal, flavour = variant_patches("dataplane"), variant_patches("dataplane+trace")
    assert flavour[: len(normal)] == normal
    assert [p.path.parent.name for p in flavour[len(normal):]] == ["trace", "trace", "trace-dataplane"]


def test_cli_plans_the_trace_flavour(tmp_path):
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "build", "--trace", "--variant",
                           "poll", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "poll+trace: will build" in text and "--enable-trace-backend=simple" in text
    assert "git am trace-dataplane/0001" in text and "baseline+trace" not in text


def test_trace_only_on_the_microguest():
    base = "name: t\nvariants: [baseline]\ndisks: [{path: /tmp/x.img}]\n"
    assert parse_config(base + "guest: {kind: microguest, trace: true}\n").guests[0].trace
    with pytest.raises(UserError, match="trace: true is for the micro-guest only"):
        parse_config(base + "guest: {kind: fio, trace: true}\n")
    with pytest.raises(UserError, match="not under accel kvm-nested"):
        parse_config(base + "accel: kvm-nested\nguest: {kind: microguest, trace: true}\n")


# --- the simple-trace reader ----------------------------------------------------------------


def test_reads_a_real_trace():
    trace = _fixture("baseline", "irq")
    assert trace.dropped == 0 and trace.drop_at == ()
    counts = pd.Series([trace.named(int(e)) for e in trace.records["event"]]).value_counts()
    # 300 requests + 30 of warm-up, each one of every baseline stage event
    assert set(counts) == {330}
    assert set(counts.index) == {"virtio_queue_notify", "virtqueue_pop", "laio_submit",
                                 "laio_complete", "virtqueue_flush", "virtio_notify"}
    assert np.all(np.diff(trace.records["ts"].astype(np.int64)) >= 0)


def test_rejects_what_is_not_a_trace():
    names = _names("baseline")
    with pytest.raises(UserError, match="bad header magic"):
        parse_trace(b"\0" * 128, names, "x")
    with pytest.raises(UserError, match="empty"):
        parse_trace(b"", names, "x")
    data = read_bytes(DATA / "baseline-irq.trace.gz")
    with pytest.raises(UserError, match="different builds"):
        parse_trace(data, names[:3], "x")
    # a record cut short by a kill is ignored, the rest read
    assert len(parse_trace(data + b"\1" * 20, names).records) == len(data) // 64 - 1


def test_dropped_records_are_counted_and_cut_requests():
    data = bytearray(read_bytes(DATA / "baseline-irq.trace.gz"))
    drop = np.zeros(1, dtype=RECORD)
    drop["event"], drop["x1"] = DROPPED_EVENT_ID, 7
    at = 64 * (1 + 6 * 100 + 2)  # inside request 100, after its pop and submit
    broken = bytes(data[:at]) + drop.tobytes() + bytes(data[at:])
    trace = parse_trace(broken, _names("baseline"))
    assert trace.dropped == 7 and trace.drop_at == (6 * 100 + 2,)
    wrapped = drop.copy()
    wrapped["x1"] = (1 << 32) - 4095  # the writer's index ahead after a drop: nothing lost
    again = parse_trace(broken + wrapped.tobytes(), _names("baseline"))
    assert again.dropped == 7 and len(again.drop_at) == 2
    requests = segment(trace)
    # the request the drop falls in is left out: both halves of it
    assert len(requests.times) == 329 and requests.incomplete == 2


# --- stages ----------------------------------------------------------------------------------


def test_events_file_names_only_what_the_binary_has():
    baseline = _names("baseline")
    text = events_file_text(baseline)
    assert "laio_submit\n" in text and "virtio_blk_dp_pop" not in text
    assert set(text.split()) <= set(wanted_events())
    assert "virtio_blk_dp_pop\n" in events_file_text(_names("dataplane"))


def test_baseline_breakdown_from_a_real_trace():
    requests = segment(_fixture("baseline", "irq"))
    assert len(requests.times) == 330 and requests.incomplete == 0
    assert "picked_up" not in requests.traced  # the vCPU runs the handler inside the kick
    table = spans(requests, skip=30)
    assert len(table) == 300
    stage_sum = table[list(STAGES)].sum(axis=1, min_count=1)
    assert np.allclose(stage_sum, table[HOST_SPAN])  # the stages tile each request
    assert (table[list(STAGES[1:])].dropna(axis=1, how="all") > 0).all().all()
    assert table[TURNAROUND].iloc[:-1].notna().all() and np.isnan(table[TURNAROUND].iloc[-1])
    state = seen_stages(table, requests.traced)
    assert state["picked_up"] == "not traced" and state["irq"] == "seen"


def test_polling_guest_raises_no_interrupt():
    requests = segment(_fixture("baseline", "poll"))
    state = seen_stages(spans(requests, skip=30), requests.traced)
    assert state["irq"] == "not seen" and state["used"] == "seen"


@pytest.mark.parametrize("variant", ["dataplane", "poll"])
def test_data_plane_breakdown_from_real_traces(variant):
    for wait in ("irq", "poll"):
        requests = segment(_fixture(variant, wait))
        # every request paired; what is left out are the thread's looks at an empty ring
        assert len(requests.times) == 330, (variant, wait, len(requests.times))
        assert requests.incomplete <= 5, (variant, wait, requests.incomplete)
        table = spans(requests, skip=30)
        assert np.allclose(table[list(STAGES)].sum(axis=1, min_count=1), table[HOST_SPAN])
        state = seen_stages(table, requests.traced)
        assert state["picked_up"] == "seen" and state["parsed"] == "seen"
        assert state["irq"] == ("seen" if wait == "irq" else "not seen")


def _synthetic(names: tuple[str, ...], events: list[tuple[str, int]]) -> bytes:
    records = np.zeros(len(events) + 1, dtype=RECORD)
    records[0]["event"], records[0]["ts"] = (1 << 64) - 1, 0xF2B177CB0AA429B4
    for i, (name, ts) in enumerate(events, start=1):
        records[i]["event"], records[i]["ts"] = names.index(name), ts
    return records.tobytes()


def test_repeated_pickup_keeps_the_last_and_lone_events_are_left_out():
    names = _names("dataplane")
    one = [("virtio_queue_notify", 0), ("virtio_blk_dp_process_vring", 100),
           ("virtio_blk_dp_process_vring", 300), ("virtio_blk_dp_pop", 400),
           ("virtio_blk_dp_submit", 1400), ("virtio_blk_dp_complete", 5400),
           ("virtio_blk_dp_push", 5600), ("virtio_irq", 9600)]
    stray = [("virtio_blk_dp_process_vring", 9700)]  # the thread looked at an empty ring
    two = [(name, ts + 20000) for name, ts in one]
    requests = segment(parse_trace(_synthetic(names, one + stray + two), names))
    assert len(requests.times) == 2 and requests.incomplete == 1
    table = spans(requests)
    assert table.loc[0, "picked_up"] == pytest.approx(0.3)
    assert table.loc[0, "irq"] == pytest.approx(4.0)
    assert table.loc[0, HOST_SPAN] == pytest.approx(9.6)
    assert table.loc[0, TURNAROUND] == pytest.approx(10.4)


# --- the report section ----------------------------------------------------------------------


def _fake_run(tmp_path: Path) -> Path:
    """A run directory with the fixtures as its traced points and untraced rows."""
    from harness.trace_report import WORKLOAD_KEY  # noqa: F401  (the grouping key)
    run = tmp_path / "run"
    traces = run / "traces"
    traces.mkdir(parents=True)
    rows = []
    for variant in ("baseline", "dataplane", "poll"):
        shutil.copy(DATA / f"{variant}.events.txt", traces / f"events-{variant}.txt")
        for wait in ("irq", "poll"):
            guest = f"microguest-{wait}"
            key = f"{guest}.{variant}.tmpfs.randread-4k-qd1-j1.r1"
            shutil.copy(DATA / f"{variant}-{wait}.trace.gz", traces / f"{key}.trace.gz")
            (traces / f"{key}.json").write_text(json.dumps({
                "key": key, "guest": guest, "variant": variant, "disk": "tmpfs",
                "rw": "randread", "bs": "4k", "iodepth": 1, "numjobs": 1, "rep": 1,
                "warmup": 30, "events_list": f"events-{variant}.txt",
                "trace": f"{key}.trace.gz", "ok": True,
                "result": {"lat_ns": {"p50": 20000, "p99": 90000, "mean": 30000}}}))
            rows.append(dict(guest=guest, variant=variant, disk="tmpfs", rw="randread",
                             bs="4k", iodepth=1, numjobs=1, rep=1, status="ok",
                             lat_mean_us=28.0, lat_p50_us=19.0))
    return run, pd.DataFrame(rows)


def test_report_section_tables_plots_and_overhead(tmp_path):
    from harness.trace_report import breakdowns, section
    run, results = _fake_run(tmp_path)
    found = breakdowns(run, results)
    assert len(found) == 2 and [v.variant for v in found[0].variants] == ["baseline", "dataplane",
                                                                        "poll"]
    assert found[0].variants[0].overhead == pytest.approx((20 - 19) / 20)
    assert found[0].variants[0].overhead_mean == pytest.approx((30 - 28) / 30)
    text, images = section(run, results, run / "plots")
    assert "not traced" in text  # the baseline's pick-up
    assert "not seen" in text  # no interrupt for the polling guest
    assert "**baseline against" in text or "against baseline" in text
    assert "+5.0%" in text and "+6.7%" in text
    assert any(p.suffix == ".png" and p.exists() for p in images) and len(images) == 4
    table = pd.read_csv(run / "trace_breakdown.csv")
    assert len(table) == 2 * 3 * 8  # workloads × variants × (7 stages + the host total)
    picked = table[(table.variant == "baseline") & (table.stage == "picked_up")]
    assert set(picked.state) == {"not traced"} and picked.median_us.isna().all()


def test_report_without_traces_has_no_section(tmp_path):
    from harness.trace_report import section
    assert section(tmp_path, pd.DataFrame({"variant": []}), tmp_path / "plots") == ("", [])


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_traced_point_end_to_end(tmp_path):
    """`harness bench` with trace: true on a real micro-guest point, baseline and dataplane."""
    from harness.paths import cache_dir

    def built(name: str) -> bool:
        return (cache_dir() / "build" / name / "x86_64-softmmu" / "qemu-system-x86_64").exists()

    for name in ("baseline", "dataplane"):
        if not built(name):
            pytest.skip(f"{name} is not built in {cache_dir()}: run `harness build`")
    # the trace flavours are built by the run itself when missing (trace: true asks for them)
    building = not (built("baseline+trace") and built("dataplane+trace"))
    config = tmp_path / "t.yaml"
    config.write_text(f"""name: trace-e2e
variants: [baseline, dataplane]
guest: {{kind: microguest, wait: irq, memory_mb: 128, trace: true}}
disks: [{{name: tmpfs, path: {tmp_path / 'disk.img'}, size: 16M}}]
workloads: {{rw: [randread], bs: [4k], iodepth: [1], requests: 500}}
repetitions: 1
accel: tcg
""")
    env = {**os.environ, "HARNESS_RESULTS": str(tmp_path / "results")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--config", str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = next((tmp_path / "results").glob("trace-e2e-*"))
    traces = sorted((run / "traces").glob("*.trace.gz"))
    assert len(traces) == 2, list((run / "traces").iterdir())
    with gzip.open(traces[0]) as handle:
        assert handle.read(16)[8:16] == (0xF2B177CB0AA429B4).to_bytes(8, "little")
    build = json.loads((run / "traces" / "build-dataplane.json").read_text())
    assert build["configure_flags"][-1] == "--enable-trace-backend=simple"
    assert [p["file"] for p in build["patches"]][-1].startswith("trace-dataplane/")
    for written in (run / "traces").glob("*.json"):  # no path of this machine in a run
        assert str(cache_dir()) not in written.read_text(), written
    report = (run / "report.md").read_text()
    assert "## Where each microsecond goes" in report
    assert "dataplane median" in report and "not traced" in report
    assert list((run / "plots").glob("breakdown_*.png"))
    assert building or time.monotonic() - started < 300
    assert built("baseline+trace") and built("dataplane+trace")
