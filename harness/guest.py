"""The fio guest: a small kernel + initramfs assembled from Debian packages.

Why not a distribution image: under TCG every second of boot counts, and a
full userland (systemd, udev, cloud-init) takes minutes.  This guest is the
Debian cloud kernel, the virtio modules it needs, busybox, fio and dropbear in
one uncompressed initramfs; /init configures the network, starts dropbear and
prints READY_MARKER on the serial console.  Login is tuned for TCG too: RSA
keys and a host key made ahead of time (no key generation in the guest), and
the entropy pool is credited from a host-made seed, because the 2012 QEMU has
no virtio-rng and dropbear would otherwise wait for the pool.

The result is cached under cache_dir()/guest/<hash of the inputs>/, so a
second call returns at once; changing a package version, the init script or
the SSH key gives a new directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import proc
from .config import GuestSpec
from .files import sha256_file
from .errors import HarnessError, UserError
from .paths import cache_dir
from .util import Say, quiet

READY_MARKER = "HARNESS-GUEST-READY"
# console lines that mean the boot has failed (vm.wait_for_marker stops at once)
FAILURE_MARKERS = ("HARNESS-GUEST-FAILED", "Kernel panic - not syncing",
                   "Initramfs unpacking failed")
GUEST_FORMAT = 3  # bump when the layout of the initramfs changes
KERNEL_META = "linux-image-cloud-amd64"
DROPBEAR_PACKAGES = ("dropbear-bin", "libtomcrypt1", "libtommath1")
ROOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_net")
GUEST_IP = "10.0.2.15/24"
GUEST_GW = "10.0.2.2"
APPEND = ("console=ttyS0 rdinit=/init mitigations=off "
          "no_timer_check tsc=reliable 8250.nr_uarts=1 random.trust_cpu=on")


@dataclass(frozen=True)
class GuestImage:
    """What vm.py needs to boot a Linux guest and fio_jobs.py needs to log in."""

    kernel: Path | None  # None: boot_image is booted instead
    initrd: Path | None
    append: str
    ssh_user: str
    ssh_key: Path
    description: str
    marker: str | None = READY_MARKER  # None: readiness is "SSH answers"
    boot_image: Path | None = None  # custom guests booting from a disk image
    device: str = "/dev/vda"  # the test disk as the guest sees it
    min_memory_mb: int = 0  # below this the guest cannot boot (0: unknown)


@dataclass(frozen=True)
class GuestAssets:
    """What a run's guests boot, prepared before the first boot, as the machine that
    runs the points sees them (here, or a remote host: fleet/prepare.py ships them there)."""

    images: dict[str, GuestImage] = field(default_factory=dict)  # Linux guests by guest id
    kernel: Path | None = None  # the micro-guest ELF, if a guest or the hostile cases need it


# ---------------------------------------------------------------- public API


def prepare_fio_guest(progress: Say | None = None) -> GuestImage:
    """Build (or reuse) the fio guest; idempotent and cached."""
    say = progress or quiet
    _require_tools()
    root = cache_dir() / "guest"
    key = ensure_ssh_key(root / "ssh")
    inputs = _inputs(key)
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    out = root / digest
    if not (out / "manifest.json").exists():
        say(f"assembling the fio guest ({inputs['kernel_package']}) in {out}")
        _build(out, inputs, key, root / "debs", say)
    return _image(out, key, inputs)


def custom_guest(spec: GuestSpec) -> GuestImage:
    """A user's own kernel/initrd or disk image, logged into with their key."""
    if spec.ssh_key is None or not Path(spec.ssh_key).is_file():
        raise UserError(f"guest.ssh_key: no such private key file: {spec.ssh_key}")
    for name in ("kernel", "initrd", "image"):
        value = getattr(spec, name)
        if value is not None and not Path(value).is_file():
            raise UserError(f"guest.{name}: no such file: {value}")
    if spec.image is not None:
        return GuestImage(kernel=None, initrd=None, append="", ssh_user=spec.ssh_user,
                          ssh_key=Path(spec.ssh_key), boot_image=Path(spec.image),
                          description=f"custom disk image {Path(spec.image).name}", marker=None)
    return GuestImage(kernel=Path(spec.kernel), initrd=Path(spec.initrd) if spec.initrd else None,
                      append=spec.append or "console=ttyS0", ssh_user=spec.ssh_user,
                      ssh_key=Path(spec.ssh_key), marker=None,
                      description=f"custom kernel {Path(spec.kernel).name}")


def ensure_ssh_key(directory: Path) -> Path:
    """The harness's RSA-2048 key pair (RSA because it is fast under TCG)."""
    key = directory / "id_rsa"
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "id_rsa.tmp"
    for path in (tmp, tmp.with_suffix(".tmp.pub")):
        path.unlink(missing_ok=True)
    proc.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "",
              "-C", "dataplane-harness", "-f", tmp], what="ssh-keygen", error=UserError)
    os.replace(tmp.with_suffix(".tmp.pub"), key.with_suffix(".pub"))
    os.replace(tmp, key)
    return key


# ------------------------------------------------------------------- inputs

_TOOLS = {"apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "gcc": "gcc",
          "ssh-keygen": "openssh-client", "ldd": "libc-bin", "fio": "fio",
          "busybox": "busybox-static"}


def _require_tools() -> None:
    for tool, package in _TOOLS.items():
        if shutil.which(tool) is None:
            raise UserError(f"the fio guest needs {tool}: install the Debian package "
                            f"{package!r} (apt-get install {package})")
    busybox = shutil.which("busybox")
    if _is_dynamic(Path(busybox)):
        raise UserError(f"{busybox} is dynamically linked; the fio guest needs the static "
                        "one: install the Debian package 'busybox-static'")


def _is_dynamic(binary: Path) -> bool:
    out = proc.run(["ldd", binary], check=False).output
    return "not a dynamic executable" not in out and "statically linked" not in out


@functools.lru_cache(maxsize=None)
def _candidates(packages: tuple[str, ...]) -> dict[str, str]:
    """The versions apt would download, in one apt-cache call (works offline)."""
    out = proc.run(["apt-cache", "policy", *packages], check=False).output
    found = dict(re.findall(r"^(\S+?):(?:amd64)?\s*\n\s+Installed:.*\n\s+Candidate:\s*(\S+)",
                            out, re.MULTILINE))
    for package in packages:
        if found.get(package, "(none)") == "(none)":
            raise UserError(f"the fio guest needs the Debian package {package!r}, which apt "
                            "does not know here (run apt-get update?)")
    return found


@functools.lru_cache(maxsize=None)
def kernel_package() -> str:
    """linux-image-<version>-cloud-amd64, the package the meta-package points at."""
    out = proc.run(["apt-cache", "depends", KERNEL_META], check=False).output
    match = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)", out)
    if not match:
        raise UserError(f"cannot find the kernel behind the Debian package {KERNEL_META!r} "
                        "(apt-cache depends found nothing; run apt-get update?)")
    return match.group(1)


def _inputs(key: Path) -> dict:
    kernel = kernel_package()
    versions = _candidates((kernel, *DROPBEAR_PACKAGES))
    fio = shutil.which("fio")
    busybox = shutil.which("busybox")
    return {
        "format": GUEST_FORMAT,
        "kernel_package": kernel,
        "kernel_version": versions[kernel],
        "packages": {p: versions[p] for p in DROPBEAR_PACKAGES},
        "fio": proc.run([fio, "--version"]).output.strip(),
        "fio_sha256": sha256_file(Path(fio)),
        "busybox_sha256": sha256_file(Path(busybox)),
        "init": hashlib.sha256((INIT_SCRIPT + SEED_HELPER_C + APPEND).encode()).hexdigest(),
        "ssh_pub": key.with_suffix(".pub").read_text().split()[1],
    }


def min_memory_mb(initrd: Path) -> int:
    """RAM the guest needs: the initramfs is unpacked into a tmpfs capped at half
    of RAM while the archive itself is still in memory; plus room to run."""
    size_mb = initrd.stat().st_size >> 20
    return 2 * size_mb + 128


def _image(out: Path, key: Path, inputs: dict) -> GuestImage:
    initrd = out / "initrd.cpio"
    return GuestImage(kernel=out / "vmlinuz", initrd=initrd, append=APPEND,
                      ssh_user="root", ssh_key=key, min_memory_mb=min_memory_mb(initrd),
                      description=(f"fio guest: {inputs['kernel_package']} "
                                   f"{inputs['kernel_version']}, {inputs['fio']}, "
                                   f"dropbear {inputs['packages']['dropbear-bin']}, busybox"))


# -------------------------------------------------------------------- build


def _build(out: Path, inputs: dict, key: Path, debs: Path, say) -> None:
    """Assemble in a private directory, then rename: safe against a concurrent build."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _assemble(work, inputs, key, debs, say)
        if not (out / "manifest.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _assemble(work: Path, inputs: dict, key: Path, debs: Path, say) -> None:
    tree = work / "x"
    tree.mkdir()
    pkgs = {inputs["kernel_package"]: inputs["kernel_version"], **inputs["packages"]}
    for package, version in pkgs.items():
        deb = _download(package, version, debs, say)
        proc.run(["dpkg-deb", "-x", deb, tree], what=f"unpack {package}")
    files = Initramfs()
    _add_base(files, key)
    _add_modules(files, tree)
    _add_binaries(files, tree)
    _add_dropbear_key(files, work)
    _add_seed_helper(files, work)
    say(f"writing the initramfs ({files.size() >> 20} MiB)")
    shutil.copyfile(_kernel_file(tree), work / "vmlinuz")
    files.write(work / "initrd.cpio")
    shutil.rmtree(tree)
    (work / "manifest.json").write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")


def _download(package: str, version: str, debs: Path, say) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    found = _find_deb(debs, package, version)
    if found:
        return found
    say(f"downloading {package} {version}")
    try:
        proc.run(["apt-get", "download", f"{package}={version}"], cwd=debs, timeout=600,
                 what=f"apt-get download {package}", error=UserError)
    except HarnessError as exc:
        raise UserError(f"cannot download the Debian package {package!r} {version} "
                        f"(apt-get download failed: {str(exc).splitlines()[-1]})") from None
    found = _find_deb(debs, package, version)
    if not found:
        raise UserError(f"apt-get download {package} produced no .deb in {debs}")
    return found


def _find_deb(debs: Path, package: str, version: str) -> Path | None:
    # apt encodes ':' in the epoch as %3a in file names
    plain = version.split(":", 1)[-1]
    for deb in debs.glob(f"{package}_*.deb"):
        if plain in deb.name:
            return deb
    return None


def _kernel_file(tree: Path) -> Path:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise UserError("the kernel package contains no /boot/vmlinuz-*")
    return kernels[0]


def _add_base(files: "Initramfs", key: Path) -> None:
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/dropbear", "proc", "sys",
                      "dev", "tmp", "run", "var/log", "lib/modules", "lib64",
                      "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
        files.directory(directory)
    files.directory("root", 0o700)
    files.directory("root/.ssh", 0o700)
    files.node("dev/console", stat.S_IFCHR | 0o600, 5, 1)
    files.node("dev/null", stat.S_IFCHR | 0o666, 1, 3)
    files.file("bin/busybox", Path(shutil.which("busybox")).read_bytes(), 0o755)
    files.symlink("bin/sh", "busybox")
    files.file("init", INIT_SCRIPT.encode(), 0o755)
    files.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    files.file("etc/group", b"root:x:0:\n")
    files.file("etc/shells", b"/bin/sh\n")
    files.file("etc/hostname", b"fioguest\n")
    files.file("root/.ssh/authorized_keys", key.with_suffix(".pub").read_bytes(), 0o600)
    files.file("etc/random-seed", os.urandom(512), 0o600)


def _add_modules(files: "Initramfs", tree: Path) -> None:
    """Copy the virtio modules and write their load order to /etc/modules-order."""
    found = {p.name.removesuffix(".ko"): p for p in (tree / "lib/modules").rglob("*.ko")}
    order = module_order(ROOT_MODULES, lambda name: _module_deps(found, name))
    for name in order:
        files.file(f"lib/modules/{name}.ko", found[name].read_bytes())
    files.file("etc/modules-order", ("\n".join(order) + "\n").encode())


def _module_deps(found: dict[str, Path], name: str) -> list[str]:
    if name not in found:
        raise UserError(f"the kernel package has no module {name}.ko")
    match = re.search(rb"\x00depends=([^\x00]*)\x00", b"\x00" + found[name].read_bytes())
    return [d.replace("-", "_") for d in match.group(1).decode().split(",") if d] if match else []


def module_order(roots, deps_of: Callable[[str], list[str]]) -> list[str]:
    """Dependencies first (what modules.dep would give modprobe)."""
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in stack:
            raise UserError(f"module dependency cycle: {' -> '.join(stack + (name,))}")
        for dep in deps_of(name):
            visit(dep, stack + (name,))
        order.append(name)

    for root in roots:
        visit(root, ())
    return order


def _add_binaries(files: "Initramfs", tree: Path) -> None:
    """fio from the host, dropbear from its deb, with every library they load."""
    libdirs = [str(p.parent) for p in tree.rglob("*.so*")]
    binaries = {"usr/bin/fio": Path(shutil.which("fio")),
                "usr/sbin/dropbear": tree / "usr/sbin/dropbear"}
    for guest_path, host_path in binaries.items():
        files.file(guest_path, host_path.read_bytes(), 0o755)
        for guest_lib, host_lib in _libraries(host_path, libdirs, tree).items():
            if guest_lib not in files:
                files.file(guest_lib, Path(host_lib).resolve().read_bytes(), 0o755)


def _libraries(binary: Path, libdirs: list[str], tree: Path) -> dict[str, str]:
    """{path in the guest: file on the host} from ldd (the loader included)."""
    env = {"LD_LIBRARY_PATH": ":".join(sorted(set(libdirs)))}
    out = proc.run(["ldd", binary], env=env, what=f"ldd {binary.name}").output
    libs: dict[str, str] = {}
    for line in out.splitlines():
        if "not found" in line:
            raise UserError(f"{binary.name} needs a library the host lacks: {line.strip()}")
        match = re.match(r"\s*(\S+) => (/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if not match:
            continue
        host = match.groups()[-1]
        guest = host
        if host.startswith(str(tree)):
            guest = "/usr/lib/x86_64-linux-gnu/" + Path(host).name
        libs[guest.lstrip("/")] = host
    return libs


def _add_dropbear_key(files: "Initramfs", work: Path) -> None:
    """An RSA host key made on the host: generating one in the guest is slow."""
    tree = work / "x"
    libdirs = sorted({str(p.parent) for p in tree.rglob("*.so*")})
    host_key = work / "dropbear_rsa_host_key"
    proc.run([tree / "usr/bin/dropbearkey", "-t", "rsa", "-s", "2048", "-f", host_key],
             env={"LD_LIBRARY_PATH": ":".join(libdirs)}, what="dropbearkey")
    files.file("etc/dropbear/dropbear_rsa_host_key", host_key.read_bytes(), 0o600)


def _add_seed_helper(files: "Initramfs", work: Path) -> None:
    source = work / "seed-entropy.c"
    source.write_text(SEED_HELPER_C)
    binary = work / "seed-entropy"
    proc.run(["gcc", "-static", "-Os", "-s", "-o", binary, source], error=UserError,
             what="compiling the guest's entropy helper (needs the Debian package libc6-dev)")
    files.file("sbin/seed-entropy", binary.read_bytes(), 0o755)


# ---------------------------------------------------------------- initramfs


class Initramfs:
    """An in-memory newc cpio archive (no root needed for device nodes)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, bytes, int, int]] = {}

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self._entries

    def directory(self, path: str, mode: int = 0o755) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self._entries or i == len(parts):
                self._entries[sub] = (stat.S_IFDIR | mode, b"", 0, 0)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._put(path, (stat.S_IFREG | mode, data, 0, 0))

    def symlink(self, path: str, target: str) -> None:
        self._put(path, (stat.S_IFLNK | 0o777, target.encode(), 0, 0))

    def node(self, path: str, mode: int, major: int, minor: int) -> None:
        self._put(path, (mode, b"", major, minor))

    def size(self) -> int:
        return sum(len(e[1]) for e in self._entries.values())

    def _put(self, path: str, entry: tuple[int, bytes, int, int]) -> None:
        path = path.strip("/")
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent and parent not in self._entries:
            self.directory(parent)
        self._entries[path] = entry

    def write(self, target: Path) -> None:
        with open(target, "wb") as out:
            for ino, name in enumerate(sorted(self._entries), start=1):
                mode, data, major, minor = self._entries[name]
                out.write(_cpio_header(name, ino, mode, len(data), major, minor))
                out.write(data + _pad(len(data)))
            out.write(_cpio_header("TRAILER!!!", 0, 0, 0, 0, 0))
            out.write(b"\0" * (512 - out.tell() % 512))


def _cpio_header(name: str, ino: int, mode: int, size: int, major: int, minor: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, major, minor, len(encoded), 0)
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    return header + encoded + _pad(len(header) + len(encoded))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


# ------------------------------------------------------------ guest programs

INIT_SCRIPT = f"""#!/bin/sh
# /init of the harness's fio guest (busybox sh).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
/bin/busybox --install -s
if [ ! -x /usr/bin/fio ] || [ ! -x /usr/sbin/dropbear ] || [ ! -d /tmp ]; then
    echo "HARNESS-GUEST-FAILED: the initramfs is incomplete (too little guest memory?)"
    exec sleep 100000
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
hostname fioguest
seed-entropy /etc/random-seed || echo "harness: entropy seeding failed"
for m in $(cat /etc/modules-order); do
    insmod /lib/modules/$m.ko || echo "harness: insmod $m failed"
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
ip link set lo up
ip addr add {GUEST_IP} dev eth0
ip link set eth0 up
ip route add default via {GUEST_GW}
dropbear -r /etc/dropbear/dropbear_rsa_host_key -s -p 22 -E 2>>/tmp/dropbear.log
echo 1 > /proc/sys/kernel/printk
echo "{READY_MARKER} $(cut -d' ' -f1 /proc/uptime)"
while true; do sleep 3600; done
"""

SEED_HELPER_C = r"""
/* Credit a host-made seed to the kernel's entropy pool (busybox cannot). */
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct { struct rand_pool_info info; unsigned char buf[512]; } seed;
    struct timespec now;
    int in, rnd;
    ssize_t got;
    if (argc < 2) return 2;
    in = open(argv[1], O_RDONLY);
    if (in < 0) { perror(argv[1]); return 1; }
    got = read(in, seed.buf, sizeof seed.buf);
    close(in);
    if (got <= 0) return 1;
    clock_gettime(CLOCK_REALTIME, &now);  /* differ a little between boots */
    seed.buf[0] ^= (unsigned char)now.tv_nsec;
    seed.info.entropy_count = (int)got * 8;
    seed.info.buf_size = (int)got;
    rnd = open("/dev/urandom", O_WRONLY);
    if (rnd < 0 || ioctl(rnd, RNDADDENTROPY, &seed.info) < 0) { perror("RNDADDENTROPY"); return 1; }
    return 0;
}
"""
