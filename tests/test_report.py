"""report.md, the plots, summary.json and the published-figures comparison, on a synthetic run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness import headline, latency_cdf, plots, published
from harness.errors import UserError
from harness.matrix import Workload
from harness.results import COLUMNS
from harness.published import compare_with_published, load_published
from harness.report import write_report as _write_report
from harness.results import (ResultsStore, failed_row, frame_from_rows, new_row, read_results,
                             row_key)
from harness.summary import RunNumbers

FAILED_LOG = "logs/dataplane.file.r2.console.log"
ROOT = Path(__file__).resolve().parent.parent
HOSTILE = Path(__file__).parent / "data" / "hostile.csv"  # rows the micro-guest bench wrote
REFERENCE_RUN = ROOT / "results" / "micro-20261125-090618"
# The shape bench.write_manifest writes (keys as in the committed reference runs).
MANIFEST = {"run_id": "r1", "status": "complete", "accel": "tcg",
            "host": {"cpu_model": "Test CPU 9000", "cores": 2, "kernel": "6.1.0-test",
                     "os": "Debian GNU/Linux 12 (bookworm)"},
            "variants": {"baseline": {"binary": "$HARNESS_CACHE/build/baseline/qemu",
                                      "qemu_version": "QEMU emulator version 1.0.50",
                                      "build": {"worktree_head": "0123456789abcdef0123"}},
                         "dataplane": {"binary": "$HARNESS_CACHE/build/dataplane/qemu",
                                       "qemu_version": "QEMU emulator version 1.3.50",
                                       "build": None}}}


def write_report(run_dir, baseline: str, **kw) -> Path:
    return _write_report(run_dir, baseline, **kw).markdown


def rows(accel: str = "tcg", speedup: float = 1.8, reps: int = 3, host: bool = True,
         depths: tuple[int, ...] = (1, 16, 64)) -> list[dict]:
    rng = np.random.default_rng(7)
    out = []
    for qd in depths:
        for rep in range(1, reps + 1):
            for variant, scale in (("baseline", 1.0), ("dataplane", speedup), ("host-fio", 3.0)):
                if variant == "host-fio" and not host:
                    continue
                workload = Workload("randread", "4k", qd, 1)
                if (variant, qd, rep) == ("dataplane", 64, 2):
                    out.append(failed_row(run_id="r1", guest="fio", variant=variant, accel=accel,
                                          disk="file", workload=workload, rep=rep,
                                          error="guest did not boot in 300 s", log=FAILED_LOG,
                                          started_at="2026-11-25T04:00:00+00:00"))
                    continue
                iops = 10_000 * qd ** 0.5 * scale * (1 + rng.normal(0, 0.02))
                lat = qd / iops * 1e6
                out.append(new_row(run_id="r1", guest="fio", variant=variant, accel=accel,
                                   disk="file", workload=workload, rep=rep, log="logs/x.log",
                                   started_at="2026-11-25T04:00:00+00:00", iops=iops,
                                   lat_mean_us=lat, lat_p50_us=lat, lat_p99_us=2 * lat,
                                   lat_p999_us=3 * lat, **cpu_columns(variant, iops)))
    return out


def cpu_columns(variant: str, iops: float) -> dict[str, float]:
    """Host CPU µs per I/O as threads.py splits it: 1.5 cores' worth, the data plane's
    share on its I/O thread, the baseline's on the main loop."""
    total = 1.5e6 / iops
    moved = "cpu_us_per_io_iothread" if variant == "dataplane" else "cpu_us_per_io_main"
    return {"cpu_us_per_io": total, "cpu_us_per_io_vcpu": 0.6 * total, moved: 0.3 * total,
            "cpu_us_per_io_other": 0.1 * total}


def make_run(path, accel: str = "tcg", manifest: dict | None = None, hostile: bool = False):
    store = ResultsStore(path)
    for row in rows(accel):
        store.append(row)
    if manifest is not None:
        (path / "manifest.json").write_text(json.dumps(manifest))
    if hostile:
        shutil.copy(HOSTILE, path / "hostile.csv")
    return path


def test_hostile_fixture_has_the_columns_the_harness_writes():
    written = (REFERENCE_RUN / "hostile.csv").read_text().splitlines()[0]
    assert HOSTILE.read_text().splitlines()[0] == written


def test_report_has_accelerator_table_failures_and_plots(tmp_path):
    report = write_report(make_run(tmp_path, manifest=MANIFEST, hostile=True), "baseline")
    text = report.read_text()
    assert "TCG (software emulation): absolute numbers are not comparable to KVM" in text
    assert "| variant | IOPS median (min–max) | p99 µs | ratio to baseline [95% CI]" in text
    assert "randread 4k, iodepth 16, 1 job(s)" in text
    assert "| dataplane | " in text and "1 (baseline)" in text
    assert "host-fio (ceiling)" in text
    assert "Test CPU 9000" in text and "6.1.0-test" in text and "QEMU emulator version 1.3.50" in text
    assert FAILED_LOG in text and "guest did not boot in 300 s" in text
    assert "dataplane.file.randread-4k-qd64-j1.r2" in text
    hostile = text.split("## Hostile cases (micro-guest)")[1]
    assert "| case | variant | accel | qemu_survived | qemu_state |" in hostile
    assert "| addr-outside-ram-8k | baseline | tcg | False | exited | 1 | True | " \
        "qemu-system-x86_64: virtio: trying to map MMIO memory |" in hostile
    published = text.split("## Published figures")[1]
    # generated from harness/data/published.yaml and our rows: their 1.60 beside our dataplane ratio
    line = next(l for l in published.splitlines() if l.startswith("| qemu.git dd67c1d7")
                or "| ownaio/blocklayer |" in l)
    assert "| 1.60 |" in line and "dataplane/baseline (fio guest, disk file, tcg)" in line
    for name in ("iops_vs_iodepth", "latency_percentiles", "speedup", "published"):
        png, svg = tmp_path / "plots" / f"{name}.png", tmp_path / "plots" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert svg.stat().st_size > 1000
        assert f"plots/{name}.png" in text


def test_ratio_in_report_matches_data(tmp_path):
    text = write_report(make_run(tmp_path), "baseline").read_text()
    # 2% noise and 3 repetitions: both CIs are within ±10%; at QD64 one of the dataplane's
    # failed, and 2 repetitions give no CI, so no precision is claimed there
    assert ("95% CIs within ±10% of the ratio: fio 2 of 2 (1 more without a CI: fewer than 3 "
            "repetitions).") in text
    qd64 = text.split("### randread 4k, iodepth 64")[1].split("###")[0]
    line64 = next(l for l in qd64.splitlines() if l.startswith("| dataplane |"))
    assert "(min–max " in line64 and "no CI below 3 repetitions)" in line64
    assert "| undecided |" in line64 and "[" not in line64.split("|")[4]
    line = next(l for l in text.splitlines() if l.startswith("| dataplane |"))
    ratio = float(line.split("|")[4].split()[0])
    assert ratio == pytest.approx(1.8, rel=0.06)


def test_two_repetitions_claim_no_ci_and_no_precision(tmp_path):
    # the smoke config's 2 repetitions once gave "95% CIs within ±10%: 4 of 4"
    store = ResultsStore(tmp_path)
    for row in rows(reps=2):
        store.append(row)
    text = write_report(tmp_path, "baseline").read_text()
    assert "95% CIs within" not in text
    assert ("No CI for fio: fewer than 3 repetitions a side, so no precision is claimed; the "
            "tables show the min–max of each ratio instead.") in text
    summary = text.split("## Summary per workload")[1].split("## Plots")[0]
    dataplane = [l for l in summary.splitlines() if l.startswith("| dataplane |")]
    assert len(dataplane) == 3
    assert all("no CI below 3 repetitions" in l and "| undecided |" in l for l in dataplane)
    assert "| met |" not in summary and "| missed |" not in summary


def test_kvm_run_is_labelled_kvm(tmp_path):
    text = write_report(make_run(tmp_path, accel="kvm"), "baseline").read_text()
    assert "KVM (hardware virtualisation)" in text and "TCG" not in text.split("## Run facts")[0]


def test_report_needs_results(tmp_path):
    with pytest.raises(UserError, match="results.csv"):
        write_report(tmp_path, "baseline")


def test_published_figures_are_consistent():
    figures = {f.id: f for f in load_published()}
    assert {"qemu-e72f66a0", "ibm-slides-147k", "ibm-redhat-whitepaper-1.5m",
            "qemu-dd67c1d7-ownaio", "qemu-dd67c1d7-batch", "vhost-blk-rfc-2022-ssd"} <= set(figures)
    assert figures["qemu-e72f66a0"].ratio is None  # "several times": no number
    for figure in figures.values():
        assert figure.accel in ("kvm", "unknown")
        if figure.ratio is not None and figure.base_iops:
            assert figure.ratio == pytest.approx(figure.iops / figure.base_iops, rel=0.02)


def test_published_comparison_prefers_kvm_and_explains_tcg():
    tcg = rows("tcg", speedup=1.6)
    kvm = [{**r, "accel": "kvm", "iops": r["iops"] * (2.0 if r["variant"] == "dataplane" else 1.0)}
           for r in rows("kvm", speedup=1.0) if r["variant"] != "host-fio"]
    mixed = compare_with_published(frame_from_rows(tcg + kvm), "baseline")
    assert set(mixed.ratios["our_accel"]) == {"kvm"}
    only_tcg = compare_with_published(frame_from_rows(tcg), "baseline", {"host_cpus": "2"})
    assert "under TCG, not KVM" in only_tcg.paragraph and "our host CPUs: 2" in only_tcg.paragraph
    ownaio = only_tcg.ratios[only_tcg.ratios["figure"] == "qemu-dd67c1d7-ownaio"].iloc[0]
    assert ownaio["our_workload"] == "randread 4k qd64 j1"  # closest to their qd64
    # one of the 3 dataplane repetitions at QD64 failed: 2 left, no CI, no agreement claimed
    assert ownaio["verdict"] == "no CI (fewer than 3 repetitions)"
    four = compare_with_published(frame_from_rows(rows("tcg", speedup=1.6, reps=4)), "baseline")
    ownaio = four.ratios[four.ratios["figure"] == "qemu-dd67c1d7-ownaio"].iloc[0]
    assert ownaio["verdict"] == "agrees (published within our CI)"  # 1.6 vs ours ≈ 1.6
    host = only_tcg.ratios[only_tcg.ratios["kind"] == "qemu/host"]
    assert set(host["our_variant"]) == {"baseline/host-fio", "dataplane/host-fio"}
    assert (only_tcg.absolute["of_host"] < 1).all()


def test_noisy_points_are_flagged(tmp_path):
    store = ResultsStore(tmp_path)
    for row in rows():
        if row["variant"] == "dataplane" and row["status"] == "ok" and row["rep"] == 1:
            row = {**row, "iops": row["iops"] * 1.5}  # one disturbed repetition: CV > 10%
        store.append(row)
    text = write_report(tmp_path, "baseline").read_text()
    noisy = [l for l in text.splitlines() if l.startswith("| dataplane |") and "| noisy |" in l]
    quiet = [l for l in text.splitlines() if l.startswith("| baseline |") and "noisy" in l]
    assert len(noisy) == 3 and not quiet


def test_report_of_a_run_where_everything_failed(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(failed_row(run_id="r1", guest="microguest", variant="baseline", accel="tcg",
                            disk="file", workload=Workload("randread", "4k", 1, 1), rep=1,
                            error="no virtio device found", log="logs/mg.console.log",
                            started_at="2026-11-25T04:00:00+00:00"))
    text = write_report(tmp_path, "baseline").read_text()
    assert "No successful points to plot." in text
    assert "`logs/mg.console.log`" in text and "no virtio device found" in text
    assert "all failed" in text


def test_facts_from_a_bench_manifest(tmp_path):
    """The manifest as bench writes it (its real keys), through the typed model."""
    manifest = {"run_id": "r1", "accel": "tcg", "notices": ["/dev/kvm missing: using TCG"],
                "host": {"kernel": "6.1.0-host", "cpu_model": "Some CPU", "cores": 2},
                "config": {"disks": [{"name": "file", "path": "images/test.raw", "size": "1G"}]},
                "variants": {"baseline": {"qemu_version": "QEMU emulator version 1.3.50",
                                          "build": {"worktree_head": "0123456789abcdef0123"}},
                             "dataplane": {"qemu_version": "QEMU emulator version 1.3.51",
                                           "build": None}},
                "guest": "Debian fio guest, kernel 6.1",
                "host_cpu_during_run": {"busy_pct": 51.0, "steal_pct": 3.5, "idle_pct": 45.5}}
    text = write_report(make_run(tmp_path, manifest=manifest), "baseline").read_text()
    facts = text.split("## Run facts")[1].split("## Summary")[0]
    assert "| host CPUs | 2 |" in facts and "| host kernel | 6.1.0-host |" in facts
    assert "baseline: QEMU emulator version 1.3.50 (commit 0123456789ab)" in facts
    assert "dataplane: QEMU emulator version 1.3.51" in facts
    assert "file: raw image images/test.raw (1G)" in facts
    assert "/dev/kvm missing: using TCG" in facts and "Debian fio guest" in facts
    assert "busy 51.0%, stolen by the hypervisor 3.5%, idle 45.5%" in facts
    assert "| repetitions per point | fio 3 |" in facts


def test_summary_json_holds_the_numbers_of_the_report(tmp_path):
    report = _write_report(make_run(tmp_path, manifest=MANIFEST), "baseline", summary_json=True)
    assert report.summary_json == tmp_path / "summary.json"
    document = json.loads(report.summary_json.read_text())
    assert document["schema_version"] == 5 and document["run_id"] == "r1"
    assert document["source_schema_versions"] == {"results_csv": 5, "manifest_json": 1}
    assert document["malformed_rows"] == []
    qd16 = next(w for w in document["workloads"] if w["iodepth"] == 16)
    assert (qd16["guest"], qd16["rw"], qd16["bs"], qd16["numjobs"]) == ("fio", "randread", "4k", 1)
    by_variant = {v["variant"]: v for v in qd16["variants"]}
    base, dataplane = by_variant["baseline"], by_variant["dataplane"]
    assert base["ratio"] is None and base["flags"]["baseline"]
    assert dataplane["ratio"]["ci_method"] == "Welch t on logs (ratio of geometric means)"
    assert document["ci"] == {"confidence": 0.95, "method": dataplane["ratio"]["ci_method"],
                              "df": "Welch-Satterthwaite", "min_repetitions": 3}
    assert dataplane["flags"]["faster"] and not dataplane["flags"]["slower"]
    assert dataplane["verdict"] == {"at_least_baseline": "met"}
    assert dataplane["flags"]["ci_within_10pct"] is True
    assert base["verdict"] == {"at_least_baseline": None}
    assert dataplane["iops"]["min"] <= dataplane["iops"]["median"] <= dataplane["iops"]["max"]
    assert qd16["host_fio_iops_median"] > dataplane["iops"]["median"]
    # the report's table line shows the same numbers
    text = report.markdown.read_text()
    section = text.split("### randread 4k, iodepth 16, 1 job(s)")[1].split("###")[0]
    line = next(l for l in section.splitlines() if l.startswith("| dataplane |"))
    ratio = dataplane["ratio"]
    assert (f"{ratio['value']:.2f} [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}]") in line
    assert f"{dataplane['iops']['median']:,.0f} (" in line
    qd64 = next(w for w in document["workloads"] if w["iodepth"] == 64)
    assert {v["variant"]: v["n_failed"] for v in qd64["variants"]} == {"baseline": 0, "dataplane": 1}
    two = next(v for v in qd64["variants"] if v["variant"] == "dataplane")   # 2 repetitions left
    assert two["ratio"]["ci_low"] is None and two["ratio"]["ci_high"] is None
    assert two["ratio"]["range_low"] <= two["ratio"]["value"] <= two["ratio"]["range_high"]
    assert two["ratio"]["ci_method"] == "none: fewer than 3 repetitions"
    assert two["verdict"] == {"at_least_baseline": "undecided"}
    assert two["flags"]["ci_within_10pct"] is None and not two["flags"]["faster"]


def test_report_rebuilds_identically(tmp_path):
    run = make_run(tmp_path, manifest=MANIFEST, hostile=True)
    first = _write_report(run, "baseline", summary_json=True)
    texts = {p: p.read_bytes() for p in [first.markdown, first.summary_json, *first.plots]}
    second = _write_report(run, "baseline", summary_json=True)
    assert {p: p.read_bytes() for p in [second.markdown, second.summary_json, *second.plots]} == texts


def test_malformed_rows_are_named_in_the_report(tmp_path):
    run = make_run(tmp_path)
    line = len((run / "results.csv").read_text().splitlines()) + 1
    with open(run / "results.csv", "a") as handle:
        handle.write("r1,fio,baseline,tcg,file,randread\n")        # a row cut short
    text = write_report(run, "baseline").read_text()
    facts = text.split("## Run facts")[1].split("## Summary")[0]
    assert f"| malformed rows in results.csv | **1 left out of every table** (line {line}: " \
        f"6 fields, the header has {len(COLUMNS)}) |" in facts


def _plot_frames(with_host: bool = True):
    df = frame_from_rows(rows(host=with_host))
    numbers = RunNumbers.of(df, "baseline")
    colors = plots.variant_colors(df["variant"], "baseline")
    return numbers, colors


def test_speedup_is_on_a_log_axis_with_the_one_line():
    numbers, colors = _plot_frames()
    fig = plots.speedup_figure(numbers.ratios, colors, "TCG", "baseline")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax.get_lines())
    low, high = ax.get_ylim()
    assert low < 1.0 < 1.8 < high


def test_host_fio_is_drawn_in_the_guest_panels():
    numbers, colors = _plot_frames()
    fig = plots.iops_figure(numbers.summary[numbers.summary["n_ok"] > 0], colors, "TCG")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["fio · file · randread 4k · 1 job"]   # no separate "host" panel
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["baseline", "dataplane", plots.HOST_LABEL]
    assert fig.axes[0].get_yscale() == "log"


def test_latency_plot_has_one_legend_entry_per_variant():
    numbers, colors = _plot_frames()
    fig = plots.latency_figure(numbers.summary[numbers.summary["n_ok"] > 0], colors, "TCG")
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:2] == ["baseline", "dataplane"] and len(labels) == 4   # + the p99/p50 keys


def test_published_plot_prints_small_ratios_with_two_significant_digits():
    table = compare_with_published(frame_from_rows(rows(host=True)), "baseline").ratios
    table = table.assign(our_ratio=np.where(table["kind"] == "qemu/host", 0.0234, table["our_ratio"]))
    fig = plots.published_figure(table, "TCG")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.023" in texts and "0.00" not in texts and "0.02" not in texts


def test_cli_report_json_warns_about_malformed_rows(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    run = make_run(tmp_path / "r1")
    line = len((run / "results.csv").read_text().splitlines()) + 1
    with open(run / "results.csv", "a") as handle:
        handle.write("r1,fio,baseline\n")
    result = CliRunner().invoke(app, ["report", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert f"1 malformed row(s) left out (line {line}: 3 fields, the header has {len(COLUMNS)})" in result.output
    assert f"summary: {run / 'summary.json'}" in result.output
    document = json.loads((run / "summary.json").read_text())
    assert document["malformed_rows"] == [{"line": line, "reason": f"3 fields, the header has {len(COLUMNS)}"}]


def _series_lines(fig) -> list:
    """The Line2D of every panel that joins two or more points (the 1× rule left out)."""
    return [line for ax in fig.axes for line in ax.get_lines()
            if len(line.get_xdata()) >= 2 and list(line.get_ydata()) != [1.0, 1.0]]


def _line_figures(depths: tuple[int, ...]) -> dict:
    numbers = RunNumbers.of(frame_from_rows(rows(depths=depths)), "baseline")
    colors = plots.variant_colors(numbers.rows["variant"], "baseline")
    ok = numbers.summary[numbers.summary["n_ok"] > 0]
    return {"iops": plots.iops_figure(ok, colors, "TCG"),
            "latency": plots.latency_figure(ok, colors, "TCG"),
            "speedup": plots.speedup_figure(numbers.ratios, colors, "TCG", "baseline"),
            "efficiency": plots.efficiency_figure(ok, colors, "TCG")}


def test_two_depths_are_drawn_as_markers_without_a_line():
    for name, fig in _line_figures((1, 16)).items():
        lines = _series_lines(fig)
        assert lines, name
        assert {line.get_linestyle() for line in lines} == {"None"}, name
        assert all(line.get_marker() not in (None, "None", "") for line in lines), name


def test_three_depths_are_joined_by_lines():
    for name, fig in _line_figures((1, 16, 64)).items():
        joined = [line for line in _series_lines(fig) if line.get_linestyle() != "None"]
        assert joined, name


# --- the headline figure --------------------------------------------------------------------

def _store(path: Path, records: list[dict]) -> Path:
    store = ResultsStore(path)
    for row in records:
        store.append(row)
    return path


def _visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_report_leads_with_the_headline_figure(tmp_path):
    report = _write_report(make_run(tmp_path, manifest=MANIFEST), "baseline")
    text = report.markdown.read_text()
    banner = text.index("> **Accelerator: TCG")
    lead = text.index("## Headline")
    assert banner < lead < text.index("## Run facts")
    section = text[lead:text.index("## Run facts")]
    assert "![headline](plots/headline.png)" in section
    # the caption: the run, the accelerator, the repetitions (2 of the dataplane's at QD64
    # are left after a failure), what the whiskers and bars are
    assert "Run r1, accelerator TCG (software emulation), fio 2–3 repetitions" in section
    assert "95% Welch t interval" in section and "host CPU µs" in section
    assert "Dashed whiskers" in section          # QD64's ratio has no CI: its min–max
    for suffix in (".png", ".svg"):
        assert tmp_path / "plots" / f"headline{suffix}" in report.plots
        assert (tmp_path / "plots" / f"headline{suffix}").stat().st_size > 1000


def test_headline_draws_the_ratios_and_cpu_of_the_summary():
    numbers = RunNumbers.of(frame_from_rows(rows()), "baseline")
    colors = plots.variant_colors(numbers.rows["variant"], "baseline")
    found = headline.panels(numbers.ratios, numbers.summary)
    assert [p.key["guest"] for p in found] == ["fio"]
    fig = plots.headline_figure(found, colors, "TCG", "baseline")
    top, bottom = _visible_axes(fig)
    markers = [line for line in top.get_lines() if line.get_marker() == "o"]
    expected = numbers.ratios.sort_values("iodepth")["ratio"].tolist()
    assert sorted(float(m.get_ydata()[0]) for m in markers) == pytest.approx(sorted(expected))
    assert [t.get_text() for t in top.get_xticklabels()] == ["QD1", "QD16", "QD64"]
    bars = sorted(patch.get_height() for patch in bottom.patches)
    cpu = numbers.summary[numbers.summary["variant"] != "host-fio"]["cpu_us_per_io_median"]
    assert bars == pytest.approx(sorted(cpu.dropna()))
    assert len(bars) == 6                         # baseline and dataplane at three depths


def test_headline_without_cpu_has_no_cpu_row():
    records = [{**r, **{c: np.nan for c in cpu_columns("baseline", 1.0)}} for r in rows()]
    numbers = RunNumbers.of(frame_from_rows(records), "baseline")
    found = headline.panels(numbers.ratios, numbers.summary)
    fig = plots.headline_figure(found, plots.variant_colors(numbers.rows["variant"], "baseline"),
                                "TCG", "baseline")
    assert len(_visible_axes(fig)) == 1
    assert "Host CPU per I/O was not recorded" in headline.caption(found, "r1", "TCG", "baseline",
                                                                   False)


def test_headline_takes_one_workload_per_guest_the_rfcs_random_reads():
    # randwrite and 4 jobs beside randread with 1 job, and a second guest
    records = rows() + [{**r, "rw": "randwrite"} for r in rows()] \
        + [{**r, "numjobs": 4} for r in rows()] + [{**r, "guest": "microguest-irq"} for r in rows()]
    numbers = RunNumbers.of(frame_from_rows(records), "baseline")
    found = headline.panels(numbers.ratios, numbers.summary)
    assert [(p.key["guest"], p.key["rw"], p.key["numjobs"]) for p in found] == \
        [("fio", "randread", 1), ("microguest-irq", "randread", 1)]
    assert all(set(p.ratios["iodepth"]) == {1, 16, 64} for p in found)
    assert all(set(p.variants["variant"]) == {"baseline", "dataplane"} for p in found)
    fig = plots.headline_figure(found, plots.variant_colors(numbers.rows["variant"], "baseline"),
                                "TCG", "baseline")
    assert len(_visible_axes(fig)) == 4           # a ratio and a CPU panel per guest


def test_kvm_nested_run_gets_no_headline_and_no_speedup_figure(tmp_path):
    run = _store(tmp_path, rows("kvm-nested"))
    plots_dir = tmp_path / "plots"
    plots_dir.mkdir()
    (plots_dir / "speedup.png").write_bytes(b"drawn by an older report")
    report = _write_report(run, "baseline")
    text = report.markdown.read_text()
    assert not (plots_dir / "headline.png").exists() and not (plots_dir / "speedup.png").exists()
    assert "![headline]" not in text and "plots/speedup.png" not in text
    lead = text.split("## Headline")[1].split("##")[0]
    assert "No headline figure: every ratio of this run is accel kvm-nested" in lead
    assert "No speed-up plot: every ratio of this run is accel kvm-nested" in text
    assert "plots/iops_vs_iodepth.png" in text    # its functional figures are still drawn


def test_kvm_nested_rows_are_left_out_of_a_mixed_run(tmp_path):
    records = rows("tcg") + [{**r, "guest": "microguest-irq"} for r in rows("kvm-nested")]
    numbers = RunNumbers.of(frame_from_rows(records), "baseline")
    found = headline.panels(numbers.ratios, numbers.summary)
    assert [(p.key["guest"], p.key["accel"]) for p in found] == [("fio", "tcg")]
    text = write_report(_store(tmp_path, records), "baseline").read_text()
    assert "Rows with accel kvm-nested are left out" in text.split("## Run facts")[0]
    fig = plots.speedup_figure(headline.speed_rows(numbers.ratios),
                               plots.variant_colors(numbers.rows["variant"], "baseline"),
                               "mixed", "baseline")
    assert [ax.get_title() for ax in _visible_axes(fig)] == ["fio · file · randread 4k · 1 job"]


# --- published.png ---------------------------------------------------------------------------

def _published_rows(fio_bound: str = "") -> list[dict]:
    """fio and a micro-guest, each with the dataplane and a sibling data-plane variant."""
    fio = [{**r, "bound": fio_bound if r["variant"] != "host-fio" else ""} for r in rows()]
    sibling = [{**r, "variant": "dataplane-nomerge"} for r in fio if r["variant"] == "dataplane"]
    micro = [{**r, "guest": "microguest-irq", "bound": ""} for r in fio + sibling
             if r["variant"] != "host-fio"]
    return fio + sibling + micro


def test_published_plot_has_one_row_per_published_figure():
    table = compare_with_published(frame_from_rows(_published_rows()), "baseline").ratios
    numbered = table[table["their_ratio"].notna()]
    figures = list(dict.fromkeys(numbered["figure"]))
    assert len(numbered) > len(figures)              # several of ours per published figure
    fig = plots.published_figure(table, "TCG")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert [label.split(" (")[0] for label in labels] == figures
    assert len(ax.collections[0].get_offsets()) == len(figures)   # one published marker each
    # the data plane itself (not its sibling), in the fio guest (a Linux guest like theirs)
    assert all("ours: dataplane/" in label and "fio guest" in label for label in labels)


def test_most_comparable_passes_over_a_guest_bound_ratio():
    table = compare_with_published(frame_from_rows(_published_rows("guest")), "baseline").ratios
    picked = published.most_comparable(table)
    assert list(picked["figure"]) == list(dict.fromkeys(
        table.loc[table["their_ratio"].notna(), "figure"]))
    ratios = picked[picked["kind"] != "qemu/host"]   # host fio is only beside the fio guest
    assert set(ratios["guest"]) == {"microguest-irq"} and not ratios["guest_bound"].any()
    assert set(ratios["our_variant"]) == {"dataplane/baseline"}


# --- fio's latency distribution ----------------------------------------------------------------

PERCENTILES = (1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 99.99)


def fio_json(rw: str, scale_us: float) -> dict:
    """fio's JSON as it keeps it: clat percentiles (ns) of the direction that did I/O."""
    table = {f"{p:.6f}": int(scale_us * 1000 * (1 + p / 20)) for p in PERCENTILES}
    reads = rw != "randwrite"
    side = {"total_ios": 1000, "clat_ns": {"min": 1, "percentile": table}}
    idle = {"total_ios": 0, "clat_ns": {"min": 0, "percentile": {"50.000000": 0}}}
    return {"jobs": [{"read": side if reads else idle, "write": idle if reads else side}]}


def _fio_run(path: Path, keep_raw: bool = True) -> Path:
    """rows() with each point's fio JSON under raw/, as fio_runner keeps it."""
    records = []
    for row in rows(depths=(1, 16)):
        if row["variant"] != "host-fio":
            row = {**row, "log": f"raw/{row_key(row)}.json"}
            if keep_raw:
                raw = path / row["log"]
                raw.parent.mkdir(parents=True, exist_ok=True)
                scale = 1e6 / row["iops"] * row["iodepth"]
                raw.write_text(json.dumps(fio_json(row["rw"], scale)))
        records.append(row)
    return _store(path, records)


def test_fio_latency_cdf_is_drawn_from_the_raw_json(tmp_path):
    report = _write_report(_fio_run(tmp_path), "baseline")
    text = report.markdown.read_text()
    plots_part = text.split("## Plots")[1]
    assert "![latency-cdf](plots/latency-cdf.png)" in plots_part
    assert (tmp_path / "plots" / "latency-cdf.png").stat().st_size > 1000
    found = latency_cdf.read_distributions(tmp_path, read_results(tmp_path).frame)
    fig = plots.latency_cdf_figure(found.points, plots.variant_colors(["dataplane"], "baseline"),
                                   "TCG")
    axes = _visible_axes(fig)
    assert [ax.get_title().rsplit("· ", 1)[1] for ax in axes] == ["QD1", "QD16"]
    # the bold line of each variant: the median over the repetitions of each percentile
    for ax, depth in zip(axes, (1, 16)):
        bold = {line.get_label(): line for line in ax.get_lines() if line.get_linewidth() == 2.0}
        assert set(bold) == {"baseline", "dataplane"}
        raws = [json.loads((tmp_path / "raw" / f"{row_key(r)}.json").read_text())
                for r in rows(depths=(1, 16))
                if r["variant"] == "dataplane" and r["iodepth"] == depth]
        p50 = np.median([r["jobs"][0]["read"]["clat_ns"]["percentile"]["50.000000"] / 1000
                         for r in raws])
        line = bold["dataplane"]
        assert line.get_xdata()[list(line.get_ydata()).index(0.5)] == pytest.approx(p50)


def test_micro_guest_run_has_no_latency_cdf(tmp_path):
    records = [{**r, "guest": "microguest-irq", "log": f"raw/{row_key(r)}.json"} for r in rows()]
    for row in records:                             # the micro-guest's lines: no percentiles
        (tmp_path / "raw").mkdir(exist_ok=True)
        (tmp_path / row["log"]).write_text(json.dumps({"iops": row["iops"]}))
    text = write_report(_store(tmp_path, records), "baseline").read_text()
    assert not (tmp_path / "plots" / "latency-cdf.png").exists()
    assert "latency-cdf" not in text and "latency distribution" not in text


def test_fio_run_without_its_raw_json_says_so(tmp_path):
    text = write_report(_fio_run(tmp_path, keep_raw=False), "baseline").read_text()
    assert not (tmp_path / "plots" / "latency-cdf.png").exists()
    assert "No fio latency distribution: the fio points' raw JSON" in text.split("## Plots")[1]


def test_clat_percentiles_of_writes_are_the_writes():
    write = latency_cdf.clat_percentiles(fio_json("randwrite", 100.0), "randwrite")
    read = latency_cdf.clat_percentiles(fio_json("randread", 100.0), "randread")
    assert set(write) == set(read) == set(PERCENTILES)
    assert write[50.0] == read[50.0] == pytest.approx(100.0 * 3.5)
    assert latency_cdf.clat_percentiles({"jobs": []}, "randread") == {}


def test_a_point_with_several_devices_has_the_distribution_of_all_their_requests():
    data = json.loads((Path(__file__).parent / "data" / "fio" /
                       "randread-4k-qd4-j1-3dev.json").read_text())
    row = {"rw": "randread", "devices": 3}
    merged = latency_cdf.point_percentiles(data, row)
    per_job = [latency_cdf.clat_percentiles({"jobs": [job]}, "randread") for job in data["jobs"]]
    assert set(merged) == set(per_job[0]) and len(merged) > 5     # fio's own percentiles
    for percent in (50.0, 99.0):
        each = [table[percent] for table in per_job]
        assert min(each) <= merged[percent] <= max(each)
    assert merged[50.0] not in [table[50.0] for table in per_job]  # not one job's
    assert list(merged.values()) == sorted(merged.values())
    assert latency_cdf.point_percentiles(data, {**row, "devices": 1}) == per_job[0]
