"""Is a remote host ready to run points?  One line per problem, saying what to change.

The facts are gathered with one shell script (uname, /proc, df, command -v)
and kept for the manifest (CPU, kernel, accelerator, storage).  The checks:
SSH reachable (remote.connect_problem), a Linux x86_64 host, the tools the
harness drives there (fio, setsid, python3, ldd, getconf), /dev/kvm when KVM is asked for,
free space for each disk's test images (one per device a guest attaches:
devices.image_paths), and — once the binaries are shipped — the
shared libraries the 2012 binaries need (ldd).  Whether `auto` means KVM is
decided by the same probe boot as here (accelprobe), run there.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import Iterable

from ..config import DiskSpec
from ..devices import image_paths
from ..errors import UserError
from .spec import HostSpec
from .ssh import SSHHost
from ..util import Say

#: Tools the harness runs on a host, and the Debian package that has each.
TOOLS = {"fio": "fio", "setsid": "util-linux", "python3": "python3", "ldd": "libc-bin",
         "getconf": "libc-bin"}
#: Shared libraries of the 2012 build and the Debian package that has each.
LIBRARY_PACKAGES = {"libglib-2.0.so.0": "libglib2.0-0", "libgthread-2.0.so.0": "libglib2.0-0",
                    "libz.so.1": "zlib1g", "libaio.so.1": "libaio1", "librt.so.1": "libc6",
                    "libutil.so.1": "libc6", "libpthread.so.0": "libc6"}


def _facts_script(disks: Iterable[DiskSpec], images: int = 1) -> str:
    lines = [
        'echo "os=$(uname -s)"', 'echo "machine=$(uname -m)"', 'echo "kernel=$(uname -r)"',
        'echo "cpu_model=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed "s/^ *//")"',
        'echo "cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"',
        'echo "memory_kb=$(awk \'/^MemTotal:/{print $2}\' /proc/meminfo)"',
        'echo "os_release=$( (. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME") )"',
        'if [ -c /dev/kvm ]; then echo kvm_device=yes; else echo kvm_device=no; fi',
        'if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then echo kvm_usable=yes; else echo kvm_usable=no; fi',
    ]
    for tool in TOOLS:
        lines.append(f'if command -v {tool} >/dev/null 2>&1; then echo have_{tool}=yes; '
                     f'else echo have_{tool}=no; fi')
    for disk in disks:
        path = shlex.quote(str(disk.path))
        every = " ".join(shlex.quote(str(p)) for p in image_paths(disk.path, images))
        lines.append(f'p={path}; while [ ! -e "$p" ]; do p=$(dirname "$p"); done; '
                     f'echo "disk_{disk.name}_free_kb=$(df -Pk "$p" | awk \'NR==2{{print $4}}\')"; '
                     f'echo "disk_{disk.name}_fs=$(stat -f -c %T "$p")"; '
                     f'if [ -b {path} ]; then echo disk_{disk.name}_block=yes; fi; '
                     f'h=0; for f in {every}; do if [ -f "$f" ]; then '
                     f'h=$((h + $(du -k "$f" | cut -f1))); fi; done; '
                     f'echo "disk_{disk.name}_have_kb=$h"')
    return "\n".join(lines)


def gather_facts(host: SSHHost, disks: Iterable[DiskSpec], images: int = 1) -> dict[str, str]:
    """The host's facts as strings (key=value lines of one script); images: per disk."""
    out = host.shell(_facts_script(disks, images), timeout=60, what="gather the host's facts").output
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def problems(label: str, facts: dict[str, str], disks: Iterable[DiskSpec],
             accel: str, images: int = 1) -> list[str]:
    """What must change before points can run there, one line each; images: how many
    each disk needs (the most devices a guest attaches), whose space counts."""
    found = []
    where = f"host {label}"
    if facts.get("os") != "Linux" or facts.get("machine") != "x86_64":
        found.append(f"{where}: is {facts.get('os')} {facts.get('machine')}; the builds are "
                     "x86_64 Linux binaries: use an x86_64 Linux host")
    for tool, package in TOOLS.items():
        if facts.get(f"have_{tool}") != "yes":
            found.append(f"{where}: {tool} not found in PATH: install it there "
                         f"(Debian: apt-get install {package})")
    if accel == "kvm" and facts.get("kvm_usable") != "yes":
        found.append(f"{where}: /dev/kvm is missing or not read-writable for this user: load "
                     "kvm_intel/kvm_amd and add the user to group kvm, or use accel tcg")
    for disk in disks:
        if facts.get(f"disk_{disk.name}_block") == "yes":
            continue  # a block device is used as it is: nothing to fill
        free = int(facts.get(f"disk_{disk.name}_free_kb") or 0) * 1024
        have = int(facts.get(f"disk_{disk.name}_have_kb") or 0) * 1024
        need = images * disk.size_bytes - have
        if need > free:
            what = f"{disk.path}" if images == 1 else f"{disk.path} and {images - 1} beside it"
            found.append(f"{where}: disk {disk.name} ({what}) needs {need >> 20} MiB more "
                         f"but its filesystem has {free >> 20} MiB free: free space there or "
                         "move the disk (disks: path)")
    return found


def library_problems(host: SSHHost, binaries: dict[str, PurePosixPath]) -> list[str]:
    """Shared libraries a shipped binary cannot find there, with the package to install."""
    found = []
    for name, binary in binaries.items():
        out = host.shell(f"ldd {shlex.quote(str(binary))}", check=False, timeout=60,
                         what="ldd").output
        for line in out.splitlines():
            if "not found" in line:
                library = line.split("=>")[0].strip()
                package = LIBRARY_PACKAGES.get(library, "the package that has it")
                found.append(f"host {host.label}: variant {name} needs {library}, which is not "
                             f"installed there (Debian: apt-get install {package})")
    return found


def manifest_facts(facts: dict[str, str], accel: str) -> dict:
    """The host's entry in manifest.json (like hostinfo.host_facts, plus storage)."""
    disks = {key[5:-8]: {"free_bytes": (_int(value) or 0) * 1024, "filesystem":
                         facts.get(f"disk_{key[5:-8]}_fs", "")}
             for key, value in facts.items() if key.startswith("disk_") and key.endswith("_free_kb")}
    return {"kernel": facts.get("kernel"), "machine": facts.get("machine"),
            "cpu_model": facts.get("cpu_model"), "cores": _int(facts.get("cores")),
            "memory_bytes": (_int(facts.get("memory_kb")) or 0) * 1024 or None,
            "os": facts.get("os_release"), "kvm_device": facts.get("kvm_device") == "yes",
            "accel": accel, "disks": disks}


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def check_hosts(specs: list[HostSpec], disks: list[DiskSpec], accel: str,
                say: Say = print, images: int = 1) -> Iterable[tuple[HostSpec, list[str]]]:
    """Each host with its lines: its problems, or one "ok" line with its facts.

    say: a new host key accepted (the host's accept_new_host_key); images: per disk."""
    for spec in specs:
        try:
            with SSHHost(spec, say) as host:
                facts = gather_facts(host, disks, images)
        except UserError as exc:
            yield spec, [str(exc)]
            continue
        found = problems(spec.label, facts, disks, spec.accel or accel, images)
        yield spec, found or [
            f"host {spec.label}: ok: {facts.get('os_release')}, {facts.get('machine')}, kernel "
            f"{facts.get('kernel')}, {facts.get('cores')} cores, /dev/kvm "
            f"{'usable' if facts.get('kvm_usable') == 'yes' else 'not usable (TCG)'}"]
