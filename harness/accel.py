"""KVM or TCG: decided by what works, not by whether /dev/kvm exists.

Some hosts expose a /dev/kvm that cannot run Linux: a nested KVM (e.g. PVM)
that executes firmware slowly but hangs an ordinary Linux kernel.  So "auto"
boots the fio guest itself under KVM with a short deadline; only if it reaches
its ready marker is KVM used.  A working KVM gets there in a second or two.
The verdict is cached per binary, guest and day, because a failing probe costs
the whole deadline.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .config import VariantSpec
from .errors import HarnessError, UserError
from .guest import GuestImage, prepare_fio_guest
from .paths import cache_dir

PROBE_TIMEOUT_S = 25.0
KVM_DEVICE = "/dev/kvm"


def choose_accel(requested: str, binary: str, guest: GuestImage | None = None,
                 progress=None) -> tuple[str, str | None]:
    """("kvm" | "tcg", a one-line notice or None) for the requested accelerator."""
    if requested == "tcg":
        return "tcg", None
    problem = kvm_device_problem()
    if requested == "kvm":
        if problem:
            raise UserError(f"accel kvm: {problem}; use accel auto or tcg")
        return "kvm", None
    if requested != "auto":
        raise UserError(f"accel {requested!r}: choose auto, kvm or tcg")
    if problem:
        return "tcg", f"KVM is not usable ({problem}); using TCG"
    works, detail = probe_kvm(binary, guest, progress)
    if works:
        return "kvm", None
    return "tcg", f"KVM at {KVM_DEVICE} cannot run a Linux guest here (probe: {detail}); using TCG"


def kvm_device_problem() -> str | None:
    """Why /dev/kvm cannot be opened, or None."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{KVM_DEVICE}: {exc.strerror}"
    os.close(fd)
    return None


def probe_kvm(binary: str, guest: GuestImage | None = None,
              progress=None) -> tuple[bool, str]:
    """Boot the fio guest under KVM (cached verdict): (works, what happened)."""
    guest = guest or prepare_fio_guest(progress)
    cache = _verdict_path(binary, guest)
    try:
        verdict = json.loads(cache.read_text())
        return verdict["works"], f"{verdict['detail']}; verdict cached today"
    except (OSError, ValueError, KeyError):
        pass
    if progress:
        progress(f"probing KVM: booting the guest with {Path(binary).name} "
                 f"(up to {PROBE_TIMEOUT_S:.0f} s)")
    works, detail = _boot_probe(binary, guest)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"works": works, "detail": detail, "binary": binary}) + "\n")
    return works, detail


def _boot_probe(binary: str, guest: GuestImage) -> tuple[bool, str]:
    from .vm import VM, VMSpec, free_port, is_legacy_binary

    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        spec = VMSpec(binary=binary, accel="kvm", memory_mb=512, vcpus=1, guest=guest,
                      disk_path=None, variant=VariantSpec(name="probe", binary=binary),
                      ssh_port=free_port(), qmp_socket=Path(tmp) / "qmp.sock",
                      console_log=Path(tmp) / "console.log", legacy=is_legacy_binary(binary))
        vm = VM(spec)
        try:
            vm.launch()
            seconds = vm.wait_for_marker(guest.marker or "Linux version", PROBE_TIMEOUT_S)
            return True, f"guest ready in {seconds:.1f} s under KVM"
        except HarnessError as exc:
            saw_kernel = _saw_kernel(spec.console_log)
            if "exited early" in str(exc):
                return False, f"QEMU could not start with KVM: {str(exc).split(';')[-1].strip()}"
            return False, (f"no guest ready marker within {PROBE_TIMEOUT_S:.0f} s"
                           f"{' (the kernel printed output, then stalled)' if saw_kernel else ', not one kernel console line'}")
        finally:
            vm.kill()


def _saw_kernel(console_log: Path) -> bool:
    try:
        return "Linux version" in console_log.read_text(errors="replace")
    except OSError:
        return False


def _verdict_path(binary: str, guest: GuestImage) -> Path:
    st = os.stat(binary)
    key = json.dumps([os.path.realpath(binary), st.st_size, st.st_mtime_ns,
                      str(guest.kernel), str(guest.initrd), guest.append])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    day = datetime.date.today().isoformat()
    return cache_dir() / "accel" / f"kvm-probe-{digest}-{day}.json"
