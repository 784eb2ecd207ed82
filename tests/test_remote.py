"""Remote hosts over SSH, against real OpenSSH servers on 127.0.0.1 (tests/sshd.py).

Each "host" is this machine behind its own sshd on its own loopback port, with
its own work folder: the harness ships into it, starts QEMU there and reaches
the fio guest through it.  No traffic leaves 127.0.0.1.  The configs are
small (1 repetition where possible, short runs) to keep the wall time low.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import run_cli
from harness.errors import UserError
from harness.hosts.spec import HostSpec, merge_hosts, parse_host
from harness.results import COLUMNS
from harness.util import free_port
from procs import processes_mentioning
from sshd import make_sshd, own_ssh_files, sshd_missing

from conftest import built_binary_or_skip

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


# ------------------------------------------------------------------ pure logic


@pytest.mark.timeout(60)
def test_host_addresses_parse_and_label():
    spec = parse_host("lab@kvm1:2222")
    assert (spec.user, spec.host, spec.port, spec.label) == ("lab", "kvm1", 2222, "kvm1:2222")
    assert parse_host("kvm2").label == "kvm2" and parse_host("kvm2").port == 22
    assert HostSpec.model_validate({"host": "a@b:23", "name": "left"}).label == "left"
    with pytest.raises(UserError, match=r"\[USER@\]HOST\[:PORT\]"):
        parse_host("no spaces allowed")
    with pytest.raises(UserError, match="given twice"):
        merge_hosts([], ["kvm1", "root@kvm1"])
    assert [h.label for h in merge_hosts([parse_host("x")], ["y"])] == ["y"]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Results, ssh config, known hosts and shipped files in a temporary place, restored after.

    Each test sshd's key is written into the "user's" known_hosts (TestSSHD.trust):
    the harness refuses unknown keys."""
    missing = sshd_missing()
    if missing:
        pytest.skip(missing)
    built_binary_or_skip("baseline")
    built_binary_or_skip("dataplane")
    root = tmp_path_factory.mktemp("remote")
    saved = os.environ.get("HARNESS_RESULTS")
    os.environ["HARNESS_RESULTS"] = str(root / "results")
    with own_ssh_files(root):
        yield root
    if saved is None:
        os.environ.pop("HARNESS_RESULTS", None)
    else:
        os.environ["HARNESS_RESULTS"] = saved


@pytest.fixture(scope="module")
def host_a(env):
    server = make_sshd(env / "sshd-a").start().trust()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def host_b(env):
    server = make_sshd(env / "sshd-b").start().trust()
    yield server
    server.stop()


def micro_config(env: Path, name: str, hosts: list[dict], reps: int = 1,
                 iodepth=(1, 4)) -> Path:
    data = {
        "name": name, "variants": ["baseline", "dataplane"], "baseline": "baseline",
        "guest": {"kind": "microguest", "wait": "poll", "memory_mb": 128},
        "disks": [{"name": "disk", "path": str(env / "disks" / "micro.img"), "size": "32M"}],
        "workloads": {"rw": ["randread"], "bs": ["4k"], "iodepth": list(iodepth),
                      "requests": 2000},
        "repetitions": reps, "accel": "tcg", "timeouts": {"point_s": 120},
    }
    if hosts:
        data["hosts"] = hosts
    path = env / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def smoke_config(env: Path, hosts: list[dict]) -> Path:
    """configs/smoke.yaml, made small: one repetition, queue depth 1, 2 s runs."""
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data.update(repetitions=1, accel="tcg", hosts=hosts,
                disks=[{"name": "disk", "path": str(env / "disks" / "smoke.img"), "size": "64M"}])
    data["workloads"].update(iodepth=[1], runtime_s=2, ramp_s=0)
    path = env / "smoke-remote.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rows_of(env: Path, name: str) -> tuple[list[str], list[dict]]:
    runs = sorted((env / "results").glob(f"{name}-*/results.csv"))
    assert runs, f"no run {name} under {env / 'results'}"
    with open(runs[-1], newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def keys(rows: list[dict]) -> list[tuple]:
    return sorted((r["guest"], r["variant"], r["disk"], r["iodepth"], r["rep"]) for r in rows)


def bench(config: Path, capsys, *extra: str) -> tuple[int, str]:
    code = run_cli(["bench", "--config", str(config), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ------------------------------------------------------------------ end to end


@pytest.mark.timeout(240)
def test_micro_guest_through_one_host_matches_a_local_run(env, host_a, capsys):
    local = micro_config(env, "micro-local", [])
    remote = micro_config(env, "micro-remote", [host_a.host_yaml(env / "work-a")])
    assert bench(local, capsys)[0] == 0
    code, said = bench(remote, capsys)
    assert code == 0, said
    local_header, local_rows = rows_of(env, "micro-local")
    header, rows = rows_of(env, "micro-remote")
    assert header == local_header == list(COLUMNS)
    assert keys(rows) == keys(local_rows)
    assert {r["host"] for r in rows} == {host_a.address} and {r["host"] for r in local_rows} == {"local"}
    assert all(r["status"] == "ok" and float(r["iops"]) > 0 for r in rows)
    # the logs came back and the second run sends nothing new
    run_dir = sorted((env / "results").glob("micro-remote-*"))[-1]
    assert list((run_dir / "logs").glob("*.console.log"))
    code, said = bench(remote, capsys)
    assert code == 0 and "shipped 0 bytes of new files" in said, said


@pytest.mark.timeout(600)
def test_smoke_config_through_one_host(env, host_a, capsys):
    config = smoke_config(env, [host_a.host_yaml(env / "work-a")])
    code, said = bench(config, capsys)
    assert code == 0, said
    header, rows = rows_of(env, "smoke")
    assert header == list(COLUMNS)
    assert sorted(r["variant"] for r in rows) == ["baseline", "dataplane", "qemu-system"]
    assert all(r["status"] == "ok" and r["host"] == host_a.address for r in rows)
    report = sorted((env / "results").glob("smoke-*/report.md"))[-1].read_text()
    assert f"on host {host_a.address}" in report


@pytest.mark.timeout(180)
def test_two_hosts_share_a_run_each_point_once(env, host_a, host_b, capsys):
    config = micro_config(env, "micro-two", [host_a.host_yaml(env / "work-a"),
                                             host_b.host_yaml(env / "work-b")], reps=2)
    code, said = bench(config, capsys)
    assert code == 0, said
    _, rows = rows_of(env, "micro-two")
    assert len(rows) == 8 and len(set(keys(rows))) == 8  # 2 variants × 2 depths × 2 reps, once each
    by_host = {r["host"] for r in rows}
    assert by_host == {host_a.address, host_b.address}
    for row in rows:  # every variant of a workload and repetition on the same host
        partner = [r for r in rows if (r["iodepth"], r["rep"]) == (row["iodepth"], row["rep"])]
        assert {r["host"] for r in partner} == {row["host"]}


# ------------------------------------------------------------------ failures


@pytest.mark.timeout(60)
def test_connection_refused_is_one_line_and_exit_2(env, capsys):
    port = free_port()
    config = micro_config(env, "micro-refused", [{"host": "127.0.0.1", "port": port,
                                                  "workdir": str(env / "work-x")}])
    code, said = bench(config, capsys)
    assert code == 2
    lines = [line for line in said.splitlines() if "error:" in line]
    assert len(lines) == 1 and "connection refused" in lines[0] and str(port) in lines[0]


@pytest.mark.timeout(120)
def test_host_without_fio_says_what_to_install(env, capsys):
    bare = env / "bin-without-fio"
    bare.mkdir(exist_ok=True)
    for tool in Path("/usr/bin").iterdir():
        if tool.name != "fio" and not (bare / tool.name).exists():
            (bare / tool.name).symlink_to(tool)
    server = make_sshd(env / "sshd-nofio", path=f"{bare}:/usr/sbin").start().trust()
    try:
        config = micro_config(env, "micro-nofio", [server.host_yaml(env / "work-c")])
        code, said = bench(config, capsys)
        check = run_cli(["hosts", "check", "--config", str(config)])
    finally:
        server.stop()
    assert code == 2 and check == 2
    assert "fio not found in PATH: install it there (Debian: apt-get install fio)" in said




def _stop_after_first_row(server, env: Path, name: str) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for results in (env / "results").glob(f"{name}-*/results.csv"):
                if len(results.read_text().splitlines()) >= 2:
                    server.stop()
                    return
            time.sleep(0.05)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(180)
def test_a_host_lost_mid_run_hands_its_points_to_the_other(env, host_a, capsys):
    doomed = make_sshd(env / "sshd-doomed").start().trust()
    config = micro_config(env, "micro-lost2", [doomed.host_yaml(env / "work-d", name="doomed"),
                                               host_a.host_yaml(env / "work-a")], reps=2)
    watcher = _stop_after_first_row(doomed, env, "micro-lost2")
    try:
        code, said = bench(config, capsys)
    finally:
        watcher.join(5)
        doomed.stop()
    assert code == 0, said
    _, rows = rows_of(env, "micro-lost2")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert "host doomed: connection lost" in said and "move to" in said
    # its QEMU died with the connection (the watchdog kills the process group)
    assert not processes_mentioning(str(env / "work-d"), grace_s=10.0)


@pytest.mark.timeout(240)
def test_the_only_host_lost_fails_the_rest_with_the_reason_then_resume(env, host_a, capsys):
    doomed = make_sshd(env / "sshd-alone").start().trust()
    config = micro_config(env, "micro-lost1", [doomed.host_yaml(env / "work-e", name="alone")],
                          iodepth=(1, 2, 4))
    watcher = _stop_after_first_row(doomed, env, "micro-lost1")
    try:
        code, said = bench(config, capsys)
    finally:
        watcher.join(5)
        doomed.stop()
    assert code == 3, said
    _, rows = rows_of(env, "micro-lost1")
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 6 and ok and failed
    assert all("host alone: connection lost" in r["error"] for r in failed)
    # --resume goes on on another host: the finished rows stay, the rest runs there
    run_id = sorted((env / "results").glob("micro-lost1-*"))[-1].name
    elsewhere = micro_config(env, "micro-lost1", [host_a.host_yaml(env / "work-a")],
                             iodepth=(1, 2, 4))
    code, said = bench(elsewhere, capsys, "--resume", run_id)
    assert code == 0, said
    _, again = rows_of(env, "micro-lost1")
    assert len(again) == 6 and all(r["status"] == "ok" for r in again)
    assert {(r["variant"], r["iodepth"], "alone") for r in ok} <= \
        {(r["variant"], r["iodepth"], r["host"]) for r in again}
    assert {r["host"] for r in again} == {"alone", host_a.address}


@pytest.mark.timeout(600)
def test_ctrl_c_stops_the_run_and_qemu_there(env, host_a):
    workdir = env / "work-int"
    config = micro_config(env, "micro-int", [host_a.host_yaml(workdir)], iodepth=(1, 2, 4, 8))
    harness = Path(sys.executable).with_name("harness")
    child = subprocess.Popen([str(harness), "bench", "--config", str(config)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 240
        while not list((env / "results").glob("micro-int-*/results.csv")):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)  # into the next point: QEMU runs there now
        child.send_signal(signal.SIGINT)
        output = child.communicate(timeout=60)[0].decode()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, output
    assert "interrupted" in output and "--resume" in output
    _, rows = rows_of(env, "micro-int")
    assert rows and all(r["status"] == "ok" for r in rows)
    assert not processes_mentioning(str(workdir), grace_s=10.0)
