"""The run as a whole, with a fake QEMU (tests/fakeqemu.py) in place of the binary.

Everything else is real: the config, the VM path (argv, process group, QMP,
console, shutdown), the micro-guest runner, results.csv, the manifest, the
report and the exit codes of `harness bench`.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import bench
from harness.errors import HostLost, InfraError, PointsFailed, UserError
from harness.results_writer import SCHEMA_VERSION
from harness.vm import QemuExited

FAKE = Path(__file__).resolve().parent / "fakeqemu.py"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """The tests' own cache: the micro-guest ELF is built there once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def env(tmp_path, monkeypatch, shared_cache) -> dict[str, str]:
    """The cache and a results directory of the test's own."""
    values = {"HARNESS_CACHE": str(shared_cache), "HARNESS_RESULTS": str(tmp_path / "results")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith("FAKE_QEMU_")]:
        monkeypatch.delenv(name)
    return {**os.environ, **values}


def write_config(tmp_path: Path, **changes) -> Path:
    config = {
        "name": "fake",
        "variants": [{"name": "baseline", "binary": str(FAKE)},
                     {"name": "other", "binary": str(FAKE), "device_props": {"x-speed": "2"}}],
        "baseline": "baseline",
        "guests": [{"kind": "microguest", "wait": "poll"}],
        "disks": [{"name": "disk", "path": str(tmp_path / "disk.img"), "size": "16M"}],
        "workloads": {"rw": ["randread"], "bs": ["4k"], "iodepth": [1, 4], "requests": 100},
        "repetitions": 2,
        "accel": "tcg",
        "timeouts": {"point_s": 30},
        # orchestration tests: no waiting for quiet and no re-runs (tests/test_trust.py has those)
        "host_check": {"quiet_wait_s": 0, "retries": 0},
    }
    config.update(changes)
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def harness(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def only_run(env: dict[str, str]) -> Path:
    runs = list(Path(env["HARNESS_RESULTS"]).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


# ----------------------------------------------------------------- run_bench


def test_run_bench_writes_versioned_rows_manifest_and_report(tmp_path, env):
    messages: list[str] = []
    run_dir = bench.run_bench(write_config(tmp_path), say=messages.append)
    found = rows(run_dir)
    assert len(found) == 2 * 2 * 2  # variants x iodepths x repetitions
    assert {r["status"] for r in found} == {"ok"} and {r["accel"] for r in found} == {"tcg"}
    assert list(found[0])[-1] == "schema_version"
    assert {r["schema_version"] for r in found} == {str(SCHEMA_VERSION)}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["status"] == "complete"
    assert manifest["variants"]["other"]["qemu_version"] == "QEMU emulator version 7.2.0 (fake)"
    command = manifest["qemu_command_lines"]["other"]
    assert "x-speed=2" in command and "-S" in command and "-serial file:$RUN_DIR/logs/" in command
    assert (run_dir / "report.md").exists()
    # progress counts every point, as lines through the same callback as the messages
    assert any(m.startswith("[8/8] ") for m in messages), messages


def test_pending_sessions_leave_out_finished_points(tmp_path, env):
    config_path = write_config(tmp_path)
    run_dir = bench.run_bench(config_path, say=lambda _m: None)
    config = bench.load_config(config_path)
    run, _ = bench.prepare(config, config_path, run_dir.name, None, lambda _m: None)
    assert bench.pending_sessions(run) == []
    lines = (run_dir / "results.csv").read_text().splitlines()
    (run_dir / "results.csv").write_text("\n".join(lines[:-3]) + "\n")  # three points lost
    pending = bench.pending_sessions(run)
    assert sum(len(s.points) for s in pending) == 3
    assert all(s.rep == 2 for s in pending)  # the last points written were of repetition 2


def test_host_ceiling_and_hostile_cases_are_counted(tmp_path, env):
    pytest.importorskip("shutil").which("fio") or pytest.skip("fio not installed (Debian package fio)")
    messages: list[str] = []
    config = write_config(tmp_path, host_ceiling=True, hostile=True, repetitions=1,
                          workloads={"iodepth": [1], "requests": 50, "runtime_s": 1})
    run_dir = bench.run_bench(config, say=messages.append)
    total = 2 + 1 + 16 * 2  # guest points + host fio points + hostile cases x variants
    assert any(m.startswith(f"[{total}/{total}] ") for m in messages), messages[-5:]
    assert {r["variant"] for r in rows(run_dir)} == {"baseline", "other", "host-fio"}
    with open(run_dir / "hostile.csv", newline="") as handle:
        hostile = list(csv.DictReader(handle))
    assert len(hostile) == 32 and {h["qemu_survived"] for h in hostile} == {"True"}


def test_a_variant_that_cannot_boot_fails_its_points_only(tmp_path, env, monkeypatch):
    wrapper = tmp_path / "broken-qemu"
    wrapper.write_text(f"#!/bin/sh\nFAKE_QEMU_NOBOOT=1 exec {FAKE} \"$@\"\n")
    wrapper.chmod(0o755)
    config = write_config(tmp_path, variants=[{"name": "baseline", "binary": str(FAKE)},
                                              {"name": "broken", "binary": str(wrapper)}])
    with pytest.raises(PointsFailed) as caught:
        bench.run_bench(config, say=lambda _m: None)
    failed = caught.value.failed
    assert len(failed) == 4 and all(".broken." in key for key, _ in failed)
    for _, error in failed:  # one line: the exit code, QEMU's words, the log; no argv
        assert "QEMU exited with code 1" in error and "x-fake' not found" in error
        assert "\n" not in error and "-machine" not in error and len(error) < 400
    ok = [r for r in rows(caught.value.run_dir) if r["status"] == "ok"]
    assert len(ok) == 4 and {r["variant"] for r in ok} == {"baseline"}


def test_a_user_error_in_a_session_stops_the_run(tmp_path, env, monkeypatch):
    started = []

    class Refusing:
        description = "refuses"

        def __init__(self, *args):
            pass

        def run_session(self, session, advance):
            started.append(session.key)
            raise UserError("guest.memory_mb 64 is too small for the guest")

    from harness.runners import RUNNERS
    monkeypatch.setitem(RUNNERS, ("microguest", "host"), Refusing)
    with pytest.raises(UserError, match="too small"):
        bench.run_bench(write_config(tmp_path), say=lambda _m: None)
    assert len(started) == 1  # not once per boot
    assert list(Path(env["HARNESS_RESULTS"]).iterdir()) == []  # nothing measured, nothing kept


def test_a_user_error_after_the_first_rows_keeps_the_run(tmp_path, env, monkeypatch):
    from harness.runners import RUNNERS

    real = RUNNERS[("microguest", "host")]

    class RefusingSecond(real):
        def run_session(self, session, advance):
            if self.run.writer.rows():
                raise UserError("guest.memory_mb 64 is too small for the guest")
            super().run_session(session, advance)

    monkeypatch.setitem(RUNNERS, ("microguest", "host"), RefusingSecond)
    with pytest.raises(UserError, match="too small"):
        bench.run_bench(write_config(tmp_path), say=lambda _m: None)
    run_dir = only_run(env)
    assert len(rows(run_dir)) == 2  # the first boot's points
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "aborted"


def test_a_run_that_fails_before_its_first_point_leaves_nothing(tmp_path, env):
    missing = tmp_path / "no-such-key"
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("")
    config = write_config(tmp_path, guests=[{"kind": "custom", "kernel": str(kernel),
                                             "ssh_key": str(missing)}])
    done = harness("bench", "--config", str(config), env=env)
    assert done.returncode == 2, done.stderr
    assert f"error: guest.ssh_key: no such private key file: {missing}" in done.stderr.splitlines()
    results = Path(env["HARNESS_RESULTS"])
    assert not results.exists() or list(results.iterdir()) == []


def test_a_resumed_run_is_kept_when_it_fails_before_its_first_point(tmp_path, env, monkeypatch):
    config_path = write_config(tmp_path)
    config = bench.load_config(config_path)
    made = bench.new_run_dir(config, config_path)
    run_dir = made.rename(made.parent / "fake-earlier")  # the next new run's name is free
    (run_dir / "results.csv").write_text("")  # resumable, nothing measured yet

    def refuse(*_args):
        raise UserError("guest.ssh_key: no such private key file: /nowhere")

    monkeypatch.setattr(bench, "prepare_guests", refuse)
    with pytest.raises(UserError, match="ssh_key"):
        bench.prepare(config, config_path, run_dir.name, None, lambda _m: None)
    assert (run_dir / "config.yaml").exists()
    with pytest.raises(UserError, match="ssh_key"):
        bench.prepare(config, config_path, None, None, lambda _m: None)
    assert list(Path(env["HARNESS_RESULTS"]).iterdir()) == [run_dir]  # the new one is gone


def test_measured_counts_rows_not_headers(tmp_path):
    assert not bench.measured(tmp_path)
    (tmp_path / "results.csv").write_text("run_id,guest\n")
    assert not bench.measured(tmp_path)
    (tmp_path / "hostile.csv").write_text("case,variant\nbad-desc,baseline\n")
    assert bench.measured(tmp_path)


def test_fio_session_failure_fails_its_points_and_the_run_goes_on(tmp_path, env, monkeypatch):
    """An InfraError from the VM fails the session's points; the next session still runs."""
    from harness.guest import GuestAssets
    from harness.runners import fio as fio_runner
    from harness.config import parse_config
    from harness.guest import GuestImage
    from harness.matrix import plan
    from harness.runstate import Run
    from harness.accel import TCG
    from harness.results_writer import ResultsWriter
    from harness.vm import QemuExited

    class DeadVM:
        def __init__(self, spec, **_where):
            self.spec = spec

        def __enter__(self):
            raise QemuExited(f"QEMU exited with code 1 (log: {self.spec.stderr_log})", 1,
                             self.spec.stderr_log)

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(fio_runner, "VM", DeadVM)
    config = parse_config(write_config(tmp_path).read_text().replace("microguest", "fio"))
    run = Run(config, tmp_path / "run", TCG, {"baseline": FAKE, "other": FAKE},
              {"baseline": False, "other": False}, {"disk": tmp_path / "disk.img"},
              ResultsWriter(tmp_path / "run"))
    image = GuestImage(kernel=Path("k"), initrd=Path("i"), append="", ssh_user="root",
                       ssh_key=Path("key"), description="fake")
    runner = fio_runner.FioRunner(run, config.guests[0], lambda _m: None,
                                  GuestAssets({config.guests[0].id: image}))
    advanced = []
    for session in plan(config)[:2]:
        runner.run_session(session, advanced.append)
    written = run.writer.rows()
    assert len(written) == len(advanced) == 4 and {r["status"] for r in written} == {"failed"}
    assert all("QEMU exited with code 1" in r["error"] for r in written)


# -------------------------------------------------------------------- resume


def test_resume_with_a_different_config_is_refused(tmp_path, env):
    config = write_config(tmp_path)
    first = harness("bench", "--config", str(config), env=env)
    assert first.returncode == 0, first.stderr
    run_dir = only_run(env)
    changed = write_config(tmp_path, repetitions=3,
                           workloads={"iodepth": [1, 8], "requests": 100})
    again = harness("bench", "--config", str(changed), "--resume", run_dir.name, env=env)
    assert again.returncode == 2, again.stderr
    message = " ".join(again.stderr.split())
    assert "repetitions" in message and "workloads.iodepth[1]" in message
    assert len(rows(run_dir)) == 8  # untouched


def test_resume_retries_failed_points_and_replaces_their_rows(tmp_path, env):
    broken = tmp_path / "broken"
    broken.write_text("")
    config = write_config(tmp_path)
    first = harness("bench", "--config", str(config),
                    env={**env, "FAKE_QEMU_FAIL_IF": str(broken)})
    assert first.returncode == 3, first.stderr
    failed_lines = [ln for ln in first.stderr.splitlines() if ln.startswith("failed: ")]
    assert len(failed_lines) == 8 and all("QEMU exited with code 1" in ln for ln in failed_lines)
    run_dir = only_run(env)
    assert {r["status"] for r in rows(run_dir)} == {"failed"}
    broken.unlink()  # the cause fixed
    again = harness("bench", "--config", str(config), "--resume", run_dir.name,
                    env={**env, "FAKE_QEMU_FAIL_IF": str(broken)})
    assert again.returncode == 0, again.stderr
    found = rows(run_dir)
    keys = [(r["variant"], r["iodepth"], r["rep"]) for r in found]
    assert len(found) == 8 and len(set(keys)) == 8 and {r["status"] for r in found} == {"ok"}


# -------------------------------------------------------------- exit codes


def test_exit_codes(tmp_path, env):
    ok = harness("bench", "--config", str(write_config(tmp_path)), env=env)
    assert ok.returncode == 0, ok.stderr
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("name: x\nvariants: [baseline]\ndisks: [{path: /tmp/x}]\nrepetitions: 0\n")
    bad = harness("bench", "--config", str(malformed), env=env)
    assert bad.returncode == 2 and "repetitions" in bad.stderr
    assert harness("bench", "--config", str(malformed), "--accel", "hvf", env=env).returncode == 2
    noboot = harness("bench", "--config", str(write_config(tmp_path)),
                     env={**env, "FAKE_QEMU_NOBOOT": "1"})
    assert noboot.returncode == 3
    assert len([ln for ln in noboot.stderr.splitlines() if ln.startswith("failed: ")]) == 8
    infra = harness("bench", "--config", str(write_config(tmp_path)),
                    env={**env, "FAKE_QEMU_VERSION": "bad"})
    assert infra.returncode == 1, infra.stderr
    assert "-version failed" in infra.stderr and "Traceback" not in infra.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_keeps_finished_points(tmp_path, env, sig):
    pids = tmp_path / "pids"
    pids.mkdir()
    config = write_config(tmp_path, repetitions=4)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "--config", str(config)],
                            env={**env, "FAKE_QEMU_DELAY": "0.5", "FAKE_QEMU_PIDS": str(pids)},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    results = None
    while time.monotonic() < deadline:
        runs = list(Path(env["HARNESS_RESULTS"]).glob("*/results.csv"))
        if runs and len(runs[0].read_text().splitlines()) >= 3:  # header + two points
            results = runs[0]
            break
        time.sleep(0.1)
    assert results is not None, "no point finished"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "finished work is kept" in stderr
    kept = rows(results.parent)
    assert 2 <= len(kept) < 16 and {r["status"] for r in kept} == {"ok"}
    manifest = json.loads((results.parent / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    for pid in (int(p.name) for p in pids.iterdir()):  # every fake QEMU reaped
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    resumed = harness("bench", "--config", str(config), "--resume", results.parent.name, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert len(rows(results.parent)) == 16


# --------------------------------------------------------------- KVM probe


@pytest.mark.parametrize("kvm, expected", [("ok", "kvm"), ("hang", "tcg")])
def test_auto_accel_probes_with_the_micro_guest(tmp_path, env, monkeypatch, kvm, expected):
    from harness import accelprobe

    own_cache = tmp_path / "cache"  # a verdict of its own; the ELF from the shared cache
    own_cache.mkdir()
    accelprobe.build_microguest()
    (own_cache / "microguest").symlink_to(Path(env["HARNESS_CACHE"]) / "microguest")
    monkeypatch.setenv("HARNESS_CACHE", str(own_cache))
    monkeypatch.setattr(accelprobe, "kvm_device_problem", lambda: None)
    monkeypatch.setattr(accelprobe, "PROBE_TIMEOUT_S", 3.0)
    monkeypatch.setenv("FAKE_QEMU_KVM", kvm)
    messages: list[str] = []
    accel, notice = accelprobe.choose_accel("auto", str(FAKE), False, say=messages.append)
    assert accel.name == expected
    assert any("booting the micro-guest" in m for m in messages)
    if expected == "tcg":
        assert notice and "cannot run the micro-guest" in notice and "\n" not in notice
    started = time.monotonic()
    again, _ = accelprobe.choose_accel("auto", str(FAKE), False)
    assert again == accel and time.monotonic() - started < 2  # the day's verdict, cached


class _ProbeVM:
    """accelprobe's VM, scripted: launch() and wait_until() raise what the test gives."""

    launch_error: BaseException | None = None
    wait_error: BaseException | None = None
    boots = 0

    def __init__(self, spec, host=None):
        self.returncode = None
        self.started_at = time.monotonic()

    def launch(self):
        type(self).boots += 1
        self._fail(self.launch_error)

    def wait_until(self, done, timeout, what):
        self._fail(self.wait_error)
        return "ready"

    def _fail(self, error):
        if isinstance(error, QemuExited):
            self.returncode = error.status
        if error:
            raise error

    def console(self):
        return ""

    def kill(self):
        pass


@pytest.mark.parametrize("where, error, cached", [
    ("wait", InfraError("no ready line from the micro-guest within 3 s"), True),
    ("wait", QemuExited("QEMU exited with code 1: KVM internal error", 1, Path("q.log")), True),
    ("launch", QemuExited("QEMU exited with code 1: no KVM module", 1, Path("q.log")), True),
    ("wait", QemuExited("QEMU exited with code -9", -9, Path("q.log")), False),
    ("launch", InfraError("QEMU's QMP did not answer within 30 s"), False),
    ("launch", HostLost("host kvm1: connection lost during starting QEMU"), False),
    ("wait", HostLost("host kvm1: connection lost during reading the console"), False),
], ids=["guest-hangs", "qemu-fails", "qemu-refuses", "qemu-killed", "qmp-slow",
        "host-lost-at-launch", "host-lost-while-waiting"])
def test_only_kvms_own_answer_is_cached_for_the_day(tmp_path, env, monkeypatch, where, error,
                                                     cached):
    """A verdict stands for the day, so only one KVM gave (a guest that hangs or a
    QEMU that refuses) is cached: not a lost host, a killed QEMU or a slow start."""
    from harness import accelprobe

    class Probe(accelprobe.Probe):
        def spec(self, binary, legacy, tmp):
            return None

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_ProbeVM, f"{where}_error", error)
    monkeypatch.setattr(_ProbeVM, "boots", 0)
    monkeypatch.setattr(accelprobe, "VM", _ProbeVM)
    probe = Probe("the micro-guest", "ready", ("k",))
    for _ in range(2):
        if isinstance(error, HostLost):
            with pytest.raises(HostLost):
                accelprobe.probe_kvm(str(FAKE), False, probe)
        else:
            works, detail = accelprobe.probe_kvm(str(FAKE), False, probe)
            assert not works and "\n" not in detail
    assert _ProbeVM.boots == (1 if cached else 2)
    assert bool(list((tmp_path / "cache").rglob("kvm-probe-*.json"))) == cached


def test_a_traced_guest_on_remote_hosts_is_refused_before_anything_runs(tmp_path, env):
    path = write_config(tmp_path, guests=[{"kind": "microguest", "wait": "poll", "trace": True}],
                        hosts=[{"host": "127.0.0.1", "port": 9}])
    with pytest.raises(UserError, match="trace: true runs on this machine only"):
        bench.run_bench(path)
    assert not Path(env["HARNESS_RESULTS"]).exists() or not any(
        Path(env["HARNESS_RESULTS"]).iterdir())


def test_a_paused_vm_runs_its_guest_only_on_cont(tmp_path, env):
    """VM(paused=True): QEMU is up and QMP answers, but the guest runs only once the
    caller sends `cont` (the safety tests act in between)."""
    from harness.microguest import microguest_spec
    from harness.vm import VM

    spec = microguest_spec(FAKE, "tcg", None, None, "mode=bench n=5", tmp_path / "console.log",
                           kernel=tmp_path / "no-kernel", legacy=False)
    with VM(spec, paused=True) as vm:
        assert vm.qmp_reply("query-status")["return"]["status"] == "running"
        time.sleep(0.3)
        assert vm.console() == "", "the guest ran before cont"
        vm.qmp_cmd("cont")
        vm.wait_until(lambda text: "MICROGUEST-RESULT" in text, 10, "the guest's result")
        assert vm.wait_exit(10) == 33
