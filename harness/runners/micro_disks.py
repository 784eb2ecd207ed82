"""A micro-guest point with N test disks: the devices and `disks=N` it boots with, its row's columns.

The interface agreed for the micro-guest (harness/microguest/): it takes
`disks=N` on its command line (default 1) and drives the first N virtio-blk
PCI devices it finds; its result keeps the totals (`done`, `iops`, latency
over all requests) and adds `disks` and `per_disk`, which
microguest.output.MicroResult exposes as `disks` and `per_disk_iops`.

microguest.run.run_microguest_point attaches the first disk and puts
`disks=N` on the guest's line (its `disks`); devices 1…N-1 come as extra
options (vm.added_disk_args).  One disk: nothing is added, the boot is as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import VariantSpec
from ..results import format_device_iops
from ..vm import added_disk_args


def extra_args(variant: VariantSpec, images: tuple[Path, ...]) -> tuple[str, ...]:
    """The devices a point with len(images) disks adds to the micro-guest's first one."""
    return added_disk_args(variant, images[1:]) if len(images) > 1 else ()


def device_columns(result: Any, devices: int) -> dict[str, Any]:
    """The row's devices, vcpus (the micro-guest has one) and device_iops columns."""
    columns: dict[str, Any] = {"devices": devices, "vcpus": 1, "device_iops": ""}
    if devices > 1:
        columns["device_iops"] = format_device_iops(result.per_disk_iops)
    return columns


def short_of_disks(result: Any, devices: int) -> str | None:
    """Why a result cannot stand for `devices` disks (None when it can): a micro-guest
    without disks=N support, or one that found fewer devices, drove fewer."""
    if devices == 1:
        return None
    if result.disks != devices:
        return f"the micro-guest drove {result.disks} disk(s), not {devices}"
    if len(result.per_disk_iops) != devices:
        return (f"the micro-guest reported {len(result.per_disk_iops)} per-disk results, "
                f"not {devices}")
    return None
