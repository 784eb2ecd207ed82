"""accel kvm-nested: the variants under a real KVM, one level down (harness/nested.py).

Pure tests of the command lines and the config rule run everywhere.  The rest
boots ONE L1 Linux (Debian's QEMU under TCG, emulated AMD SVM) for the whole
module and runs every check in L2 under L1's KVM, on dataplane and poll, and
on baseline as the reference where it says something:

* the micro-guest, polling / MSI-X / INTx completions, write-then-read verify
  (every variant), and a halted vCPU woken by the data plane's interrupt;
* MSI-X mask and re-target while requests run (every variant);
* malformed requests (the data-plane variants must survive them);
* the Linux fio guest (dataplane) with two disks: fio write+verify (crc32c) at 4k/64k,
  QD1/32 on the first, and on the second beside it; files on
  ext2 with checksums and raw sectors, then system_reset while fio runs: after
  the reboot the files read the same and I/O works; QMP quit while fio runs:
  the L2 QEMU is gone within 5 s.

An L2 micro-guest run that hangs (README, "accel: kvm-nested") is retried by
the watchdog and reported; a point that hangs every time fails.  Skips: no
qemu-system-x86_64, a variant not built, L1 without /dev/kvm.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import nested
from harness.accel import accel_named
from harness.config import VariantSpec, parse_config
from harness.devices import image_paths
from harness.errors import InfraError, UserError
from harness.guest import GuestImage
from harness.matrix import Workload
from harness.microguest import HOSTILE_CASES, churn_faults
from harness.paths import cache_dir
from harness.hosts.sshcmd import run_interruptible
from harness.vm import qemu_argv

VARIANTS = ("dataplane", "poll", "baseline")
DATA_PLANE = ("dataplane", "poll")
MICRO_N = 1000
BASELINE_KICK = "every"            # see test_microguest_verify_under_l1_kvm
CHURN_N = 1500
# spinning, the L2 vCPU competes with the data-plane thread for L1's one CPU:
# a run takes 25-50 s here, its first completion seconds
CHURN_WATCHDOG_S = 150
CHURN_TIMEOUT_MS = 30000
HALT_WATCHDOG_S = 20                 # a halting run takes 3-15 s; its own timeout is 10 s
DISK_MB = 96
L1_DISKS = 2                         # images disk.img, disk.img.1: /dev/vda, /dev/vdb in L1

LOGIN = GuestImage(kernel=Path("k/vmlinuz"), initrd=Path("k/initrd.cpio"), append="console=ttyS0",
                   ssh_user="root", ssh_key=Path("k/id_rsa"), description="test guest")


# ----------------------------------------------------------------- pure


def test_kvm_nested_is_an_accel_whose_points_run_under_kvm_one_level_down():
    accel = accel_named("kvm-nested")
    assert (accel.machine_accel, accel.cpu, accel.inner) == ("tcg", "EPYC,+svm", "kvm")
    assert not accel.needs_kvm_device
    assert accel_named("tcg").inner is None and accel_named("kvm").inner is None


def test_l1_argv_emulates_svm_and_forwards_three_ports():
    image = nested.L1Image(Path("k/vmlinuz"), Path("n/l1.cpio"), ("dataplane",), False, "x")
    ports = nested.L1Ports(5001, 5002, 5003)
    spec = nested.l1_spec("qemu-system-x86_64", image, Path("d/disk,1.img"), ports,
                          Path("r/l1.log"), Path("r/l1.qmp"), vcpus=2,
                          kernel_args="kvm_amd.vgif=0")
    argv = qemu_argv(spec)
    text = shlex.join(argv)
    assert argv[argv.index("-cpu") + 1] == "EPYC,+svm"
    assert argv[argv.index("-machine") + 1] == "pc,accel=tcg"
    assert argv[argv.index("-smp") + 1] == "2"
    assert "file=d/disk,,1.img" in text and "cache=writeback" in text  # commas doubled
    for fwd in ("tcp:127.0.0.1:5001-:22", "tcp:127.0.0.1:5002-:2222", "tcp:127.0.0.1:5003-:4444"):
        assert fwd in text
    assert argv[argv.index("-append") + 1].endswith("kvm_amd.vgif=0")
    assert argv.count("-drive") == 1 and argv.count("-netdev") == 1


def test_l2_micro_argv_runs_the_variant_under_kvm_in_l1():
    argv = nested.l2_micro_argv(VariantSpec(name="poll"), "mode=bench", 128, ("-no-kvm-irqchip",))
    assert argv[0] == "/opt/harness/poll/qemu-system-x86_64"
    assert argv[argv.index("-machine") + 1] == "pc,accel=kvm"
    assert "-S" not in argv and "-cpu" not in argv
    assert argv[argv.index("-L") + 1] == "/opt/harness/poll/pc-bios"
    assert "file=/dev/vda," in argv[argv.index("-drive") + 1]
    assert argv[argv.index("-qmp") + 1] == "tcp:0.0.0.0:4444,server,nowait"
    assert argv[-1] == "-no-kvm-irqchip"


def test_l2_fio_argv_opens_the_ssh_forward_to_l1s_network():
    argv = nested.l2_fio_argv(VariantSpec(name="dataplane"), LOGIN)
    text = shlex.join(argv)
    assert "hostfwd=tcp::2222-:22" in text and "127.0.0.1" not in text
    assert argv.count("-qmp") == 1 and argv[argv.index("-qmp") + 1].startswith("tcp:0.0.0.0:4444")
    assert argv[argv.index("-kernel") + 1] == "/opt/harness/l2/vmlinuz"
    assert "pc,accel=kvm" in argv
    assert argv[argv.index("-append") + 1].endswith(" quiet")
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    assert len(drives) == 1 and "file=/dev/vda," in drives[0]


def test_l2_fio_argv_with_two_disks_gives_l2_l1s_first_two():
    argv = nested.l2_fio_argv(VariantSpec(name="dataplane"), LOGIN, disks=2)
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    assert [d.split(",")[:2] for d in drives] == [["if=none", "id=disk0"],
                                                  ["if=none", "id=disk1"]]
    assert "file=/dev/vda," in drives[0] and "file=/dev/vdb," in drives[1]
    assert argv.count("-device") == 3     # two virtio-blk-pci, one NIC
    with pytest.raises(UserError, match="at least one disk"):
        nested.l2_fio_argv(VariantSpec(name="dataplane"), LOGIN, disks=0)


def test_only_debians_system_qemu_is_carried_into_l1():
    with pytest.raises(UserError, match="built variants only"):
        nested.l2_micro_argv(VariantSpec(name="q", binary="qemu-system-x86_64"), "")
    text = ("name: t\nvariants: [baseline, {name: q, binary: qemu-system-x86_64}]\n"
            "disks: [{path: /tmp/x.img}]\naccel: kvm-nested\n")
    assert parse_config(text).accel == "kvm-nested"     # Debian's QEMU goes into L1
    with pytest.raises(UserError, match=r"variant 'q': accel kvm-nested runs built variants "
                                        r"\(.*\) and Debian's qemu-system-x86_64; "
                                        r"'/opt/q/qemu' is not carried into L1"):
        parse_config(text.replace("binary: qemu-system-x86_64", "binary: /opt/q/qemu"))


def test_watchdog_note_counts_hangs(tmp_path):
    from harness.results import WATCHDOG_COLUMNS
    from harness.report import watchdog_note

    assert "caught no hung run" in watchdog_note(tmp_path)
    (tmp_path / "watchdog.csv").write_text(",".join(WATCHDOG_COLUMNS) + "\n"
                                           "p1,poll,1,ok after retry,a\np2,poll,3,failed,b\n")
    note = watchdog_note(tmp_path)
    assert "caught 4 hung run(s) on 2 point(s) (1 point(s) failed" in note
    assert "functional figures" in note


def test_report_names_kvm_nested_and_never_pools_it():
    from harness import stats
    from harness.report import accel_banner, accel_title

    assert "functional figures" in accel_banner("kvm-nested")
    assert "never pooled" in accel_banner("kvm-nested")
    assert accel_title("kvm-nested") == "KVM nested in TCG (functional)"
    assert "accel" in stats.WORKLOAD_KEYS and "accel" in stats.GROUP_KEYS


def test_an_accel_override_to_kvm_nested_is_checked_like_the_config(tmp_path):
    from harness.nested.host import L1Provider

    config = parse_config("name: t\nvariants: [baseline, {name: q, binary: /opt/q/qemu}]\n"
                          "disks: [{path: /tmp/x.img}]\n")
    run = SimpleNamespace(config=config, accel=accel_named("kvm-nested"))
    with pytest.raises(UserError, match="accel kvm-nested: variant 'q'"):
        L1Provider(run, None, print)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_command_in_l1_closes_ssh_and_interrupts(signum):
    """invoke would forward Ctrl-C to the remote command and wait on; the run must stop."""
    class Conn:
        closed = False

        def run(self, command, **_kw):
            os.kill(os.getpid(), signum)      # arrives while the command runs
            return SimpleNamespace(exited=-1, stdout="", stderr="")

        def close(self):
            self.closed = True

    conn = Conn()
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_interruptible(conn, "l2-wait /tmp/l2 60", 60)
    assert conn.closed and signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------------- disturbed runs (a fake L1)


class FakeL1:
    """What the retry logic asks of an L1: restart it, its heartbeat gaps, whether it answers."""

    def __init__(self, freezes=(), answers=True):
        self.restarts = 0
        self.freezes = freezes if isinstance(freezes, Exception) else list(freezes)
        self.conn = object()
        self.answer = answers

    def restart(self):
        self.restarts += 1
        self.conn = object()

    def freezes_during_l2(self):
        if isinstance(self.freezes, Exception):     # L1 stalls while asked
            stalled, self.freezes = self.freezes, []
            self.conn = None
            raise stalled
        return self.freezes

    def answers(self):
        return self.answer


def _micro(ok: bool, error: str = ""):
    from harness.microguest import MicroResult

    return MicroResult(ok=ok, rw="randwrite", bs=4096, qd=8, n=10, done=10 if ok else 0,
                       wait="poll", errors=0, mismatches=0, verified=0, tsc_hz=1, elapsed_ns=1,
                       halted_ns=0, iops=1.0, lat_mean_ns=1, lat_min_ns=1, lat_max_ns=1,
                       p50_ns=1, p99_ns=1, p999_ns=1, hist=(), error=error)


def _scripted_runs(monkeypatch, outcomes):
    """nested.run_micro_point replaced by one that plays outcomes in turn (raise or return)."""
    calls = []

    def run_micro_point(l1, variant, workload, requests, wait, log_file, **kwargs):
        calls.append(log_file)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(nested.l2, "run_micro_point", run_micro_point)
    return calls


def _watchdog(l1, tmp_path, attempts):
    return nested.run_micro_with_watchdog(l1, VariantSpec(name="poll"),
                                          Workload("randwrite", "4k", 8, 1), 10, "poll",
                                          tmp_path / "p.console.log", attempts)


def test_a_stalled_l1_is_booted_again_and_the_point_rerun(monkeypatch, tmp_path):
    l1 = FakeL1()
    calls = _scripted_runs(monkeypatch, [nested.L1Stalled("L1 stopped answering (x)"),
                                         _micro(True)])
    attempts = nested.Attempts()
    assert _watchdog(l1, tmp_path, attempts).ok
    assert l1.restarts == 1 and attempts.retries == 1
    assert calls[1].name == "p.console.log.retry1"
    assert "L1 stopped answering" in Path(attempts.hangs[0]).read_text()


def test_a_failure_while_l1_froze_is_run_again_and_one_without_is_kept(monkeypatch, tmp_path):
    l1 = FakeL1(freezes=["35.0 26.0"])
    _scripted_runs(monkeypatch, [_micro(False, "completion-timeout"), _micro(True)])
    attempts = nested.Attempts()
    assert _watchdog(l1, tmp_path, attempts).ok and l1.restarts == 0
    assert "35.0 26.0" in Path(attempts.hangs[0]).read_text()
    # the same failure with a heartbeat that never stopped is the variant's own result
    _scripted_runs(monkeypatch, [_micro(False, "completion-timeout")])
    attempts = nested.Attempts()
    result = _watchdog(FakeL1(freezes=[]), tmp_path, attempts)
    assert not result.ok and result.error == "completion-timeout" and attempts.retries == 0


def test_a_point_disturbed_every_time_fails_with_the_count(monkeypatch, tmp_path):
    l1 = FakeL1(freezes=["9.0 6.0"])
    _scripted_runs(monkeypatch, [nested.L1Stalled("gone"), _micro(False, "timeout"),
                                 nested.L1Stalled("gone")])
    with pytest.raises(InfraError, match=r"3 disturbed runs; no result kept"):
        _watchdog(l1, tmp_path, nested.Attempts())
    assert l1.restarts == 2


def test_l1_stalling_while_asked_for_its_freezes_is_booted_again(monkeypatch, tmp_path):
    """The freeze check after a failed result runs in L1 too: a stall there is
    one more disturbed run (a new L1, the point once more), not a dead L1 that
    every later point fails on."""
    l1 = FakeL1(freezes=nested.L1Stalled("L1 stopped answering (tail)"))
    calls = _scripted_runs(monkeypatch, [_micro(False, "completion-timeout"), _micro(True)])
    attempts = nested.Attempts()
    assert _watchdog(l1, tmp_path, attempts).ok
    assert l1.restarts == 1 and l1.conn is not None and attempts.retries == 1
    assert calls[1].name == "p.console.log.retry1"
    assert "L1 stopped answering (tail)" in Path(attempts.hangs[0]).read_text()


HUNG_REGISTERS = """== L2 monitor: info registers
EAX=00000000 EBX=00000006 ECX=00000080 EDX=00000001
EIP=00106970 EFL=%s [-----P-] CPL=0 II=0 A20=1 SMM=0 HLT=%d
"""


def test_the_l0_hang_is_told_by_its_registers():
    assert nested.halted_with_interrupts_off(HUNG_REGISTERS % ("00000006", 1))
    assert not nested.halted_with_interrupts_off(HUNG_REGISTERS % ("00000206", 1))   # IF set
    assert not nested.halted_with_interrupts_off(HUNG_REGISTERS % ("00000006", 0))   # running
    assert not nested.halted_with_interrupts_off("== L2 monitor: info registers: no answer")


def test_the_l0_hang_every_time_keeps_its_type_and_another_does_not(monkeypatch, tmp_path):
    l0_hang = nested.L2HaltedWithInterruptsOff("L2 hung: halted with IF clear")
    _scripted_runs(monkeypatch, [nested.L2Hang("L2 hung"), l0_hang, l0_hang])
    with pytest.raises(nested.L2HaltedWithInterruptsOff, match=r"3 disturbed runs"):
        _watchdog(FakeL1(), tmp_path, nested.Attempts())
    _scripted_runs(monkeypatch, [l0_hang, l0_hang, nested.L2Hang("L2 hung: running")])
    with pytest.raises(InfraError, match=r"3 disturbed runs") as caught:
        _watchdog(FakeL1(), tmp_path, nested.Attempts())
    assert not isinstance(caught.value, nested.L2HaltedWithInterruptsOff)


def test_retry_after_l1_stall_reruns_only_when_l1_does_not_answer(tmp_path):
    log_file = tmp_path / "case.log"

    def failing(exc):
        def run():
            raise exc
        return run

    with pytest.raises(AssertionError):     # a check that failed: never retried, L1 not asked
        nested.retry_after_l1_stall(FakeL1(answers=False), failing(AssertionError("x")),
                                    nested.Attempts(), log_file)
    l1 = FakeL1(answers=True)
    with pytest.raises(OSError):            # L1 answers: the failure is the run's own
        nested.retry_after_l1_stall(l1, failing(OSError("reset")), nested.Attempts(), log_file)
    assert l1.restarts == 0
    l1, attempts, results = FakeL1(answers=False), nested.Attempts(), [OSError("reset"), "done"]

    def flaky():
        outcome = results.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert nested.retry_after_l1_stall(l1, flaky, attempts, log_file) == "done"
    assert l1.restarts == 1 and "OSError: reset" in Path(attempts.hangs[0]).read_text()


# ----------------------------------------------------------------- L1


def _binaries() -> dict[str, Path]:
    found = {}
    for name in VARIANTS:
        binary = cache_dir() / "build" / name / "x86_64-softmmu" / "qemu-system-x86_64"
        if binary.exists():
            found[name] = binary
    return found


@pytest.fixture(scope="module")
def l1(tmp_path_factory):
    """One L1 for the module (all variants and both guests in its image), with two
    disks: /dev/vda for every L2, /dev/vdb for the fio guest's second one."""
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    binaries = _binaries()
    if not binaries:
        pytest.skip(f"no variant built in {cache_dir()}: run `harness build`")
    work = tmp_path_factory.mktemp("kvm-nested")
    disks = image_paths(work / "disk.img", L1_DISKS)
    for path in disks:
        with open(path, "wb") as handle:
            handle.truncate(DISK_MB << 20)
    image = nested.prepare_l1_image(binaries, fio_guest=True)
    machine = nested.L1(image, disks, work / "l1.console.log")
    try:
        seconds = machine.boot()
    except nested.L1Unusable as exc:
        pytest.skip(f"L1 cannot run KVM here: {exc}")
    print(f"L1 booted in {seconds:.1f} s")
    machine.disk = disks[0]             # L1's /dev/vda, every L2's first disk
    machine.work = work
    yield machine
    machine.close()


def _variant(l1, name: str) -> VariantSpec:
    """The variant's spec, on an L1 that answers (a test that found it stalled
    and could not recover leaves the next one a new L1, not a dead one)."""
    if name not in l1.image.builds:
        pytest.skip(f"variant {name} is not built in {cache_dir()}: run `harness build`")
    l1.ensure_up()
    return VariantSpec(name=name)


# ----------------------------------------------------------------- micro-guest


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.parametrize("variant", VARIANTS)
def test_microguest_verify_under_l1_kvm(l1, variant, record_property):
    """poll, MSI-X and INTx completions, each writing then reading back what it wrote.

    The guest waits for its interrupts without HLT (idle=spin): a halted L2
    vCPU hangs now and then in L0's emulated SVM on every variant (README,
    "The L2 hang"; in one CI run 6 of 12 halting runs), which would make this
    check of the interrupt path and the data a draw.  Halting has its own
    test below.  The baseline runs the guest without EVENT_IDX (kick=every):
    with it its runs stop L1 more often (README, "The baseline's EVENT_IDX")."""
    spec = _variant(l1, variant)
    hangs = nested.Attempts()
    kick = BASELINE_KICK if variant == "baseline" else "honour"
    for wait in ("poll", "irq", "intx"):
        log = l1.work / f"micro.{variant}.{wait}.console.log"
        result = nested.run_micro_with_watchdog(l1, spec, Workload("randwrite", "4k", 8, 1),
                                                MICRO_N, wait, log, hangs, verify=True, seed=5,
                                                kick=kick, guest_args="idle=spin")
        where = f"{variant} {wait}: console {log}"
        print(f"{variant} {wait}: {result.iops:.0f} IOPS, irqs {result.raw.get('irqs')}")
        _assert_verified(result, wait, where)
        assert result.raw.get("idle_spin") == 1, where
        if wait != "poll":
            assert result.raw.get("irqs", 0) > 0, f"no interrupt came; {where}"
    record_property("watchdog_hangs", hangs.retries)
    if hangs.retries:
        print(f"{variant}: the watchdog caught {hangs.retries} L2 hang(s): {hangs.hangs}")


def _assert_verified(result, wait: str, where: str) -> None:
    assert result.ok, f"{result.error or result.raw}; {where}"
    assert result.wait == wait and result.done == MICRO_N, where
    assert result.errors == 0 and result.mismatches == 0, where
    assert result.raw.get("verify") == 1 and result.verified == MICRO_N, where
    assert result.raw.get("msix") == (1 if wait == "irq" else 0), where
    assert result.raw.get("unexpected_irqs", 0) == 0, where


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.xfail(strict=False, raises=nested.L2HaltedWithInterruptsOff,
                   reason="L0's emulated SVM leaves a halted L2 vCPU with IF clear now and then "
                   "(README, 'The L2 hang'); any other failure fails the test")
@pytest.mark.parametrize("variant", DATA_PLANE)
@pytest.mark.parametrize("wait", ("irq", "intx"))
def test_interrupt_from_the_data_plane_wakes_a_halted_vcpu_under_l1_kvm(l1, variant, wait,
                                                                        record_property):
    """The data-plane thread in L1 injects the completion while L2's vCPU is
    halted in L1's KVM (sti; hlt): the interrupt must wake it, every time.

    One retry after a hang of the known kind; two in a row are reported as
    that hang (the xfail above names it), every other failure as a failure."""
    spec = _variant(l1, variant)
    hangs = nested.Attempts()
    log = l1.work / f"halt.{variant}.{wait}.console.log"
    result = nested.run_micro_with_watchdog(l1, spec, Workload("randwrite", "4k", 8, 1), MICRO_N,
                                            wait, log, hangs, retries=1, verify=True, seed=7,
                                            watchdog_s=HALT_WATCHDOG_S)
    record_property("watchdog_hangs", hangs.retries)
    where = f"{variant} {wait}: console {log}"
    print(f"{variant} {wait} halting: {result.iops:.0f} IOPS, irqs {result.raw.get('irqs')}, "
          f"halted {result.halted_ns / 1e6:.0f} ms")
    _assert_verified(result, wait, where)
    assert result.raw.get("idle_spin") == 0, where
    assert result.halted_ns > 0, f"the vCPU never halted; {where}"
    assert result.raw.get("irqs", 0) > 0, f"halted, yet no interrupt came; {where}"


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.parametrize("variant", VARIANTS)
def test_msix_mask_and_retarget_under_l1_kvm(l1, variant, record_property):
    """The series-v2 MSI-X race where it lives: KVM's irqchip routes, the
    interrupt injected from the data-plane thread.  The micro-guest masks,
    unmasks and re-targets the queue vector while requests run.  It waits
    without HLT (idle=spin): the churn mode waits often, and each HLT risks
    the L0 hang of the README; halting is tested by the verify test."""
    spec = _variant(l1, variant)
    hangs = nested.Attempts()
    log = l1.work / f"churn.{variant}.console.log"
    result = nested.run_micro_with_watchdog(l1, spec, Workload("randread", "4k", 4, 1), CHURN_N,
                                            "irq", log, hangs, watchdog_s=CHURN_WATCHDOG_S,
                                            guest_args=f"mode=msix-churn churn=4 idle=spin "
                                                       f"timeout_ms={CHURN_TIMEOUT_MS}")
    churn = result.raw.get("churn", {})
    where = f"{variant}: console {log}"
    print(f"{variant}: {result.done} done, churn {churn}")
    record_property("watchdog_hangs", hangs.retries)
    assert result.raw.get("mode") == "msix-churn" and result.raw.get("idle_spin") == 1, \
        f"{result.raw}; {where}"
    assert result.done == CHURN_N and result.errors == 0, where
    assert not churn_faults(result.raw), f"{churn_faults(result.raw)}: {churn}; {where}"
    assert result.ok, f"{result.raw}; {where}"


# The parsing of a malformed request is the same code under either accelerator, and every
# case runs on both data-plane variants under TCG (tests/test_dataplane.py).  Under KVM what
# differs is how the thread is woken (ioeventfd), maps guest RAM (KVM's slots) and reports
# a broken ring (an interrupt by the irqchip route): one case each of an address outside
# RAM across pages, an address that wraps, a loop, a ring index the guest jumped, a chain
# longer than the ring.  All sixteen took 280 s of L2 boots here, this set 90.
L1_HOSTILE_CASES = ("addr-outside-ram-8k", "addr-wrap", "desc-loop", "avail-idx-jump",
                    "too-many-descs")


@pytest.mark.e2e
@pytest.mark.timeout(900)
@pytest.mark.parametrize("variant", DATA_PLANE)
def test_hostile_cases_under_l1_kvm(l1, variant, record_property):
    """The data-plane variants survive malformed requests under KVM (L1_HOSTILE_CASES).

    Not on the baseline: the 2012 block layer exits on most of them, its
    own behaviour and no claim of ours (one case of it is recorded under
    TCG, tests/test_microguest.py)."""
    spec = _variant(l1, variant)
    outcomes = {}
    stalls = nested.Attempts()
    assert set(L1_HOSTILE_CASES) <= set(HOSTILE_CASES)
    for case in L1_HOSTILE_CASES:
        log = l1.work / f"hostile.{variant}.{case}.console.log"
        result = nested.retry_after_l1_stall(
            l1, lambda: nested.run_hostile_case(l1, spec, case, l1.disk, log), stalls, log)
        outcomes[case] = result
        assert result.accel == "kvm-nested"
    survived = sum(r.qemu_survived for r in outcomes.values())
    record_property("survived", survived)
    record_property("l1_stalls", stalls.retries)
    print(f"{variant}: survived {survived} of {len(L1_HOSTILE_CASES)}: "
          + ", ".join(f"{c}={r.observed}" for c, r in outcomes.items()))
    dead = {c: f"{r.qemu_state} {r.qemu_message[-120:]}" for c, r in outcomes.items()
            if not r.qemu_survived}
    assert not dead, f"{variant} did not survive: {dead}"
    for case, result in outcomes.items():
        assert result.guest is not None, f"{case}: the guest did not report"


# ----------------------------------------------------------------- fio guest

VERIFY_JOBS = [(bs, qd) for bs in ("4k", "64k") for qd in (1, 32)]
VERIFY_MB = 8
SECOND_DISK_JOB = "randwrite-vdb-4k-qd8"
FS_BLOCKS_1K = 32768                 # ext2 on the first 32 MiB
RAW_OFFSET_MB, RAW_MB = 40, 8        # raw sectors past it
FILES = {"f-small": (4096, 3), "f-large": (65536, 32), "f-odd": (512, 37)}
BUSY_OFFSET_MB = 64                  # where fio keeps the disk busy during reset and quit
L2_BOOT_S = 480                      # a Linux boot in L2 (20-30 s on a quiet host)


def _sh(conn, command: str, timeout: float = 300):
    result = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
    assert result.exited == 0, f"{command}: exit {result.exited}: {result.stderr[-600:]}"
    return result.stdout


def _verify_command() -> str:
    """The VERIFY_JOBS on /dev/vda one after another, and SECOND_DISK_JOB on /dev/vdb:
    not stonewalled, it starts with the last of them, so both disks (each with its own
    data-plane thread in L1) are written and verified at once."""
    argv = ["fio", "--filename=/dev/vda", "--direct=1", "--ioengine=libaio", "--verify=crc32c",
            "--do_verify=1", "--verify_fatal=1", "--randrepeat=0", f"--size={VERIFY_MB}M",
            "--output-format=json"]
    for i, (bs, qd) in enumerate(VERIFY_JOBS):
        argv += [f"--name=randwrite-{bs}-qd{qd}", "--stonewall", "--rw=randwrite",
                 f"--bs={bs}", f"--iodepth={qd}", f"--offset={i * VERIFY_MB}M"]
    argv += [f"--name={SECOND_DISK_JOB}", "--filename=/dev/vdb", "--rw=randwrite", "--bs=4k",
             "--iodepth=8"]
    return shlex.join(argv)


def _busy_fio(conn) -> None:
    """fio in the background past the file system, long enough to be cut off."""
    conn.run(f"nohup fio --name=busy --filename=/dev/vda --direct=1 --ioengine=libaio "
             f"--rw=randrw --bs=4k --iodepth=16 --offset={BUSY_OFFSET_MB}M --size=16M "
             f"--time_based --runtime=120 >/tmp/busy.log 2>&1 </dev/null &",
             hide=True, warn=True, in_stream=False, timeout=30)
    time.sleep(3)
    out = conn.run("cat /proc/diskstats", hide=True, warn=True, in_stream=False,
                   timeout=30).stdout
    ios = [line.split() for line in out.splitlines() if " vda " in line]
    assert ios and int(ios[0][3]) + int(ios[0][7]) > 0, "no I/O on /dev/vda in flight"


def _checksums(text: str) -> dict[str, str]:
    return {p[1]: p[0] for p in (ln.split() for ln in text.splitlines())
            if len(p) == 2 and len(p[0]) == 64}


def _ready_count(l1) -> int:
    from harness.guest import READY_MARKER
    return l1.l2_file("console.log").count(READY_MARKER)


def _wait_ready(l1, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _ready_count(l1) < count:
        assert time.monotonic() < deadline, f"L2 did not boot again within {timeout:.0f} s"
        assert l1.l2_running(), f"the L2 QEMU exited: {l1.l2_file('stderr')[-400:]}"
        time.sleep(1)


@pytest.mark.e2e
@pytest.mark.timeout(900)
@pytest.mark.xfail(strict=False, raises=(pytest.fail.Exception, nested.L1Stalled),
                   reason="an L1 stall during the L2 Linux boot (480 s budget) can outlast the "
                   "test's 900 s (pytest-timeout fails it) or the stall budget (L1Stalled); "
                   "passed 3/3 in one session-5 run, 0/2 in the next")
@pytest.mark.parametrize("variant", ("dataplane",))
def test_fio_guest_under_l1_kvm(l1, variant, record_property):
    """verify on two disks, files across a system_reset during I/O, I/O after it, quit
    during I/O (the files and the I/O on the first disk).

    On the series' variant only: each L2 Linux boots twice, 3-6 min a variant
    under L0's TCG and up to 15 with an L1 stall (20 min for three in CI).
    poll differs from dataplane in how its thread waits, which the micro-guest
    tests above cover under KVM; the same Linux checks run on baseline and
    dataplane under TCG (tests/test_dataplane.py).

    Run again from the start on a new L1 if L1 stops answering on the way."""
    spec = _variant(l1, variant)
    stalls = nested.Attempts()
    nested.retry_after_l1_stall(l1, lambda: _fio_guest_checks(l1, spec, record_property), stalls,
                                l1.work / f"fio.{variant}.log")
    record_property("l1_stalls", stalls.retries)


def _fio_guest_checks(l1, spec: VariantSpec, record_property) -> None:
    from harness.fio_jobs import open_connection, run_fio
    from harness.results import split_fio_output

    variant = spec.name
    started = time.monotonic()
    conn = nested.boot_l2_fio(l1, spec, timeout=L2_BOOT_S, disks=L1_DISKS)
    record_property("l2_boot_s", round(time.monotonic() - started, 1))
    try:
        # 1. fio write + crc32c verify at 4k/64k, QD1/32 on /dev/vda, and on /dev/vdb
        out = _sh(conn, _verify_command(), timeout=600)
        _, data = split_fio_output(out)
        jobs = {job["jobname"]: job for job in data["jobs"]}
        assert set(jobs) == {f"randwrite-{bs}-qd{qd}" for bs, qd in VERIFY_JOBS} | \
            {SECOND_DISK_JOB}
        for name, job in jobs.items():
            assert job["error"] == 0 and job.get("total_err", 0) == 0, name
            assert job["write"]["io_bytes"] == VERIFY_MB << 20, name
            assert job["read"]["io_bytes"] == VERIFY_MB << 20, f"{name}: not all verified"
        # 2. files on ext2 and raw sectors, synced
        _sh(conn, f"mke2fs -q -F /dev/vda {FS_BLOCKS_1K} && mkdir -p /mnt && "
                  "mount -t ext2 /dev/vda /mnt")
        for name, (bs, count) in FILES.items():
            _sh(conn, f"dd if=/dev/urandom of=/mnt/{name} bs={bs} count={count} 2>/dev/null")
        _sh(conn, f"dd if=/dev/urandom of=/tmp/raw bs=1M count={RAW_MB} 2>/dev/null && "
                  f"dd if=/tmp/raw of=/dev/vda bs=1M seek={RAW_OFFSET_MB} conv=fsync 2>/dev/null")
        before = _checksums(_sh(conn, "cd /mnt && sha256sum " + " ".join(FILES)
                                + " /tmp/raw && sync"))
        raw_before = before.pop("/tmp/raw")
        # 3. system_reset while fio keeps the disk busy
        _busy_fio(conn)
        l1.l2_qmp("system_reset")
    finally:
        conn.close()
    _wait_ready(l1, 2, L2_BOOT_S)
    conn = open_connection(l1.ports.l2_ssh, l1.login, L2_BOOT_S)
    try:
        _sh(conn, "mkdir -p /mnt && mount -t ext2 /dev/vda /mnt")
        after = _checksums(_sh(conn, "cd /mnt && sha256sum " + " ".join(FILES)))
        sizes = _sh(conn, "cd /mnt && wc -c " + " ".join(FILES))
        raw_after = _sh(conn, f"dd if=/dev/vda bs=1M skip={RAW_OFFSET_MB} count={RAW_MB} "
                              "2>/dev/null | sha256sum").split()[0]
        _sh(conn, "umount /mnt")
        assert after == before, "files changed across the reset"
        for name, (bs, count) in FILES.items():
            assert f"{bs * count} {name}" in sizes, sizes
        assert raw_after == raw_before, "raw sectors differ after the reset"
        # L0's image file holds them too (before the fio below writes all over the disk)
        with open(l1.disk, "rb") as handle:
            handle.seek(RAW_OFFSET_MB << 20)
            host = hashlib.sha256(handle.read(RAW_MB << 20)).hexdigest()
        assert host == raw_before, "the image file does not hold what L2 wrote and synced"
        run = run_fio(conn, Workload("randrw", "4k", 8, 1), runtime_s=2, ramp_s=0, timeout=120)
        job = run.data["jobs"][0]
        assert job["error"] == 0 and job["read"]["iops"] > 0 and job["write"]["iops"] > 0, \
            "no I/O after the reset"
        # 4. QMP quit while fio keeps the disk busy: the L2 QEMU is gone within 5 s
        _busy_fio(conn)
        asked = time.monotonic()
        try:
            l1.l2_qmp("quit", timeout=5)
        except Exception:  # noqa: BLE001 - QEMU may hang up while answering
            pass
        state, status = l1.wait_l2(10)
        gone_s = time.monotonic() - asked
    finally:
        conn.close()
    record_property("quit_s", round(gone_s, 2))
    print(f"{variant}: L2 QEMU gone {gone_s:.1f} s after quit (exit status {status})")
    assert state == "exited", "the L2 QEMU did not exit after QMP quit"
    assert gone_s < 5.0, f"quit took {gone_s:.1f} s as seen from L0 (5 s allowed)"


def test_the_l1_scripts_are_files_with_the_harness_values_in_place():
    from harness.nested import scripts

    for name in ("l1-init", "l2-start", "l2-wait", "l1-diagnose"):
        text = scripts.script(name)
        assert "@" not in text.replace('"$@"', ""), f"{name}: a value left out: {text}"
    assert f"echo \"{scripts.L1_READY} $(cut" in scripts.L1_INIT
    assert f"mkdir -p {scripts.L2_DIR}" in scripts.L1_INIT
    assert f"wc -l < {scripts.L1_FREEZES}" in scripts.L2_START
    assert scripts.L1_INIT.startswith("#!/bin/sh\n# /init of the harness's L1")
