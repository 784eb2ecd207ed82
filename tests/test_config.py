from pathlib import Path

import pytest

from harness.config import load_config, parse_config, parse_size
from harness.errors import UserError
from harness.matrix import plan

MINIMAL = """
name: t
variants: [baseline, dataplane]
disks: [{path: /tmp/x.img, size: 64M}]
"""


def test_minimal_config_defaults():
    config = parse_config(MINIMAL)
    assert [v.build for v in config.variants] == ["baseline", "dataplane"]
    assert config.accel == "auto" and config.repetitions == 3
    assert config.disks[0].size_bytes == 64 << 20


@pytest.mark.parametrize("text, expected", [
    ("workloads: {rw: [sideways]}", "workloads.rw.0"),
    ("workloads: {iodepth: [0]}", "workloads.iodepth"),
    ("workloads: {bs: [1000]}", "multiple of 512"),
    ("accel: hvf", "accel"),
    ("repetitions: 0", "repetitions"),
    ("bogus: 1", "bogus"),
])
def test_bad_field_is_named(text, expected):
    with pytest.raises(UserError) as info:
        parse_config(MINIMAL + text, "c.yaml")
    message = str(info.value)
    assert message.startswith("c.yaml: ") and expected in message and "\n" not in message


def test_unknown_build_and_no_source():
    with pytest.raises(UserError, match="unknown variant 'mine': our builds are baseline, "
                                        "dataplane, poll; for a QEMU on this system give"):
        parse_config("name: t\nvariants: [{name: mine}]\ndisks: [{path: /x}]")
    with pytest.raises(UserError, match="unknown variant 'dataplain': did you mean 'dataplane'"):
        parse_config("name: t\nvariants: [dataplain]\ndisks: [{path: /x}]")
    with pytest.raises(UserError, match="exactly one of 'build'"):
        parse_config("name: t\nvariants: [{name: a, build: poll, binary: q}]\ndisks: [{path: /x}]")
    with pytest.raises(UserError, match="baseline: 'nope' is not one of"):
        parse_config(MINIMAL + "baseline: nope")


def test_unknown_fields_get_a_did_you_mean_and_every_error_its_line():
    with pytest.raises(UserError) as info:
        parse_config(MINIMAL + "repetition: 3\nworkloads: {iodeph: [1], bs: [3]}\n", "c.yaml")
    lines = str(info.value).splitlines()
    assert "c.yaml: unknown field 'repetition'; did you mean 'repetitions'?" in lines
    assert "c.yaml: workloads: unknown field 'iodeph'; did you mean 'iodepth'?" in lines
    assert "c.yaml: workloads.bs: bs '3' must be a multiple of 512 bytes" in lines
    assert len(lines) == 3


def test_system_variant_and_iothread_rules():
    config = parse_config(MINIMAL.replace(
        "[baseline, dataplane]",
        "[baseline, {name: q, binary: qemu-system-x86_64, iothread: true, aio: io_uring}]"))
    assert config.variant("q").iothread and config.variant("q").aio == "io_uring"
    with pytest.raises(UserError, match="iothread"):
        parse_config(MINIMAL.replace("[baseline, dataplane]", "[{name: baseline, iothread: true}]"))


def test_yaml_syntax_error_has_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\nvariants: [baseline\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_config(path)
    with pytest.raises(UserError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_sizes():
    assert parse_size("4k") == 4096 and parse_size("1G") == 1 << 30 and parse_size(512) == 512
    with pytest.raises(ValueError):
        parse_size("4 KB")


def test_plan_interleaves_and_rotates():
    config = parse_config(MINIMAL + "repetitions: 2\nworkloads: {iodepth: [1, 4]}")
    sessions = plan(config)
    assert [s.variant for s in sessions] == ["baseline", "dataplane", "dataplane", "baseline"]
    assert all(s.guest == "fio" for s in sessions)
    assert all(len(s.points) == 2 for s in sessions)
    keys = [p.key for s in sessions for p in s.points]
    assert len(keys) == len(set(keys))


def test_shipped_configs_are_valid():
    paths = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    assert len(paths) >= 10
    for path in paths:  # every file there is a bench config
        load_config(path)


def test_two_guests_in_one_run():
    config = parse_config(MINIMAL + "guests: [{kind: fio}, {kind: microguest, wait: irq}]")
    assert config.guest("microguest-irq").wait == "irq"
    sessions = plan(config)
    assert {s.guest for s in sessions} == {"fio", "microguest-irq"}
    keys = [p.key for s in sessions for p in s.points]
    assert len(keys) == len(set(keys))
    with pytest.raises(UserError, match="either 'guest' or 'guests'"):
        parse_config(MINIMAL + "guest: {kind: fio}\nguests: [{kind: fio}]")
    with pytest.raises(UserError, match="each guest at most once"):
        parse_config(MINIMAL + "guests: [{kind: fio}, {kind: fio}]")


def test_microguest_points_it_cannot_run_are_left_out_with_a_reason():
    from harness.matrix import skipped

    config = parse_config(MINIMAL + "guests: [{kind: fio}, {kind: microguest, repetitions: 4}]\n"
                          "workloads: {iodepth: [1, 64], numjobs: [1, 4]}")
    sessions = plan(config)
    micro = [p for s in sessions if s.guest == "microguest-poll" for p in s.points]
    assert {(p.workload.iodepth, p.workload.numjobs) for p in micro} == {(1, 1)}
    assert max(p.rep for p in micro) == 4
    fio = [p for s in sessions if s.guest == "fio" for p in s.points]
    assert len(fio) == 2 * 4 * 3  # variants x workloads x repetitions
    assert len(skipped(config)) == 3 and all("micro-guest" in line for line in skipped(config))


def test_two_microguest_wait_modes_in_one_run():
    config = parse_config(MINIMAL + "guests: [{kind: microguest, wait: poll}, {kind: microguest, wait: irq}]")
    assert [g.id for g in config.guests] == ["microguest-poll", "microguest-irq"]
    named = parse_config(MINIMAL + "guests: [{kind: fio, name: linux}]")
    assert plan(named)[0].guest == "linux"


def test_microguest_wait_and_kick_modes_are_guests_of_their_own():
    config = parse_config(MINIMAL + "guests: [{kind: microguest, wait: poll-irq-on}, "
                          "{kind: microguest, wait: poll-irq-on, kick: every}]")
    assert [g.id for g in config.guests] == ["microguest-poll-irq-on",
                                             "microguest-poll-irq-on-kick-every"]
    assert [g.kick for g in config.guests] == ["honour", "every"]
    assert {p.guest for p in plan(config)} == {g.id for g in config.guests}
    with pytest.raises(UserError, match=r"guests\.0\.kick"):
        parse_config(MINIMAL + "guests: [{kind: microguest, kick: sometimes}]", "c.yaml")


def test_micro_configs_cover_every_wait_and_kick_mode():
    from harness.config import KICK_MODES
    wanted = {(w, k) for w in ("poll", "irq", "poll-irq-on") for k in KICK_MODES}
    for name in ("micro.yaml", "micro-irq.yaml"):
        config = load_config(Path(__file__).parent.parent / "configs" / name)
        assert {(g.wait, g.kick) for g in config.guests} == wanted, name
        assert {"qemu-mainloop", "qemu-iothread"} <= {v.name for v in config.variants}


def test_run_manifest_is_portable(monkeypatch, tmp_path):
    from harness.build import portable

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    manifest = {"variants": {"baseline": {"binary": f"{tmp_path}/cache/build/baseline/qemu",
                                          "build": {"source_url": "/home/me/src/qemu-kvm"}},
                             "q": {"binary": "/usr/bin/qemu-system-x86_64", "build": None}},
                "qemu_command_lines": {"baseline": f"{tmp_path}/cache/build/baseline/qemu -m 512 "
                                                   f"-serial file:{tmp_path}/run/logs/x.log"}}
    shared = portable(manifest, tmp_path / "run")
    assert shared["qemu_command_lines"]["baseline"].endswith("-serial file:$RUN_DIR/logs/x.log")
    assert shared["variants"]["baseline"]["binary"] == "$HARNESS_CACHE/build/baseline/qemu"
    assert shared["variants"]["baseline"]["build"]["source_url"] == "(local clone)"
    assert shared["variants"]["q"]["binary"] == "/usr/bin/qemu-system-x86_64"
    assert str(tmp_path) not in str(shared)


def test_config_differences_name_the_fields():
    base = parse_config(MINIMAL)
    assert base.differences(parse_config(MINIMAL)) == []
    changed = parse_config(MINIMAL + "workloads: {iodepth: [1, 32]}\nrepetitions: 5\n")
    assert base.differences(changed) == ["repetitions", "workloads.iodepth[1]"]
    # waiting longer and rewording do not change what is measured
    assert base.differences(parse_config(MINIMAL + "timeouts: {boot_s: 999}\n"
                                                   "description: other\n")) == []


def test_names_are_defined_once():
    from typing import get_args

    from harness.accel import ACCELS
    from harness.build import VARIANT_LAYERS
    from harness.config import ACCEL_CHOICES, BUILT_VARIANTS, AccelName

    assert tuple(VARIANT_LAYERS) == BUILT_VARIANTS
    assert set(ACCELS) == set(get_args(AccelName)) and ACCEL_CHOICES == ("auto", *ACCELS)
