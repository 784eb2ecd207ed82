"""Parsing real fio JSON into result rows, and the durable results store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.errors import InfraError, UserError
from harness.matrix import Point, Workload
from harness.results import (COLUMNS, SCHEMA_VERSION, V1_COLUMNS, V2_COLUMNS, ResultsStore, failed_row,
                             load_results, parse_fio_output, read_results, row_from_fio, row_key,
                             split_fio_output)

FIO_DIR = Path(__file__).parent / "data" / "fio"
HOST_DIR = FIO_DIR / "host"
ALL_FIO = sorted(FIO_DIR.rglob("*.json"))
META = dict(run_id="run1", guest="fio", variant="dataplane", accel="kvm", disk="file", rep=1,
            guest_cpu_pct=42.0, host_cpu_pct=110.0, log="logs/x.log",
            started_at="2026-11-25T04:00:00+00:00")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def parse(path: Path, workload: Workload | None = None) -> dict:
    return row_from_fio(load(path), workload=workload, **META)


def test_recordings_are_there():
    assert len(ALL_FIO) >= 6, "tests/data/fio should hold real fio JSON recordings"


@pytest.mark.parametrize("path", ALL_FIO, ids=lambda p: str(p.relative_to(FIO_DIR)))
def test_every_recording_parses_consistently(path):
    data = load(path)
    row = parse(path)
    assert list(row) == list(COLUMNS)
    jobs = data["jobs"]
    expected_iops = sum(j["read"]["iops"] + j["write"]["iops"] for j in jobs)
    assert row["iops"] == pytest.approx(expected_iops)
    assert row["bw_mib_s"] == pytest.approx(sum(j["read"]["bw"] + j["write"]["bw"] for j in jobs) / 1024)
    assert 0 < row["lat_p50_us"] <= row["lat_p99_us"] <= row["lat_p999_us"]
    assert row["lat_mean_us"] > 0 and row["runtime_s"] > 0
    options = {**data.get("global options", {}), **jobs[0]["job options"]}
    assert row["rw"] == options["rw"] and int(row["iodepth"]) == int(options["iodepth"])
    assert row["status"] == "ok" and row["error"] == ""


def test_randread_values_come_from_the_read_side():
    data = load(HOST_DIR / "randread-4k-qd4-j1.json")
    read = data["jobs"][0]["read"]
    row = parse(HOST_DIR / "randread-4k-qd4-j1.json", Workload("randread", "4k", 4, 1))
    assert row["iops"] == pytest.approx(read["iops"])
    assert row["lat_p99_us"] == pytest.approx(read["clat_ns"]["percentile"]["99.000000"] / 1000)
    assert row["lat_p999_us"] == pytest.approx(read["clat_ns"]["percentile"]["99.900000"] / 1000)
    assert row["lat_mean_us"] == pytest.approx(read["clat_ns"]["mean"] / 1000)
    assert (row["guest_cpu_pct"], row["host_cpu_pct"]) == (42.0, 110.0)


def test_randrw_sums_iops_and_takes_read_latency():
    data = load(HOST_DIR / "randrw-4k-qd4-j1.json")
    job = data["jobs"][0]
    row = parse(HOST_DIR / "randrw-4k-qd4-j1.json")
    assert job["write"]["iops"] > 0
    assert row["iops"] == pytest.approx(job["read"]["iops"] + job["write"]["iops"])
    assert row["lat_p99_us"] == pytest.approx(job["read"]["clat_ns"]["percentile"]["99.000000"] / 1000)


def test_randwrite_with_global_options():
    data = load(HOST_DIR / "randwrite-64k-qd1-j1-global.json")
    assert "rw" not in data["jobs"][0]["job options"]  # the point of this recording
    row = parse(HOST_DIR / "randwrite-64k-qd1-j1-global.json")
    assert (row["rw"], row["bs"], row["iodepth"], row["numjobs"]) == ("randwrite", "64k", 1, 1)
    write = data["jobs"][0]["write"]
    assert row["lat_p50_us"] == pytest.approx(write["clat_ns"]["percentile"]["50.000000"] / 1000)


def test_numjobs_two_with_and_without_group_reporting():
    grouped = parse(HOST_DIR / "randread-4k-qd8-j2-group.json")
    separate = parse(HOST_DIR / "randread-4k-qd8-j2-nogroup.json")
    assert grouped["numjobs"] == separate["numjobs"] == 2
    jobs = load(HOST_DIR / "randread-4k-qd8-j2-nogroup.json")["jobs"]
    assert len(jobs) == 2
    assert separate["iops"] == pytest.approx(jobs[0]["read"]["iops"] + jobs[1]["read"]["iops"])


def test_lat_percentiles_preferred_when_present():
    data = load(HOST_DIR / "randread-4k-qd4-j1-latpct.json")
    row = parse(HOST_DIR / "randread-4k-qd4-j1-latpct.json")
    lat = data["jobs"][0]["read"]["lat_ns"]
    assert row["lat_p99_us"] == pytest.approx(lat["percentile"]["99.000000"] / 1000)


def test_workload_from_json_must_match_the_point():
    with pytest.raises(InfraError, match="expected"):
        parse(HOST_DIR / "randread-4k-qd4-j1.json", Workload("randread", "4k", 16, 1))
    row = parse(HOST_DIR / "randread-4k-qd4-j1.json", Workload("randread", "4096", 4, 1))
    assert row["bs"] == "4096"  # same size; the point's spelling is kept so keys match


def test_fio_error_is_infra_error():
    data = load(HOST_DIR / "randread-4k-qd4-j1.json")
    data["jobs"][0]["error"] = 5
    with pytest.raises(InfraError, match="error 5"):
        row_from_fio(data, workload=None, **META)


def test_parse_fio_output_skips_warnings():
    text = "fio: note: both iodepth >= 1 and synchronous I/O engine\n" + \
        (HOST_DIR / "randread-4k-qd4-j1.json").read_text()
    assert parse_fio_output(text)["fio version"].startswith("fio-3")
    with pytest.raises(InfraError, match="fio printed no JSON: fio --name=x: fio: failed to open"):
        parse_fio_output("fio: failed to open file\n", "fio --name=x")
    text, data = split_fio_output("note\n{\"jobs\": []}")
    assert text == '{"jobs": []}' and data == {"jobs": []}
    with pytest.raises(InfraError, match="invalid JSON"):
        split_fio_output('{"jobs": [')


def failed(rep: int = 1) -> dict:
    return failed_row(run_id="run1", guest="fio", variant="baseline", accel="tcg", disk="file",
                      workload=Workload("randread", "4k", 16, 1), rep=rep,
                      error="QEMU exited\nwith status 1", log="logs/baseline.file.r1.log",
                      started_at="2026-11-25T04:00:00+00:00")


def test_failed_row():
    row = failed()
    assert row["status"] == "failed" and row["error"] == "QEMU exited with status 1"
    assert all(math.isnan(row[c]) for c in ("iops", "lat_p99_us", "runtime_s"))
    assert row_key(row) == Point("fio", "baseline", "file", Workload("randread", "4k", 16, 1), 1).key


def test_store_appends_loads_and_resumes(tmp_path):
    store = ResultsStore(tmp_path)
    ok = parse(HOST_DIR / "randread-4k-qd4-j1.json")
    store.append(ok)
    store.append(failed())
    store.append({**ok, "rep": 2})
    text = (tmp_path / "results.csv").read_text()
    assert text.count("run_id,guest") == 1 and len(text.splitlines()) == 4
    df = store.load()
    assert list(df.columns) == list(COLUMNS) and len(df) == 3
    assert str(df["iodepth"].dtype) == "int64" and str(df["iops"].dtype) == "float64"
    assert str(df["started_at"].dtype).startswith("datetime64")
    assert df.loc[1, "status"] == "failed" and math.isnan(df.loc[1, "iops"])
    assert df.loc[0, "error"] == "" and df.loc[0, "iops"] == pytest.approx(ok["iops"])
    assert store.done_keys() == {"fio.dataplane.file.randread-4k-qd4-j1.r1",
                                 "fio.dataplane.file.randread-4k-qd4-j1.r2"}


def test_store_survives_a_torn_last_line(tmp_path):
    store = ResultsStore(tmp_path)
    ok = parse(HOST_DIR / "randread-4k-qd4-j1.json")
    store.append(ok)
    with open(tmp_path / "results.csv", "a") as handle:
        handle.write("run1,fio,dataplane,kvm,file,randr")  # a crash mid-row
    assert len(load_results(tmp_path)) == 1
    torn = read_results(tmp_path).bad_lines
    assert [(b.line, b.reason) for b in torn] == [(3, "incomplete last line (the write was cut short)")]
    fresh = ResultsStore(tmp_path)
    fresh.append({**ok, "rep": 2})
    df = fresh.load()
    assert list(df["rep"]) == [1, 2]


def test_save_raw_and_empty_load(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.load().empty and list(store.load().columns) == list(COLUMNS)
    assert store.done_keys() == set()
    path = store.save_raw("baseline.file.randread-4k-qd1-j1.r1", '{"jobs": []}')
    assert path == tmp_path / "raw" / "baseline.file.randread-4k-qd1-j1.r1.json"
    assert path.read_text() == '{"jobs": []}'
    assert not list((tmp_path / "raw").glob("*.tmp"))
    with pytest.raises(ValueError):
        store.save_raw("../escape", "x")


def test_rows_carry_the_schema_version(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(parse(HOST_DIR / "randread-4k-qd4-j1.json"))
    assert (tmp_path / "results.csv").read_text().splitlines()[0].endswith(",schema_version")
    results = read_results(tmp_path)
    assert results.schema_version == SCHEMA_VERSION == 5 and list(results.frame["schema_version"]) == [5]
    assert list(results.frame["host"]) == ["local"]


def test_malformed_rows_are_counted_with_their_line_numbers(tmp_path, caplog):
    store = ResultsStore(tmp_path)
    ok = parse(HOST_DIR / "randread-4k-qd4-j1.json")
    store.append(ok)
    good = (tmp_path / "results.csv").read_text().splitlines()[1]
    bad_rep = good.replace(",1,ok,", ",one,ok,")
    bad_iops = good.replace(f",ok,{ok['iops']},", ",ok,lots,")
    with open(tmp_path / "results.csv", "a") as handle:
        handle.write("run1,fio,too,short\n" + bad_rep + "\n" + bad_iops + "\n")
    store.append({**ok, "rep": 2})
    results = read_results(tmp_path)
    assert len(results.frame) == 2
    assert [(b.line, b.reason) for b in results.bad_lines] == [
        (3, f"4 fields, the header has {len(COLUMNS)}"), (4, "rep 'one' is not an integer"),
        (5, "iops 'lots' is not a number")]
    with caplog.at_level("WARNING", logger="harness.results"):
        assert len(load_results(tmp_path)) == 2
    assert "3 malformed row(s) left out (line 3: 4 fields" in caplog.text
    assert len(store.rows()) == 2 and len(store.done_keys()) == 2


def test_a_v1_file_is_read_and_resumed_in_its_own_layout(tmp_path):
    ok = parse(HOST_DIR / "randread-4k-qd4-j1.json")
    lines = [",".join(V1_COLUMNS), ",".join("" if isinstance(ok[c], float) and math.isnan(ok[c])
                                            else str(ok[c]) for c in V1_COLUMNS)]
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    store = ResultsStore(tmp_path)
    store.append({**ok, "rep": 2})
    text = (tmp_path / "results.csv").read_text().splitlines()
    assert text[0] == ",".join(V1_COLUMNS) and len(text[2].split(",")) == len(V1_COLUMNS)
    results = read_results(tmp_path)
    assert results.schema_version == 1 and not results.bad_lines
    assert list(results.frame["rep"]) == [1, 2] and list(results.frame["schema_version"]) == [1, 1]


def test_a_v2_file_reads_with_host_local_and_schema_version_last(tmp_path):
    ok = {**parse(HOST_DIR / "randread-4k-qd4-j1.json"), "schema_version": 2}
    lines = [",".join(V2_COLUMNS), ",".join("" if isinstance(ok[c], float) and math.isnan(ok[c])
                                            else str(ok[c]) for c in V2_COLUMNS)]
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    results = read_results(tmp_path)
    assert results.schema_version == 2 and not results.bad_lines
    assert list(results.frame["host"]) == ["local"]
    assert COLUMNS[-1] == "schema_version" and "host" in COLUMNS


def test_committed_reference_runs_load_without_loss():
    for run in sorted((Path(__file__).resolve().parent.parent / "results").glob("*/results.csv")):
        results = read_results(run)
        assert 1 <= results.schema_version <= SCHEMA_VERSION and not results.bad_lines
        assert len(results.frame) == len(run.read_text().splitlines()) - 1


def test_a_newer_file_or_a_foreign_csv_is_refused(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({**parse(HOST_DIR / "randread-4k-qd4-j1.json"), "schema_version": 6})
    with pytest.raises(UserError, match="schema_version 6, newer than this harness reads"):
        read_results(tmp_path)
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a harness results.csv"):
        read_results(tmp_path)


def test_a_retry_rewrites_the_file_without_losing_a_malformed_line(tmp_path):
    """Replacing a point's row rewrites results.csv: every other line, malformed
    ones included, must come through as it was (read_results names them)."""
    from harness.results_writer import ResultsWriter

    writer = ResultsWriter(tmp_path)
    ok = parse(HOST_DIR / "randread-4k-qd4-j1.json")
    writer.append(ok)
    writer.append(failed())
    writer.append({**ok, "rep": 2, "status": "failed", "error": "two\nlines"})  # quoted newline
    good = (tmp_path / "results.csv").read_text().splitlines()[1]
    foreign = ["run1,fio,too,short", good.replace(",1,ok,", ",one,ok,")]
    with open(tmp_path / "results.csv", "a") as handle:
        handle.write("\n".join(foreign) + "\n")
    before = (tmp_path / "results.csv").read_text().splitlines()
    writer.append({**failed(), "status": "ok", "error": ""})   # the retry of the failed point
    after = (tmp_path / "results.csv").read_text().splitlines()
    assert after[:2] == before[:2] and after[2:-1] == before[3:]   # the failed row replaced
    assert all(line in after for line in foreign)
    results = read_results(tmp_path)
    assert len(results.bad_lines) == 2 and len(results.records) == 3
    assert [r["status"] for r in results.records] == ["ok", "failed", "ok"]
    assert results.records[1]["error"] == "two\nlines"
