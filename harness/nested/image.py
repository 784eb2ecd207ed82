"""The L1 image: the fio guest's initramfs with a second archive for L1 (kvm modules,
the variants' binaries and libraries, pc-bios, the micro-guest, the L2 fio guest)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import guest as fioguest
from .. import proc
from ..errors import UserError
from ..files import sha256_file
from ..guest import GuestImage, Initramfs
from ..microguest import build_microguest
from ..paths import cache_dir
from ..util import Say, quiet

from .hosttools import (add_host_tools, add_libraries, add_system_qemu, host_tools_digest,
                        system_qemu_digest)
from .scripts import L1_INIT, L2_START, L2_WAIT, OPT

log = logging.getLogger("harness.nested")

L1_FORMAT = 1  # bump when the layout of the L1 archive changes
L1_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "kvm_amd", "brd")


@dataclass(frozen=True)
class L1Image:
    kernel: Path
    initrd: Path
    builds: tuple[str, ...]   # variants carried (by build name)
    fio_guest: bool           # carries the fio guest for L2
    digest: str
    #: a remote host's tools instead of the variants and guests (nested/host.py): the
    #: harness ships those as to any host
    for_host: bool = False
    system_qemu: bool = False  # Debian's qemu-system-x86_64 is in it (hosttools.py)

    @property
    def description(self) -> str:
        if self.for_host:
            return (f"L1 {self.digest}: a KVM host (fio, setsid, python3, ldd, getconf, "
                    f"sftp-server{', Debian QEMU' if self.system_qemu else ''})")
        guests = "micro-guest" + (" + fio guest" if self.fio_guest else "")
        return f"L1 {self.digest}: {', '.join(self.builds)}; {guests}"


def prepare_l1_image(binaries: dict[str, Path], fio_guest: bool = False,
                     say: Say = quiet, for_host: bool = False,
                     system_qemu: bool = False) -> L1Image:
    """The L1 kernel + initramfs carrying binaries ({build name: binary}); cached.

    for_host: only the binaries' libraries, and the tools of a remote host;
    system_qemu: Debian's qemu-system-x86_64 too (a variant runs it in L1)."""
    base = fioguest.prepare_fio_guest(say)
    micro = build_microguest()
    inputs = _inputs(binaries, base, micro, fio_guest)
    if for_host:
        inputs["for_host"] = host_tools_digest()
    if system_qemu:
        inputs["system_qemu"] = system_qemu_digest()
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    out = cache_dir() / "nested" / digest
    if not (out / "manifest.json").exists():
        say(f"assembling the L1 image for kvm-nested ({', '.join(sorted(binaries))}) in {out}")
        _build(out, inputs, binaries, base, micro, fio_guest)
    return L1Image(kernel=base.kernel, initrd=out / "l1.cpio", builds=tuple(sorted(binaries)),
                   fio_guest=fio_guest, digest=digest, for_host=for_host,
                   system_qemu=system_qemu)


def _inputs(binaries: dict[str, Path], base: GuestImage, micro: Path, fio_guest: bool) -> dict:
    return {
        "format": L1_FORMAT,
        "base": base.initrd.parent.name,          # the fio guest's own content hash
        "microguest": sha256_file(micro),
        "fio_guest": fio_guest,
        "modules": L1_MODULES,
        "scripts": hashlib.sha256((L1_INIT + L2_START + L2_WAIT).encode()).hexdigest(),
        "builds": {name: {"binary": sha256_file(path), "pc_bios": _tree_hash(pc_bios_dir(path))}
                   for name, path in sorted(binaries.items())},
    }


def pc_bios_dir(binary: Path) -> Path:
    """A build's pc-bios/ (beside x86_64-softmmu/)."""
    found = Path(binary).resolve().parent.parent / "pc-bios"
    if not found.is_dir():
        raise UserError(f"no pc-bios/ beside {binary} (kvm-nested needs a built variant)")
    return found


def _tree_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build(out: Path, inputs: dict, binaries: dict[str, Path], base: GuestImage, micro: Path,
           fio_guest: bool) -> None:
    """Assemble in a private directory, then rename (safe against a concurrent build)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{out.name}.", suffix=".partial", dir=out.parent))
    try:
        files = Initramfs()
        _add_scripts(files)
        _add_kvm_modules(files, work)
        for name, binary in sorted(binaries.items()):
            if inputs.get("for_host"):
                add_libraries(files, binary)
            else:
                _add_variant(files, name, binary)
        if inputs.get("for_host"):
            add_host_tools(files)
        if inputs.get("system_qemu"):
            add_system_qemu(files)
        else:
            files.file(f"{OPT}/microguest.elf", micro.read_bytes())
        if fio_guest:
            files.file(f"{OPT}/l2/vmlinuz", base.kernel.read_bytes())
            files.file(f"{OPT}/l2/initrd.cpio", base.initrd.read_bytes())
        files.write(work / "extra.cpio")
        with open(work / "l1.cpio", "wb") as target:
            for part in (base.initrd, work / "extra.cpio"):  # the kernel unpacks both in turn
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, target, 1 << 20)
        (work / "extra.cpio").unlink()
        (work / "manifest.json").write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")
        if not (out / "manifest.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _add_scripts(files: Initramfs) -> None:
    files.file("init", L1_INIT.encode(), 0o755)          # replaces the fio guest's /init
    files.file("bin/l2-start", L2_START.encode(), 0o755)
    files.file("bin/l2-wait", L2_WAIT.encode(), 0o755)
    files.file("etc/hostname", b"l1\n")


def _add_kvm_modules(files: Initramfs, work: Path) -> None:
    """kvm-amd and the rest of L1_MODULES from the guest's kernel package, in load order."""
    package = fioguest.kernel_package()
    version = fioguest._candidates((package,))[package]
    deb = fioguest._download(package, version, cache_dir() / "guest" / "debs", quiet)
    tree = work / "kernel"
    proc.run(["dpkg-deb", "-x", deb, tree], what=f"unpack {package}")
    found = {p.name.removesuffix(".ko").replace("-", "_"): p
             for p in (tree / "lib/modules").rglob("*.ko")}
    order = fioguest.module_order(L1_MODULES, lambda name: fioguest._module_deps(found, name))
    for name in order:
        files.file(f"lib/modules/l1/{name}.ko", found[name].read_bytes())
    files.file("etc/l1-modules-order", ("\n".join(order) + "\n").encode())
    shutil.rmtree(tree)


def _add_variant(files: Initramfs, name: str, binary: Path) -> None:
    files.file(f"{OPT}/{name}/qemu-system-x86_64", Path(binary).read_bytes(), 0o755)
    add_libraries(files, binary)
    bios = pc_bios_dir(binary)
    for path in sorted(bios.rglob("*")):
        if path.is_file():
            files.file(f"{OPT}/{name}/pc-bios/{path.relative_to(bios)}", path.read_bytes())


