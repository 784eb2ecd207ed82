"""A real OpenSSH server on 127.0.0.1 for the remote-host tests.

Its own port, host key, config and a client key made for the test; it runs as
the current user with `-D -e` (in the foreground, logging to its stderr),
UsePAM no and StrictModes no.  `path` sets PATH for the sessions (SetEnv),
so a test can make a host without fio.  stop() ends the listener and the
per-connection processes it forked: a host lost mid-run.

own_ssh_files() points the harness at a test's own ssh config and known hosts
files (never the user's), and trust() writes a server's host key into the
"user's" known_hosts, as an `ssh` to it would have: the harness refuses
unknown host keys unless asked to accept them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness.util import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
#: Where the harness finds the ssh config and the known hosts (its own, the user's).
SSH_FILES = {"HARNESS_SSH_CONFIG": "ssh_config", "HARNESS_SSH_KNOWN_HOSTS": "ssh_known_hosts",
             "HARNESS_KNOWN_HOSTS": "known_hosts"}


@contextmanager
def own_ssh_files(root: Path) -> Iterator[Path]:
    """The ssh config and known hosts files under root (none exists yet), restored after."""
    saved = {key: os.environ.get(key) for key in SSH_FILES}
    os.environ.update({key: str(root / name) for key, name in SSH_FILES.items()})
    try:
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def sshd_missing() -> str | None:
    """Why no test sshd can run here, or None."""
    if not Path(SSHD).exists():
        return "sshd not installed (scripts/install.sh installs openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen not installed (openssh-client)"
    return None


@dataclass
class TestSSHD:
    __test__ = False  # not a test class, for pytest
    root: Path
    port: int
    client_key: Path
    process: subprocess.Popen | None = None
    path: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def known_hosts_line(self, name: str | None = None) -> str:
        """Its host key as a known_hosts line: `NAME TYPE KEY`, by default NAME [127.0.0.1]:PORT."""
        kind, key = (self.root / "host_key.pub").read_text().split()[:2]
        return f"{name or f'[127.0.0.1]:{self.port}'} {kind} {key}\n"

    def trust(self, known_hosts: Path | None = None) -> "TestSSHD":
        """Its host key added to known_hosts (default: the user's, $HARNESS_SSH_KNOWN_HOSTS)."""
        path = known_hosts or Path(os.environ["HARNESS_SSH_KNOWN_HOSTS"])
        with open(path, "a") as handle:
            handle.write(self.known_hosts_line())
        return self

    def host_yaml(self, workdir: Path, name: str | None = None) -> dict:
        """This server as an entry of a config's hosts:."""
        entry = {"host": "127.0.0.1", "port": self.port, "identity": str(self.client_key),
                 "workdir": str(workdir), "accel": "tcg"}
        return {**entry, "name": name} if name else entry

    def start(self) -> "TestSSHD":
        config = self.root / "sshd_config"
        lines = [f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.root / 'host_key'}",
                 f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                 f"PidFile {self.root / 'sshd.pid'}", "UsePAM no", "StrictModes no",
                 "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                 "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
                 "AllowTcpForwarding local", "X11Forwarding no", "PrintMotd no",
                 "Subsystem sftp internal-sftp", "MaxSessions 64", "LogLevel ERROR"]
        if self.path:
            lines.append(f"SetEnv PATH={self.path}")
        config.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            # sshd started as root insists on its (empty) privilege separation directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(self.root / "sshd.log", "ab")
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"test sshd exited: {(self.root / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("test sshd did not listen within 15 s")

    def stop(self) -> None:
        """SIGKILL the listener and every process of its session (its connections)."""
        if self.process is None:
            return
        # the per-connection sshd processes, found before their parent goes; the
        # sessions' own programs are left alone: they see their connection close
        connections = [pid for pid in _children(self.process.pid) if _comm(pid) == "sshd"]
        for pid in [self.process.pid, *connections]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process = None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """The descendants of pid (from /proc), so that open connections die with it too."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def make_sshd(root: Path, path: str | None = None) -> TestSSHD:
    """Keys and config for a server on a free port (not started)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        if not (root / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)],
                           check=True, stdin=subprocess.DEVNULL)
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    return TestSSHD(root, free_port(), root / "client_key", path=path)
