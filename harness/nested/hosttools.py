"""What makes L1 a remote host like any other: the tools the harness drives there.

A remote host needs fio, setsid (util-linux's: `-w`), python3, ldd, getconf and an
SFTP server (hosts.check.TOOLS, hosts.ssh.SSHHost.put_tree).  The fio guest's initramfs,
which L1 boots, has fio, busybox and dropbear; these are added from this
machine's own Debian files (scripts/install.sh installs them), each with the
libraries ldd says it loads.  Of python3 only what `python3 -c 'import
socket'` loads goes in (hosts.ssh.SSHHost.free_port is its one use): the
interpreter finds its library by the same paths as here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import guest as fioguest
from .. import proc
from ..errors import UserError
from ..guest import Initramfs

#: Programs copied as they are, with the Debian package that has each.
PROGRAMS = {"/usr/bin/setsid": "util-linux", "/usr/bin/ldd": "libc-bin", "/bin/bash": "bash",
            "/usr/bin/getconf": "libc-bin",
            "/usr/lib/openssh/sftp-server": "openssh-sftp-server"}
#: dropbear runs the SFTP server from here (Debian builds it with this path); busybox's
#: own setsid (no -w) would come first in PATH from /bin
ALIASES = {"usr/lib/sftp-server": "/usr/lib/openssh/sftp-server",
           "bin/setsid": "/usr/bin/setsid"}
SYSTEM_PYTHON = "/usr/bin/python3"
#: which files an `import socket` loads, printed by the system python as JSON
_PYTHON_PROBE = ("import json, socket, sys; print(json.dumps(sorted({m.__file__ for m in "
                 "list(sys.modules.values()) if getattr(m, '__file__', None)})))")


def add_host_tools(files: Initramfs) -> None:
    """setsid, ldd (a bash script), sftp-server and a small python3, with their libraries."""
    for program, package in PROGRAMS.items():
        _add_program(files, Path(program), package)
    for alias, program in ALIASES.items():
        files.file(alias, Path(program).read_bytes(), 0o755)
    # the harness's commands run in the login shell: busybox's sh runs its own setsid
    # applet whatever PATH says, bash the util-linux one
    files.file("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n")
    files.file("etc/shells", b"/bin/sh\n/bin/bash\n")
    _add_python(files)


#: Debian's QEMU and the files it reads, for a system-QEMU variant in L1 (its firmware
#: folders hold links into each other, kept as links)
SYSTEM_QEMU = "/usr/bin/qemu-system-x86_64"
SYSTEM_QEMU_DATA = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")


def add_system_qemu(files: Initramfs) -> None:
    """qemu-system-x86_64 with its libraries and firmware, at the paths it has here."""
    _add_program(files, Path(SYSTEM_QEMU), "qemu-system-x86")
    for folder in SYSTEM_QEMU_DATA:
        for path in sorted(Path(folder).rglob("*")):
            inside = str(path).lstrip("/")
            if path.is_symlink():
                files.symlink(inside, os.readlink(path))
            elif path.is_file():
                _add_file(files, path, 0o644)


def system_qemu_digest() -> str:
    """The binary's and its firmware's content, for the image's cache key."""
    digest = hashlib.sha256(Path(SYSTEM_QEMU).read_bytes())
    for folder in SYSTEM_QEMU_DATA:
        for path in sorted(Path(folder).rglob("*")):
            digest.update(str(path).encode())
            if path.is_file() and not path.is_symlink():
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def host_tools_digest() -> str:
    """What add_host_tools puts in, as a hash for the image's cache key: this code and the
    programs' files here (a Debian update of one makes a new image)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for program in (*PROGRAMS, SYSTEM_PYTHON):
        path = Path(program).resolve()
        digest.update(path.name.encode() + (path.read_bytes() if path.is_file() else b""))
    return digest.hexdigest()[:16]


def _add_program(files: Initramfs, program: Path, package: str) -> None:
    if not program.is_file():
        raise UserError(f"kvm-nested: {program} is missing here; L1 needs it to serve as a "
                        f"host: apt-get install {package} (scripts/install.sh does)")
    _add_file(files, program, 0o755)
    if program.read_bytes()[:4] == b"\x7fELF":
        add_libraries(files, program)


def _add_python(files: Initramfs) -> None:
    python = Path(SYSTEM_PYTHON)
    if not python.exists():
        raise UserError("kvm-nested: /usr/bin/python3 is missing here; L1 needs it to serve "
                        "as a host: apt-get install python3")
    real = python.resolve()
    _add_file(files, real, 0o755)
    files.symlink(str(python).lstrip("/"), real.name)
    add_libraries(files, real)
    loaded = json.loads(proc.run([str(python), "-I", "-c", _PYTHON_PROBE],
                                 what="list python3's modules").output)
    for name in loaded:
        path = Path(name)
        _add_file(files, path, 0o755 if path.suffix == ".so" else 0o644)
        if path.suffix == ".so":
            add_libraries(files, path)


def _add_file(files: Initramfs, path: Path, mode: int) -> None:
    inside = str(path).lstrip("/")
    if inside not in files:
        files.file(inside, path.read_bytes(), mode)


def add_libraries(files: Initramfs, binary: Path) -> None:
    """The shared libraries binary loads (ldd), the loader included, at their paths here."""
    for inside, outside in fioguest._libraries(binary, [], Path("/nonexistent")).items():
        if inside not in files:
            files.file(inside, Path(outside).resolve().read_bytes(), 0o755)

