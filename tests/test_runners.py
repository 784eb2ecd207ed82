"""The runners package: the registry and the one point loop (pure orchestration, no QEMU)."""

from __future__ import annotations

import typing
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.accel import TCG, accel_named
from harness.config import GuestKind, parse_config
from harness.errors import HostLost, InfraError, UserError
from harness.fio_jobs import GuestStalled
from harness.hosts.executor import LOCAL
from harness.matrix import plan
from harness.results_writer import ResultsWriter
from harness.runners import RUNNERS, GuestAssets, PointLoop, SessionEnded, fio_point, make_runner, select
from harness.runners.registry import HOST, register
from harness.runstate import Run

CONFIG = """
name: t
variants: [baseline, dataplane]
disks: [{name: disk, path: /tmp/x.img, size: 64M}]
guest: {kind: microguest}
workloads: {rw: [randread], bs: [4k], iodepth: [1, 4]}
repetitions: 1
"""


def _run(tmp_path: Path, host=LOCAL) -> Run:
    config = parse_config(CONFIG)
    binaries = {v.name: Path("/bin/true") for v in config.variants}
    return Run(config, tmp_path / "run", TCG, binaries, {n: False for n in binaries},
               {"disk": tmp_path / "disk.img"}, ResultsWriter(tmp_path / "run"), host=host)


def _session(run: Run):
    return plan(run.config)[0]


# ------------------------------------------------------------------ registry


def test_every_guest_kind_has_a_runner_here():
    kinds = set(typing.get_args(GuestKind))
    assert {kind for kind, where in RUNNERS if where == HOST} == kinds


def test_a_kind_no_runner_takes_is_refused_in_one_line_naming_what_can_run():
    with pytest.raises(UserError, match=r"'unikernel' cannot run here: use one of custom, fio, "
                                        r"microguest$"):
        select("unikernel", HOST)


def test_a_new_guest_kind_is_one_registration(monkeypatch):
    monkeypatch.setattr("harness.runners.registry.RUNNERS", dict(RUNNERS))
    from harness.runners import registry

    @register("unikernel")
    class Unikernel:
        def __init__(self, run, spec, say, assets):
            self.description = f"unikernel for {spec.id}"

    run = SimpleNamespace(accel=TCG)
    guest = SimpleNamespace(kind="unikernel", id="u")
    assert make_runner(run, guest, None, print).description == "unikernel for u"
    assert registry.select("unikernel", HOST) is Unikernel
    with pytest.raises(ValueError, match="two runners"):
        register("unikernel")(Unikernel)


def test_kvm_nested_points_run_through_the_same_runners_with_kvm_in_l1(tmp_path):
    """L1 is a host (nested/host.py): its Run has KVM, named kvm-nested in the rows."""
    from harness.accel import KVM_IN_L1
    from harness.runners.micro import MicroRunner

    run = _run(tmp_path)
    there = replace(run, accel=KVM_IN_L1)
    runner = make_runner(there, run.config.guests[0], GuestAssets({}, Path("/x.elf")), print)
    assert isinstance(runner, MicroRunner)
    assert (KVM_IN_L1.name, KVM_IN_L1.machine_accel, KVM_IN_L1.inner) == ("kvm-nested", "kvm",
                                                                          None)
    assert accel_named("kvm-nested").inner == "kvm"   # what boots L1 here


# ------------------------------------------------------------------ the point loop


def test_a_failed_boot_fails_every_point_not_yet_run_and_counts_each_once(tmp_path):
    run = _run(tmp_path)
    session = _session(run)
    advanced, said = [], []
    log = run.log_path("s.console.log")
    with PointLoop(run, session, advanced.append, said.append, log) as loop:
        measured = []

        def measure(point):
            if measured:
                raise InfraError("QEMU exited with code 1")
            measured.append(point)

        loop.for_each(measure)
    rows = run.writer.rows()
    assert advanced == [p.key for p in session.points]
    # the first point measured (no row in this fake), the one that raised failed, and the rest
    assert [r["status"] for r in rows] == ["failed"] * (len(session.points) - 1)
    assert [r["iodepth"] for r in rows] == ["4"]
    assert all(r["error"] == "QEMU exited with code 1" and r["log"] == "logs/s.console.log"
               for r in rows)
    assert any("failed: QEMU exited" in line for line in said)


def test_a_boot_that_never_starts_fails_all_points(tmp_path):
    run = _run(tmp_path)
    session = _session(run)
    advanced = []
    with PointLoop(run, session, advanced.append, lambda _m: None, run.log_path("s.log")):
        raise InfraError("the guest did not boot")
    assert len(run.writer.rows()) == len(session.points) == len(advanced)


def test_a_lost_host_is_handed_on_and_fails_nothing(tmp_path):
    gone = SimpleNamespace(label="h1", alive=lambda: False)
    run = _run(tmp_path, host=gone)
    session = _session(run)
    with pytest.raises(HostLost, match="host h1: connection lost"):
        with PointLoop(run, session, lambda _k: None, lambda _m: None, run.log_path("s.log")):
            raise InfraError("channel closed")
    assert not run.writer.path.exists() or run.writer.rows() == []


def test_a_user_error_is_never_caught(tmp_path):
    run = _run(tmp_path)
    with pytest.raises(UserError):
        with PointLoop(run, _session(run), lambda _k: None, lambda _m: None,
                       run.log_path("s.log")):
            raise UserError("guest.memory_mb 64 is too small")
    assert not run.writer.path.exists() or run.writer.rows() == []


def test_a_failed_fio_fails_its_point_only_unless_qemu_died(tmp_path):
    run = _run(tmp_path)
    point = _session(run).points[0]
    log = run.log_path("s.log")

    def fio_fails():
        raise InfraError("fio exited 1")

    fio_point(run, lambda _m: None, point, log, fio_fails)  # QEMU alive: goes on
    assert [r["status"] for r in run.writer.rows()] == ["failed"]

    def qemu_dead():
        raise InfraError("QEMU exited")

    with pytest.raises(SessionEnded, match="QEMU exited"):
        fio_point(run, lambda _m: None, point, log, fio_fails, qemu_dead)
    # the point keeps fio's own error: the session's end is not written over it
    session = SimpleNamespace(key="s", points=(point,))
    with PointLoop(run, session, lambda _k: None, lambda _m: None, log) as loop:
        loop.for_each(lambda _p: fio_point(run, lambda _m: None, point, log, fio_fails,
                                           qemu_dead))
    (row,) = run.writer.rows()
    assert row["error"] == "fio exited 1"


def test_a_stalled_guest_ends_the_session_after_failing_its_point(tmp_path):
    run = _run(tmp_path)
    point = _session(run).points[0]

    def stalls():
        raise GuestStalled("no I/O for 60 s")

    with pytest.raises(SessionEnded, match="not run: the guest stalled earlier"):
        fio_point(run, lambda _m: None, point, run.log_path("s.log"), stalls)
    (row,) = run.writer.rows()
    assert row["status"] == "failed" and "no I/O for 60 s" in row["error"]
