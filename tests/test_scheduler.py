"""How a run is cut into units for hosts (pure logic; the real hosts are in test_remote.py)."""

from __future__ import annotations

from harness.matrix import Point, Session, Workload
from harness.fleet.scheduler import Unit, units

QD1, QD4 = Workload("randread", "4k", 1, 1), Workload("randread", "4k", 4, 1)


def session(guest: str, variant: str, rep: int) -> Session:
    return Session(guest, variant, "disk", rep,
                   tuple(Point(guest, variant, "disk", w, rep) for w in (QD1, QD4)))


def test_a_unit_holds_every_variant_of_a_repetition():
    plan = [session("fio", v, rep) for rep in (1, 2) for v in ("baseline", "dataplane")]
    found = units(plan, [], per_point=set())
    assert len(found) == 2
    for unit in found:
        assert {s.variant for s in unit.sessions} == {"baseline", "dataplane"}
        assert len({s.rep for s in unit.sessions}) == 1 and len(unit.points) == 4


def test_micro_guest_units_are_per_workload_and_ceiling_per_repetition():
    plan = [session("microguest-poll", v, 1) for v in ("baseline", "dataplane")]
    ceiling = [Point("host", "host-fio", "disk", w, 1) for w in (QD1, QD4)]
    found = units(plan, ceiling, per_point={"microguest-poll"})
    assert [len(u.points) for u in found] == [2, 2, 2]
    assert {p.workload for p in found[0].points} == {QD1} and found[2].ceiling == tuple(ceiling)


def test_a_unit_without_its_finished_points():
    unit = Unit((session("fio", "baseline", 1), session("fio", "dataplane", 1)))
    done = {unit.points[0].key, unit.points[1].key}
    left = unit.without(done)
    assert [s.variant for s in left.sessions] == ["dataplane"] and len(left.points) == 2
    assert unit.without({p.key for p in unit.points}) is None


class _Writer:
    def __init__(self):
        self.done: set[str] = set()

    def done_keys(self) -> set[str]:
        return set(self.done)


class _Host:
    def __init__(self, label: str):
        self.label = label
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Run:
    """What the scheduler asks of a host's Run."""

    def __init__(self, label: str, writer: _Writer, log_dir):
        self.host = _Host(label)
        self.writer = writer
        self.log_dir = log_dir

    def log_path(self, name: str):
        return self.log_dir / name


def test_a_lost_host_brought_back_runs_the_unfinished_points_and_the_rest(tmp_path):
    """kvm-nested's L1 stops answering: a new L1 (revive) takes the unit's unfinished
    points first, then the rest of the queue; nothing fails."""
    from harness.errors import HostLost
    from harness.fleet.scheduler import Scheduler

    writer = _Writer()
    first, second = _Run("l1", writer, tmp_path), _Run("l1", writer, tmp_path)
    work = [Unit((session("fio", "baseline", rep), session("fio", "dataplane", rep)))
            for rep in (1, 2)]
    ran: list[tuple[str, str]] = []

    def run_unit(run, unit, advance):
        for point in unit.points:
            if run is first and len(ran) == 2:
                raise HostLost("host l1: L1 stopped answering")
            ran.append(("first" if run is first else "second", point.key))
            writer.done.add(point.key)
            advance(point.key)

    revived = []
    scheduler = Scheduler([first], work, run_unit, print, lambda _key: None,
                          revive=lambda lost: revived.append(lost) or second)
    scheduler.run()
    assert revived == [first] and first.host.closed
    keys = [key for _, key in ran]
    assert sorted(keys) == sorted(p.key for u in work for p in u.points)  # each once
    assert [who for who, _ in ran] == ["first"] * 2 + ["second"] * 6
    assert keys[2:4] == [p.key for p in work[0].points[2:]]  # the unit's rest comes first
    assert scheduler.hosted == [second] and not scheduler.lost
    assert "brought back" in (tmp_path / "hosts.log").read_text()


def test_a_host_that_cannot_be_brought_back_is_lost_as_before(tmp_path):
    from harness.errors import HostLost
    from harness.fleet.scheduler import Scheduler

    writer = _Writer()
    only = _Run("l1", writer, tmp_path)

    def run_unit(run, unit, advance):
        raise HostLost("host l1: gone")

    failed = []
    scheduler = Scheduler([only], [Unit((session("fio", "baseline", 1),))], run_unit, print,
                          failed.append, revive=lambda lost: None)
    scheduler._fail_leftovers = lambda: failed.append("leftovers failed")
    scheduler.run()
    assert scheduler.lost == {"l1": "host l1: gone"} and failed == ["leftovers failed"]
