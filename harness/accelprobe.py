"""Which accelerator `auto` means here: decided by what works, not by whether /dev/kvm exists.

Some hosts expose a /dev/kvm that cannot run Linux: a nested KVM (e.g. PVM)
that executes firmware and bare-metal code but hangs an ordinary Linux kernel
before its first console line.  So "auto" boots a guest under KVM with a short
deadline and uses KVM only if the guest gets to its ready line.  The probe
guest is the cheapest one that stands for the run: the micro-guest (seconds,
no packages) when the run boots only micro-guests, else the run's own Linux
guest, already prepared for the run — a micro-guest that runs says nothing
about Linux on such a host.  The verdict is cached per binary, probe guest and
day, because a failing probe costs the whole deadline; but only KVM's own
answer (the guest ran, hung, or QEMU refused it), never a host lost on the
way (HostLost is raised), a QEMU killed by a signal or one whose QMP did not
answer: those are the moment's, and the next run probes again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .accel import KVM, KVM_DEVICE, TCG, Accel, accel_named, kvm_device_problem, l0_qemu
from .errors import HostLost, InfraError, UserError
from .guest import GuestAssets, GuestImage
from .microguest.cmdline import microguest_spec
from .microguest.elf import build_microguest
from .microguest.output import RESULT_PREFIX
from .paths import cache_dir
from .util import Say, quiet
from .hosts.executor import LOCAL, Executor
from .vm import VM, QemuExited, VMSpec, linux_spec

PROBE_TIMEOUT_S = 25.0
MICRO_PROBE_CMDLINE = "n=16 wait=irq timeout_ms=2000"


@dataclass(frozen=True)
class Probe:
    """A guest to boot under KVM, and the console text that proves it ran."""

    what: str  # "the micro-guest", "the Linux guest"
    ready: str
    identity: tuple[str, ...]  # what the cached verdict depends on besides the binary

    def spec(self, binary: str, legacy: bool, tmp: Path) -> VMSpec:
        raise NotImplementedError


@dataclass(frozen=True)
class MicroProbe(Probe):
    kernel: Path = Path()

    def spec(self, binary: str, legacy: bool, tmp: Path) -> VMSpec:
        return microguest_spec(binary, KVM, None, None, MICRO_PROBE_CMDLINE, tmp / "console.log",
                               kernel=self.kernel, legacy=legacy)


@dataclass(frozen=True)
class LinuxProbe(Probe):
    guest: GuestImage | None = None

    def spec(self, binary: str, legacy: bool, tmp: Path) -> VMSpec:
        return linux_spec(binary, KVM, self.guest, console_log=tmp / "console.log",
                          legacy=legacy, memory_mb=max(512, self.guest.min_memory_mb))


def micro_probe(kernel: Path | None = None) -> MicroProbe:
    """The micro-guest as the probe (kernel: its ELF where the probe runs; built here if None)."""
    kernel = kernel or build_microguest()
    return MicroProbe("the micro-guest", RESULT_PREFIX, (str(kernel), MICRO_PROBE_CMDLINE),
                      kernel=kernel)


def linux_probe(guest: GuestImage) -> LinuxProbe:
    return LinuxProbe("the Linux guest", guest.marker or "Linux version",
                      (str(guest.kernel), str(guest.initrd), str(guest.boot_image), guest.append),
                      guest=guest)


def probe_for(assets: GuestAssets) -> Probe:
    """The guest `accel: auto` boots under KVM: the run's Linux guest if it has one."""
    if assets.images:
        return linux_probe(next(iter(assets.images.values())))
    return micro_probe(assets.kernel)


def choose_accel(requested: str, binary: str, legacy: bool, probe: Probe | None = None,
                 say: Say = quiet) -> tuple[Accel, str | None]:
    """(the Accel to use, a one-line notice or None) for what the config asks.

    probe: the guest `auto` boots under KVM (default: the micro-guest).
    """
    if requested != "auto":
        accel = accel_named(requested)
        problem = kvm_device_problem() if accel.needs_kvm_device else None
        if problem:
            raise UserError(f"accel {requested}: {problem}; use accel auto or tcg")
        if accel.inner:  # L1 is booted by Debian's QEMU (harness/nested/)
            l0_qemu()
        return accel, None
    problem = kvm_device_problem()
    if problem:
        return TCG, f"KVM is not usable ({problem}); using TCG"
    probe = probe or micro_probe()
    works, detail = probe_kvm(binary, legacy, probe, say)
    if works:
        return KVM, None
    return TCG, (f"KVM at {KVM_DEVICE} cannot run {probe.what} here (probe: {detail}); "
                 "using TCG")


def probe_kvm(binary: str, legacy: bool, probe: Probe, say: Say = quiet,
              host: Executor = LOCAL) -> tuple[bool, str]:
    """Boot the probe guest under KVM (verdict cached for the day): (works, what happened).

    host: where to boot it (a remote host probes there; its verdict is cached here,
    keyed by the host's label and the binary's path there).
    """
    cache = _verdict_path(binary, probe, host)
    try:
        verdict = json.loads(cache.read_text())
        return verdict["works"], f"{verdict['detail']}; verdict cached today"
    except (OSError, ValueError, KeyError):
        pass
    say(f"probing KVM: booting {probe.what} with {Path(binary).name} "
        f"(up to {PROBE_TIMEOUT_S:.0f} s)")
    verdict = _boot(binary, legacy, probe, host)
    if verdict.final:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"works": verdict.works, "detail": verdict.detail,
                                     "binary": binary, "probe": probe.what}) + "\n")
    return verdict.works, verdict.detail


@dataclass(frozen=True)
class Verdict:
    """What one probe boot showed; final when it is KVM's own answer (cached for the day)."""

    works: bool
    detail: str
    final: bool = True


def _boot(binary: str, legacy: bool, probe: Probe, host: Executor = LOCAL) -> Verdict:
    """Boot the probe guest under KVM; HostLost if the host went away meanwhile."""
    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        there = Path(tmp) if host.is_local else Path(host.path(Path(tmp), Path(tmp).parent))
        spec = probe.spec(binary, legacy, there)
        vm = VM(spec, host=host)
        launched = False
        try:
            vm.launch()
            launched = True
            vm.wait_until(lambda text: probe.ready in text, PROBE_TIMEOUT_S,
                          f"ready line from {probe.what}")
            return Verdict(True, f"{probe.what} ready in "
                                 f"{time.monotonic() - vm.started_at:.1f} s under KVM")
        except HostLost:
            raise
        except QemuExited as exc:
            return Verdict(False, f"QEMU could not run it with KVM: {exc}",
                           final=not _killed(exc.status))
        except InfraError as exc:
            status = vm.returncode
            if status is not None:  # it exited while a QMP command ran
                return Verdict(False, f"QEMU could not run it with KVM: {exc}",
                               final=not _killed(status))
            if not launched:  # QEMU runs but its QMP did not answer: says nothing about KVM
                return Verdict(False, f"QEMU did not start ({exc}); not cached", final=False)
            printed = bool(vm.console().strip())
            return Verdict(False, f"no ready line within {PROBE_TIMEOUT_S:.0f} s"
                           f"{' (it printed output, then stalled)' if printed else ', not one console line'}")
        finally:
            vm.kill()


def _killed(status: int | None) -> bool:
    """An exit status that a signal caused (-N here, 128+N from a remote shell): the
    OOM killer or an operator, not QEMU giving up on KVM."""
    return status is None or status < 0 or status > 128


def _verdict_path(binary: str, probe: Probe, host: Executor = LOCAL) -> Path:
    if host.is_local:
        st = os.stat(binary)
        key = json.dumps([os.path.realpath(binary), st.st_size, st.st_mtime_ns, *probe.identity])
    else:  # shipped binaries are content-addressed: their path there names their content
        key = json.dumps([host.label, binary, *probe.identity])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    day = datetime.date.today().isoformat()
    return cache_dir() / "accel" / f"kvm-probe-{digest}-{day}.json"
