"""A run's share on one remote host: connect, check, ship, prepare — then a Run for it.

prepare_host() turns the run (resolved here: local binaries, guests) into the
same Run seen from the host: binaries, guest files and disks are paths there,
the accelerator is the host's, the executor is its SSHHost and every row it
writes is labelled with its host.  The runners do not know the difference.
"""

from __future__ import annotations

import os
import shlex
import threading
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from ..accel import TCG, Accel, accel_named
from ..accelprobe import Probe, probe_for, probe_kvm
from ..build import BINARY
from ..config import DiskSpec, VariantSpec
from ..devices import image_paths, most_devices
from ..errors import UserError
from ..guest import GuestAssets, GuestImage
from ..hosts.check import gather_facts, library_problems, manifest_facts, problems
from ..hostinfo import DISK_FORMAT
from ..hosts.spec import HostSpec
from ..qemuinfo import parse_version
from ..hosts.ssh import SSHHost
from ..runstate import Run
from ..util import Say


class HostWriter:
    """The run's ResultsWriter, labelling each row with its host; one writer at a time."""

    def __init__(self, writer, label: str, lock: threading.Lock):
        self._writer = writer
        self._label = label
        self._lock = lock

    def append(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._writer.append({**row, "host": self._label})

    def save_raw(self, key: str, text: str, suffix: str = ".json") -> Path:
        with self._lock:
            return self._writer.save_raw(key, text, suffix)

    def __getattr__(self, name):
        return getattr(self._writer, name)


#: Makes the SSHHost of a spec (nested/host.py gives L1's its own kind)
OpenHost = Callable[[HostSpec, Say], SSHHost]


def connect_and_check(spec: HostSpec, disks: list[DiskSpec], accel: str, say: Say,
                      open_host: OpenHost = SSHHost,
                      images: int = 1) -> tuple[SSHHost, dict[str, str]]:
    """A connected host whose checks passed, and its facts; a UserError lists the problems.

    images: how many test images each disk needs there (devices.most_devices)."""
    host = open_host(spec, say).connect()
    facts = gather_facts(host, disks, images)
    found = problems(spec.label, facts, disks, accel, images)
    if found:
        host.close()
        for line in found[1:]:
            say(line)
        more = f" (and {len(found) - 1} more, above)" if len(found) > 1 else ""
        raise UserError(found[0] + more)
    return host, facts


def variant_files(binary: Path) -> dict[str, Path]:
    """A built variant as shipped: its binary and the pc-bios/ files beside it."""
    build_dir = binary.parents[1]
    files = {BINARY.as_posix(): binary}
    bios = build_dir / "pc-bios"
    for root, _dirs, names in os.walk(bios, followlinks=True):
        for name in names:
            src = Path(root) / name
            if src.is_file():
                files[f"pc-bios/{src.relative_to(bios).as_posix()}"] = src
    return files


def ship_binaries(host: SSHHost, run: Run, say: Say) -> tuple[dict[str, Any], dict[str, bool]]:
    """Each variant's binary there (built ones shipped, system ones looked up), and its dialect."""
    binaries, legacy = {}, {}
    for variant in run.config.variants:
        if variant.build:
            tree = host.put_tree(variant_files(Path(run.binaries[variant.name])),
                                 f"variant {variant.name}")
            binaries[variant.name] = Path(tree / BINARY.as_posix())
            legacy[variant.name] = run.legacy[variant.name]
        else:
            binaries[variant.name] = Path(_system_binary(host, variant))
            out = host.run([str(binaries[variant.name]), "-version"], timeout=60,
                           what=f"{variant.binary} -version").output
            legacy[variant.name] = parse_version(out).legacy
    return binaries, legacy


def _system_binary(host: SSHHost, variant: VariantSpec) -> PurePosixPath:
    result = host.shell(f"command -v {shlex.quote(variant.binary)}", check=False, timeout=30,
                        what="look up QEMU")
    if result.returncode != 0 or not result.output.strip():
        raise UserError(f"host {host.label}: variant {variant.name!r}: QEMU binary "
                        f"{variant.binary!r} not found there (apt-get install qemu-system-x86 "
                        "there, or give its full path)")
    return PurePosixPath(result.output.strip().splitlines()[-1])


def ship_guests(host: SSHHost, images: dict[str, GuestImage],
                kernel: Path | None) -> GuestAssets:
    """The guests' kernels, initramfs and images in the host's work folder."""
    shipped = {}
    for guest_id, image in images.items():
        files = {name: path for name, path in (("vmlinuz", image.kernel), ("initrd", image.initrd),
                                               ("boot.img", image.boot_image)) if path}
        tree = host.put_tree(files, f"guest {guest_id}")
        shipped[guest_id] = replace(
            image, kernel=Path(tree / "vmlinuz") if image.kernel else None,
            initrd=Path(tree / "initrd") if image.initrd else None,
            boot_image=Path(tree / "boot.img") if image.boot_image else None)
    micro = Path(host.put_tree({"microguest.elf": kernel}, "micro-guest") / "microguest.elf") \
        if kernel else None
    return GuestAssets(shipped, micro)


def prepare_disk_there(host: SSHHost, disk: DiskSpec, say: Say) -> Path:
    """The test image at its configured path there: preallocated, random data, reused."""
    path = shlex.quote(str(disk.path))
    size = disk.size_bytes
    sidecar = shlex.quote(f"{disk.path}.harness.json")
    meta = f'{{"format": {DISK_FORMAT}, "size": {size}, "fill": "urandom"}}'
    script = (
        f"if [ -b {path} ]; then exit 0; fi\n"
        f"if [ \"$(cat {sidecar} 2>/dev/null)\" = {shlex.quote(meta)} ] && "
        f"[ \"$(stat -c %s {path} 2>/dev/null)\" = {size} ] && "
        f"[ $(( $(stat -c %b {path}) * 512 )) -ge {size} ]; then exit 0; fi\n"
        f"mkdir -p \"$(dirname {path})\" && echo filling >&2 && "
        # count in bytes: a size of no whole MiB is filled to the byte (else the size
        # check above fails and every run fills the image again)
        f"dd if=/dev/urandom of={path}.partial bs=1M count={size} iflag=fullblock,count_bytes "
        f"conv=fsync status=none && mv {path}.partial {path} && "
        f"printf '%s\\n' {shlex.quote(meta)} > {sidecar}\n")
    say(f"host {host.label}: disk {disk.name}: preallocated raw image {disk.path} ({disk.size})")
    host.shell(script, timeout=max(600, size >> 20), what=f"prepare disk {disk.name}")
    return Path(disk.path)


def prepare_images_there(host: SSHHost, disk: DiskSpec, count: int, say: Say) -> Path:
    """Every image of a disk with `count` devices there (devices.image_paths); device 0's path."""
    for path in image_paths(disk.path, count):
        prepare_disk_there(host, disk.model_copy(update={"path": path}), say)
    return Path(disk.path)


def host_accel(host: SSHHost, spec: HostSpec, requested: str, facts: dict[str, str],
               binary: Path, legacy: bool, probe: Probe, say: Say) -> tuple[Accel, str | None]:
    """The host's accelerator: its own `accel`, else the run's; `auto` probes there."""
    wanted = spec.accel or requested
    if wanted == "kvm-nested":
        raise UserError(f"host {host.label}: accel kvm-nested runs on the local machine only; "
                        "give the host accel kvm, tcg or auto")
    if wanted != "auto":
        return accel_named(wanted), None
    if facts.get("kvm_usable") != "yes":
        return TCG, f"host {host.label}: KVM is not usable (/dev/kvm); using TCG"
    works, detail = probe_kvm(str(binary), legacy, probe, say, host=host)
    if works:
        return accel_named("kvm"), None
    return TCG, (f"host {host.label}: KVM cannot run {probe.what} there (probe: {detail}); "
                 "using TCG")


def prepare_host(run: Run, spec: HostSpec, images: dict[str, GuestImage], kernel: Path | None,
                 requested_accel: str, lock: threading.Lock, say: Say, *,
                 disk_paths: dict[str, str] | None = None,
                 open_host: OpenHost = SSHHost) -> tuple[Run, GuestAssets]:
    """The run as one host runs it (see the module docstring); UserError if the host is not ready.

    disk_paths: where the config's disks are there, by name, instead of their `path`s
    (L1's block devices)."""
    config = run.config
    disks_there = [d.model_copy(update={"path": Path(disk_paths[d.name])})
                   if disk_paths and d.name in disk_paths else d for d in config.disks]
    host, facts = connect_and_check(spec, disks_there, spec.accel or requested_accel, say,
                                    open_host, most_devices(config))
    try:
        say(f"host {host.label}: {facts.get('os_release')}, kernel {facts.get('kernel')}, "
            f"{facts.get('cores')} cores; work folder {host.workdir}")
        before = host.shipped_bytes
        binaries, legacy = ship_binaries(host, run, say)
        found = library_problems(host, {n: b for n, b in binaries.items()
                                        if config.variant(n).build})
        if found:
            for line in found[1:]:
                say(line)
            raise UserError(found[0])
        assets = ship_guests(host, images, kernel)
        _copy_config(host, run)
        say(f"host {host.label}: shipped {host.shipped_bytes - before} bytes of new files")
        disks = {d.name: prepare_images_there(host, d, most_devices(config), say)
                 for d in disks_there}
        accel, notice = host_accel(host, spec, requested_accel, facts, binaries[config.baseline],
                                   legacy[config.baseline], probe_for(assets), say)
    except BaseException:
        host.close()
        raise
    if notice:
        run.notices.append(notice)
        say(notice)
    run.host_facts[host.label] = manifest_facts(facts, accel.name)
    hosted = replace(run, accel=accel, binaries=binaries, legacy=legacy, disks=disks, host=host,
                     writer=HostWriter(run.writer, host.label, lock))
    return hosted, assets


def _copy_config(host: SSHHost, run: Run) -> None:
    """The run's folder there, with the config it runs."""
    host.mkdir(host.path(run.run_dir / "logs", run.run_dir))
    config = run.run_dir / "config.yaml"
    if config.exists():
        host.write_bytes(host.path(config, run.run_dir), config.read_bytes())
