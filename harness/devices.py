"""A point's test devices: N raw images from one disk spec, and what the guest calls them.

A guest with `disks_per_guest: [1, 2, 4]` boots with 1, 2 or 4 virtio-blk
devices, each on its own raw image derived from the disk spec's path:
device 0 is `<path>` itself (so a one-device run uses the image it always
did), device i > 0 is `<path>.<i>` beside it, each the spec's size,
preallocated and filled like the first (hostinfo.prepare_disk).  The
devices sit on PCI in command-line order, so a Linux guest names them
/dev/vda, /dev/vdb, … (the fio guest boots from its initramfs, not from a
virtio disk) and the micro-guest finds them in that order.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Callable

from .config import BenchConfig, DiskSpec
from .errors import UserError
from .hostinfo import ensure_space, prepare_disk


def image_path(base: Path, index: int) -> Path:
    """Device `index`'s image: the spec's path for 0, `<path>.<index>` after it."""
    base = Path(base)
    return base if index == 0 else base.with_name(f"{base.name}.{index}")


def image_paths(base: Path, count: int) -> tuple[Path, ...]:
    return tuple(image_path(base, index) for index in range(count))


def guest_device(first: str, index: int) -> str:
    """The guest's name of device `index` when device 0 is `first` (/dev/vda → /dev/vdc for 2)."""
    stem, letter = first[:-1], first[-1]
    position = string.ascii_lowercase.index(letter) + index
    if position >= len(string.ascii_lowercase):
        raise UserError(f"{first} + {index}: more disks than one letter names; use fewer disks")
    return stem + string.ascii_lowercase[position]


def guest_devices(first: str, count: int) -> tuple[str, ...]:
    return tuple(guest_device(first, index) for index in range(count))


def most_devices(config: BenchConfig) -> int:
    """The most devices any guest of the config attaches (images to prepare per disk)."""
    return max(max(guest.disks_per_guest) for guest in config.guests)


def device_counts(config: BenchConfig) -> list[int]:
    """Every count of devices some guest of the config attaches (the host ceiling's too)."""
    return sorted({count for guest in config.guests for count in guest.disks_per_guest})


def ensure_images_space(disk: DiskSpec, count: int) -> None:
    """UserError unless the filesystem can take all `count` images of disk."""
    for path in image_paths(disk.path, count):
        ensure_space(path, disk.size_bytes)


def prepare_images(disk: DiskSpec, count: int,
                   say: Callable[[str], None]) -> tuple[Path, ...]:
    """Every image of disk, preallocated and filled; a one-line UserError naming the one
    that failed."""
    prepared = []
    for index, path in enumerate(image_paths(disk.path, count)):
        try:
            prepared.append(prepare_disk(path, disk.size_bytes, say))
        except UserError as exc:
            raise UserError(f"disk {disk.name} device {index}: {exc}") from exc
        except OSError as exc:
            raise UserError(f"disk {disk.name} device {index}: cannot prepare {path}: "
                            f"{exc.strerror or exc}; fix its folder or choose another path") \
                from exc
    return tuple(prepared)
