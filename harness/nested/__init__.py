"""accel kvm-nested: the variants under KVM, inside an L1 Linux that runs under TCG.

This machine's /dev/kvm cannot run Linux, so the data plane's KVM path
(ioeventfd kicks, completion interrupts by ioctl on the in-kernel irqchip's
MSI-X routes, from a thread without the global mutex) is run one level down:
Debian's QEMU (L0, TCG, `-cpu EPYC,+svm`: emulated AMD SVM with nested paging)
boots an L1 Linux whose kvm-amd gives it a working /dev/kvm; inside L1 the
2012 variant runs the point's guest (L2) with `-machine accel=kvm`.

Three parts, a module each (and the shell that runs in L1 as files, scripts.py):

* the L1 image (image.py, prepare_l1_image): the fio guest's initramfs (Debian cloud
  kernel, busybox, dropbear, the harness's SSH key) with a second cpio archive
  appended that carries kvm/kvm-amd/irqbypass/brd, the L1 /init, the variants'
  binaries with their libraries (ldd) and pc-bios/, the micro-guest ELF and,
  when asked, the fio guest's kernel + initramfs for L2.  Cached by a hash of
  everything that goes in.
* L1 (machine.py, class L1): booted with Debian's qemu-system-x86_64 under TCG; the test
  images are L1's /dev/vda, /dev/vdb, … (virtio disks from L0: L1's tmpfs has no O_DIRECT).
  L0's user network forwards three ports: SSH into L1, SSH into L2 (L1's port
  2222, which the 2012 QEMU's own user network forwards to L2's port 22) and
  L2's QMP (a TCP monitor in L1).
* running L2 (l2.py: l2_* and run_micro_point / run_hostile_case, the watchdog): commands over SSH
  into L1 start the 2012 QEMU, wait for it there (one round trip, no polling
  across the two network hops) and read back its serial console file.

Why SSH and not the serial console or a 9p share for the way back: the same
channel carries the commands, L2's console and exit status, and L1's view of
a hung L2 (task states, kvm debugfs); the fio guest is then reached over SSH
exactly as under TCG or KVM, with fio_jobs.py unchanged, and L2's QMP is driven
from L0 just as for a local QEMU.  (Debian's cloud kernel has no 9p.)

Results are functional, not timing: every L2 instruction that exits to L1's
KVM is emulated by L0's TCG, so IOPS here say nothing about KVM speed.
"""

from __future__ import annotations

from .image import L1Image, pc_bios_dir, prepare_l1_image
from .l2 import (ACCEL, MICRO_RETRIES, MICRO_WATCHDOG_S, Attempts, L2HaltedWithInterruptsOff,
                 L2Hang, boot_l2_fio, halted_with_interrupts_off, l2_fio_argv, l2_fio_image,
                 l2_micro_argv, retry_after_l1_stall, run_hostile_case, run_micro_point,
                 run_micro_with_watchdog, variant_dir)
from .machine import L1, L1Ports, L1Stalled, L1Unusable, l1_spec
from .scripts import L1_DIAGNOSE, L1_INIT, L2_START, L2_WAIT, script

__all__ = ["ACCEL", "MICRO_RETRIES", "MICRO_WATCHDOG_S", "Attempts", "L1", "L1Image", "L1Ports",
           "L1Stalled", "L1Unusable", "L1_DIAGNOSE", "L1_INIT", "L2HaltedWithInterruptsOff",
           "L2Hang", "L2_START", "L2_WAIT", "boot_l2_fio", "halted_with_interrupts_off",
           "l1_spec", "l2_fio_argv", "l2_fio_image", "l2_micro_argv", "pc_bios_dir",
           "prepare_l1_image", "retry_after_l1_stall", "run_hostile_case", "run_micro_point",
           "run_micro_with_watchdog", "script", "variant_dir"]
