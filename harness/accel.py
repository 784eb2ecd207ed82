"""Accelerators as data: what `-machine accel=` gets and what a run records.

The VM builder (vm.py) consumes an Accel; it never compares accelerator names.
Adding one means adding an Accel here and to config.AccelName, plus whatever
it needs from the VM builder (a `cpu` model) as a field of Accel.  kvm-nested
is one: its machine accel and cpu are the L1's (TCG with emulated SVM), and
`inner` says the point itself runs in an L2 under KVM inside that L1.
Which accelerator `auto` picks is decided in accelprobe.py.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import get_args

from .config import AccelName
from .errors import UserError

KVM_DEVICE = "/dev/kvm"


@dataclass(frozen=True)
class Accel:
    name: str  # config.AccelName: in result rows, manifests and log names
    machine_accel: str  # the value of -machine accel=
    needs_kvm_device: bool  # /dev/kvm must open
    cpu: str | None = None  # -cpu model, None: QEMU's default
    #: the point runs one level down: in an L2 under this accel, inside an L1 Linux
    #: that this Accel's machine_accel and cpu boot (harness/nested/); None: directly
    inner: str | None = None

    def __str__(self) -> str:
        return self.name


TCG = Accel("tcg", "tcg", needs_kvm_device=False)
KVM = Accel("kvm", "kvm", needs_kvm_device=True)
#: KVM inside an L1 Linux under TCG with emulated AMD SVM (nested paging).
KVM_NESTED = Accel("kvm-nested", "tcg", needs_kvm_device=False, cpu="EPYC,+svm", inner="kvm")
ACCELS: dict[str, Accel] = {accel.name: accel for accel in (KVM, TCG, KVM_NESTED)}
#: What the points of kvm-nested run with in L1 (nested/host.py): KVM, named so that
#: their rows are never pooled with KVM on hardware
KVM_IN_L1 = Accel(KVM_NESTED.name, "kvm", needs_kvm_device=True)
assert set(ACCELS) == set(get_args(AccelName)), "config.AccelName and ACCELS disagree"


def accel_named(name: str) -> Accel:
    """The Accel of a name from config.AccelName; a UserError names the choices."""
    try:
        return ACCELS[name]
    except KeyError:
        raise UserError(f"accel {name!r}: choose one of {', '.join(ACCELS)}") from None


def l0_qemu() -> str:
    """Debian's qemu-system-x86_64, which runs kvm-nested's L1 under TCG (harness/nested/)."""
    found = shutil.which("qemu-system-x86_64")
    if not found:
        raise UserError("accel kvm-nested boots L1 with Debian's QEMU: install the Debian "
                        "package qemu-system-x86 (apt-get install qemu-system-x86)")
    return found


def kvm_device_problem() -> str | None:
    """Why /dev/kvm cannot be opened, or None."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{KVM_DEVICE}: {exc.strerror}"
    os.close(fd)
    return None
