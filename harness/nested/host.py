"""accel kvm-nested as a host provider: an L1 booted here is then a remote KVM host.

The provider boots L1 from an image with what any remote host needs (fio,
setsid, python3, ldd, an SFTP server: hosttools.py) and hands the run to
fleet.prepare.prepare_host as an SSH host: the variants and guests are shipped to
it and the same runners run the points there with `-machine accel=kvm`,
exactly as on a user's KVM machine.  Only these stay nested-specific:

* the test images are L0 files that L1 sees as block devices (/dev/vda, …:
  every image of every disk of the config, in order), named in L1 as the
  harness names images (L1_DISKS/<disk>, <disk>.1, … : devices.image_paths)
  by symbolic links: L1's own memory is a tmpfs, which has no O_DIRECT;
* L1's host key is the one of the image booted here, reached on a loopback
  port forwarded by our own QEMU: taken on connection, recorded nowhere;
* an L1 that no longer runs `true` in L1_ANSWER_S (machine.L1Stalled: its
  timer and network stall now and then under L0's emulated SVM) is a lost
  host; revive() boots a new L1 and prepares it again, and the scheduler
  runs the unfinished points of the unit once more;
* the rows say accel `kvm-nested` (KVM_IN_L1) and host `l1`: never pooled
  with KVM on real hardware.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from ..accel import KVM_IN_L1
from ..config import check_kvm_nested
from ..devices import guest_device, image_paths, most_devices
from ..errors import UserError
from ..guest import GuestAssets
from ..fleet.prepare import prepare_host
from ..hosts.spec import HostSpec
from ..hosts.ssh import SSHHost
from ..runstate import Run
from ..util import Say

from .image import prepare_l1_image
from .machine import L1

L1_LABEL = "l1"
L1_USER = "root"
L1_WORKDIR = "/root/harness"  # in L1's memory: a new L1 is shipped to again
#: how often a run boots a new L1 after one stopped answering, before its points fail
MAX_REVIVALS = 3


L1_DISKS = "/root/disks"  # in L1: a link per image to the block device L1 sees it as


def l1_images(run: Run) -> list[tuple[Path, str, str]]:
    """Every image L1 gets, in the order of its virtio disks: (the file here, its block
    device in L1, the name the harness gives it in L1)."""
    count = most_devices(run.config)
    found = []
    for disk in run.config.disks:
        there = image_paths(Path(L1_DISKS) / disk.name, count)
        for here, name in zip(image_paths(run.disks[disk.name], count), there):
            found.append((here, guest_device("/dev/vda", len(found)), str(name)))
    return found


def l1_disk_paths(run: Run) -> dict[str, str]:
    """Where each of the config's disks is in L1 (device 0's name; the others follow it)."""
    return {disk.name: f"{L1_DISKS}/{disk.name}" for disk in run.config.disks}


def link_images(machine: L1, images: list[tuple[Path, str, str]]) -> None:
    machine.sh(f"mkdir -p {L1_DISKS}; "
               + "; ".join(f"ln -sf {device} {name}" for _here, device, name in images))


class L1SSHHost(SSHHost):
    """The SSH host of a booted L1: a stalled L1 counts as a lost connection."""

    def __init__(self, spec: HostSpec, machine: L1, say: Say):
        super().__init__(spec, say, own_machine=True)
        self.machine = machine

    def alive(self) -> bool:
        return super().alive() and self.machine.answers()

    def close(self) -> None:
        super().close()
        self.machine.close()


class L1Provider:
    """Boots L1 for a run (see the module docstring); `host()` gives the prepared Run there."""

    def __init__(self, run: Run, assets: GuestAssets, say: Say):
        try:  # the config checks it too; --accel kvm-nested is checked here
            check_kvm_nested(run.config.variants, run.config.guests)
        except ValueError as exc:
            raise UserError(f"accel kvm-nested: {exc}") from None
        self.run = run
        self.assets = assets
        self.say = say
        builds = {v.build: run.binaries[v.name] for v in run.config.variants if v.build}
        self.image = prepare_l1_image(builds, say=say, for_host=True,
                                      system_qemu=any(not v.build for v in run.config.variants))
        self.revivals = 0
        self._lock = threading.Lock()

    def host(self) -> tuple[Run, GuestAssets]:
        """A new L1, booted, checked, shipped to and prepared: the run as it runs there."""
        images = l1_images(self.run)
        machine = L1(self.image, [here for here, _device, _name in images],
                     self.run.log_path(f"l1.{self.revivals}.console.log"),
                     boot_timeout=self.run.config.timeouts.boot_s)
        self.say(f"kvm-nested: booting L1 ({self.image.description})")
        machine.boot()
        try:
            link_images(machine, images)
            self.say(f"kvm-nested: L1 answers SSH after {machine.boot_seconds:.0f} s")
            spec = HostSpec(host="127.0.0.1", port=machine.ports.ssh, user=L1_USER,
                            identity=Path(machine.login.ssh_key), workdir=L1_WORKDIR,
                            accel="kvm", name=L1_LABEL)
            there, assets = prepare_host(
                self.run, spec, self.assets.images, self.assets.kernel, "kvm", self._lock,
                self.say, disk_paths=l1_disk_paths(self.run),
                open_host=lambda each, say: L1SSHHost(each, machine, say))
        except BaseException:
            machine.close()
            raise
        self.run.boot_seconds[f"l1.{self.revivals}"] = round(machine.boot_seconds, 2)
        return replace(there, accel=KVM_IN_L1), assets

    def revive(self) -> tuple[Run, GuestAssets] | None:
        """After L1 stopped answering: a new one, up to MAX_REVIVALS times a run."""
        if self.revivals >= MAX_REVIVALS:
            return None
        self.revivals += 1
        self.say(f"kvm-nested: L1 stopped answering; booting a new L1 "
                 f"({self.revivals} of at most {MAX_REVIVALS})")
        return self.host()
