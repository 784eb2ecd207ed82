"""How a run is cut into units for hosts (pure logic; the real hosts are in test_remote.py)."""

from __future__ import annotations

from harness.matrix import Point, Session, Workload
from harness.scheduler import Unit, units

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
