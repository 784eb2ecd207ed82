"""A remote host over SSH (paramiko): the hosts.executor.Executor of a machine elsewhere.

* run(): a command to completion, stdout and stderr merged, with a timeout.
  It runs in a process group of its own there (setsid), which a timeout
  kills: a fio or dd that overran must not go on beside the next point.  Its
  log is written however it ended (done, failed, timed out, host lost).
* spawn(): QEMU started there in its own session (setsid) under a tiny
  watchdog shell that reads the SSH channel's stdin: when the channel closes —
  we kill it, Ctrl-C, this process dies, the connection drops — the watchdog
  sees end-of-file and SIGKILLs the whole process group.  Nothing outlives the
  connection that started it.
* put_tree(): content-addressed shipping into the host's work folder: every
  file is stored once as objects/<sha256>; a tree (a variant's binary with its
  pc-bios/, a guest's kernel and initramfs) is hard links under
  trees/<sha256 of its listing>.  A second run asks which objects exist and
  sends nothing new.  bytes_sent counts what went over the wire (file payload
  in `shipped_bytes`, all SSH traffic in `wire_bytes_sent`).
* forward(): a port of the host's loopback reachable here on 127.0.0.1 (QMP);
  channel_to(): a channel to such a port (the fio guest's SSH, jumped through
  the host).  Nothing listens on anything but loopback.

A dropped connection is HostLost (an InfraError), so the scheduler can move
the host's unfinished points elsewhere.  Where a host is and how to log in
come from its spec and ~/.ssh/config (sshconfig.py), through ProxyJump hosts
if it names them; its key must be known (keys.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import shlex
import socket
import stat
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import paramiko

from ..errors import HarnessError, HostLost, InfraError, UserError
from ..files import sha256_file
from .keys import changed_key_problem, trust
from .spec import HostSpec
from ..proc import Result
from .sshconfig import Endpoint, resolve
from ..util import Say, tail

log = logging.getLogger("harness.hosts.ssh")
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
CONNECT_TIMEOUT_S = 15.0
_CHUNK = 1 << 16

#: The watchdog around a spawned program: $1 the log, $2 the command line for
#: the log's first line, then the argv.  It prints "pid N" and "exit N".
_WATCHDOG = (
    'log=$1; shown=$2; shift 2; printf "$ %s\\n" "$shown" >"$log"; '
    '( "$@" >>"$log" 2>&1 </dev/null & echo "pid $!"; wait $!; echo "exit $?" ) & '
    'cat >/dev/null; kill -KILL 0'
)
#: A command in a session of its own that first says its process group; $1 the command.
#: It is run as a child (not exec'd), so that a signal's death is sh's 128+N status.
_GROUP_LEADER = 'echo "harness-pgid $$"; sh -c "$1"; exit $?'
_GROUP_LINE = re.compile(rb"harness-pgid (\d+)\n")


class _CountingSocket:
    """A socket that counts the bytes paramiko sends and receives through it."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.sent = 0
        self.received = 0

    def send(self, data) -> int:
        count = self._sock.send(data)
        self.sent += count
        return count

    def sendall(self, data) -> None:
        self._sock.sendall(data)
        self.sent += len(data)

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self.received += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._sock, name)


def connect_problem(exc: BaseException, where: str, end: Endpoint) -> str:
    """One line saying why connecting to end failed and what to change; where names it."""
    if isinstance(exc, ConnectionRefusedError):
        return f"{where}: connection refused: is sshd running there and listening on port {end.port}?"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"{where}: no answer within {CONNECT_TIMEOUT_S:.0f} s: check the address and firewall"
    if isinstance(exc, socket.gaierror):
        return f"{where}: unknown host name: check the spelling or use an IP address"
    if isinstance(exc, paramiko.AuthenticationException):
        return (f"{where}: SSH login refused for user {end.user or 'default'}: give the "
                "right user or an identity file (identity: in hosts:, IdentityFile in "
                "~/.ssh/config, or ssh-agent)")
    return f"{where}: cannot connect over SSH: {type(exc).__name__}: {exc}"


class SSHHost:
    """One remote host; `connect()` first (or use it as a context manager)."""

    is_local = False

    def __init__(self, spec: HostSpec, say: Say = print, *, own_machine: bool = False):
        """own_machine: a machine this process booted, on a port its own QEMU forwards to
        loopback (nested/host.py): its host key is taken, and recorded nowhere."""
        self.spec = spec
        self.own_machine = own_machine
        self.label = spec.label
        self.say = say  # a new host key accepted (spec.accept_new_host_key)
        self.client: paramiko.SSHClient | None = None
        self._target: Endpoint | None = None  # the spec through ~/.ssh/config
        self._jumps: list[paramiko.SSHClient] = []  # ProxyJump hosts, the first first
        self._sftp: paramiko.SFTPClient | None = None
        self._sock: _CountingSocket | None = None
        self._lock = threading.RLock()
        self.workdir = PurePosixPath(spec.workdir)
        self.shipped_bytes = 0
        self._forwards: list[_LocalForward] = []

    # ------------------------------------------------------------ connection

    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> "SSHHost":
        target = self._target = resolve(self.spec)
        try:
            self._sock = _CountingSocket(self._path_to(target, timeout))
            self.client = self._login(target, self._sock, timeout)
        except BaseException:
            self.close()
            raise
        self.workdir = PurePosixPath(self._resolve_workdir())
        return self

    def _where(self, end: Endpoint) -> str:
        """How messages name the host, or one of its jump hosts."""
        if end is self._target:
            return f"host {self.label} ({end.address})"
        return f"host {self.label}: jump host {end.name} ({end.address})"

    def _path_to(self, target: Endpoint, timeout: float):
        """A socket to the target: TCP, or a channel through each of its ProxyJump hosts."""
        hops = [*target.jumps, target]
        try:
            sock = socket.create_connection((hops[0].hostname, hops[0].port), timeout=timeout)
        except OSError as exc:
            raise UserError(connect_problem(exc, self._where(hops[0]), hops[0])) from exc
        for hop, after in zip(hops, hops[1:]):
            client = self._login(hop, sock, timeout)
            self._jumps.append(client)
            sock = self._tunnel(client, hop, after, timeout)
        return sock

    def _tunnel(self, client: paramiko.SSHClient, hop: Endpoint, after: Endpoint,
                timeout: float) -> paramiko.Channel:
        """A direct-tcpip channel from the jump host hop to the next one's port."""
        try:
            return client.get_transport().open_channel(
                "direct-tcpip", (after.hostname, after.port), ("127.0.0.1", 0), timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise UserError(f"{self._where(hop)}: cannot reach {after.hostname}:{after.port} "
                            f"from there: {exc or type(exc).__name__} (AllowTcpForwarding "
                            "there?)") from exc

    def _login(self, end: Endpoint, sock, timeout: float) -> paramiko.SSHClient:
        """An SSH session over sock to end, its host key checked (keys.py)."""
        where = self._where(end)
        client = paramiko.SSHClient()
        try:
            if self.own_machine:
                known = []
                client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            else:
                known = trust(client, end.key_name, where, self.spec.accept_new_host_key,
                              self.say)
            client.connect(end.hostname, port=end.port, username=end.user, sock=sock,
                           key_filename=[str(p) for p in end.identities] or None,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           allow_agent=not end.identities_only,
                           look_for_keys=not end.identities)
        except paramiko.BadHostKeyException as exc:
            _close(client, sock)
            raise UserError(changed_key_problem(where, end.key_name, exc, known)) from exc
        except (paramiko.SSHException, OSError) as exc:
            _close(client, sock)
            raise UserError(connect_problem(exc, where, end)) from exc
        except BaseException:
            _close(client, sock)
            raise
        client.get_transport().set_keepalive(5)
        return client

    def _resolve_workdir(self) -> str:
        folder = self.spec.workdir
        # a leading ~ is expanded by the host's shell, the rest is quoted
        head, rest = (folder[:1], folder[1:].lstrip("/")) if folder.startswith("~") else ("", folder)
        target = f"~/{shlex.quote(rest)}" if head else shlex.quote(rest)
        out = self.shell(f"mkdir -p {target} && cd {target} && pwd", timeout=30,
                         what="create the work folder").output.strip()
        return out.splitlines()[-1]

    def __enter__(self) -> "SSHHost":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for forward in list(self._forwards):
            forward.close()
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
            self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None
        for jump in reversed(self._jumps):
            jump.close()
        self._jumps = []

    def alive(self) -> bool:
        transport = self.client.get_transport() if self.client else None
        return bool(transport and transport.is_active())

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.client.get_transport() if self.client else None
        if not transport or not transport.is_active():
            raise HostLost(f"host {self.label}: the SSH connection is gone")
        return transport

    @property
    def wire_bytes_sent(self) -> int:
        return self._sock.sent if self._sock else 0

    def lost(self, what: str, exc: BaseException | None = None) -> HostLost:
        detail = f" ({type(exc).__name__}: {exc})" if exc else ""
        return HostLost(f"host {self.label}: connection lost during {what}{detail}")

    # ------------------------------------------------------------ commands

    def _command(self, command: str) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.spec.env.items())
        return f"env {env} sh -c {shlex.quote(command)}" if env else command

    def shell(self, command: str, *, timeout: float | None = None, check: bool = True,
              what: str | None = None, error: type[HarnessError] = InfraError,
              stdin: bytes | None = None, log_file: Path | None = None) -> Result:
        """A shell command line on the host to completion (stdout and stderr merged).

        log_file: a local file that gets the command line and what it printed,
        also when it failed or did not finish.
        """
        what = what or command
        try:
            channel = self.transport.open_session(timeout=CONNECT_TIMEOUT_S)
            channel.set_combine_stderr(True)
            channel.exec_command(self._command(_in_own_group(command)))
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
        except HostLost:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self.lost(what, exc) from exc
        chunks: list[bytes] = []
        ended = ""
        try:
            self._drain(channel, chunks, timeout, what, error)
        except BaseException as exc:
            ended = f"# {type(exc).__name__}: {exc}\n"
            raise
        finally:
            text = _split_group(b"".join(chunks))[1].decode(errors="replace")
            if log_file:
                with open(log_file, "ab") as sink:
                    sink.write(f"$ {command}   # on {self.label}\n{text}{ended}".encode())
        status = channel.recv_exit_status()
        channel.close()
        if status == -1:
            raise self.lost(what)
        if check and status != 0:
            raise error(f"{what} on host {self.label} failed with exit code "
                        f"{status}: {tail(text, 3)}")
        return Result(("sh", "-c", command), status, text)

    def _drain(self, channel, chunks: list[bytes], timeout: float | None, what: str,
               error: type[HarnessError]) -> None:
        """The channel's output into chunks until it closes; on a timeout the command is killed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        channel.settimeout(1.0)
        while True:
            try:
                block = channel.recv(_CHUNK)
            except socket.timeout:
                block = None
            if block == b"":
                return
            if block:
                chunks.append(block)
            if not self.alive():
                raise self.lost(what)
            if deadline is not None and time.monotonic() > deadline:
                channel.close()
                self._kill_group(_split_group(b"".join(chunks))[0], what)
                raise error(f"{what} on host {self.label}: timed out after {timeout:.0f} s")

    def _kill_group(self, group: int | None, what: str) -> None:
        """SIGKILL the process group a timed-out command runs in there (a warning if it cannot)."""
        if group is None:  # no setsid there, or it never started
            log.warning("host %s: %s timed out and may still run there", self.label, what)
            return
        try:
            self.shell(f"kill -KILL -{group}", check=False, timeout=30, what=f"stop {what}")
        except InfraError as exc:  # HostLost too: nothing more can be done from here
            log.warning("host %s: could not stop %s: %s", self.label, what, exc)

    def run(self, argv: Sequence[str | os.PathLike], *, timeout: float | None = None,
            check: bool = True, what: str | None = None,
            error: type[HarnessError] = InfraError, log_file: Path | None = None) -> Result:
        args = tuple(str(a) for a in argv)
        result = self.shell(shlex.join(args), timeout=timeout, check=check,
                            what=what or args[0], error=error, log_file=log_file)
        return Result(args, result.returncode, result.output)

    def spawn(self, argv: Sequence[str | os.PathLike], log_file: Path) -> "RemoteProcess":
        return RemoteProcess(self, [str(a) for a in argv], PurePosixPath(log_file))

    # ------------------------------------------------------------ files

    @property
    def sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None:
                try:
                    self._sftp = self.client.open_sftp() if self.client else None
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise self.lost("opening SFTP", exc) from exc
                if self._sftp is None:
                    raise self.lost("opening SFTP")
            return self._sftp

    def read_bytes(self, path) -> bytes:
        try:
            with self.sftp.open(str(path), "rb") as handle:
                handle.prefetch()
                return handle.read()
        except FileNotFoundError:
            return b""
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not self.alive():
                raise self.lost(f"reading {path}", exc) from exc
            return b""

    def write_bytes(self, path, data: bytes) -> None:
        try:
            with self.sftp.open(str(path), "wb") as handle:
                handle.write(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not self.alive():
                raise self.lost(f"writing {path}", exc) from exc
            raise InfraError(f"host {self.label}: cannot write {path}: {exc}") from exc

    def exists(self, path) -> bool:
        try:
            self.sftp.stat(str(path))
            return True
        except FileNotFoundError:
            return False
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not self.alive():
                raise self.lost(f"looking at {path}", exc) from exc
            return False

    def unlink(self, path) -> None:
        try:
            self.sftp.remove(str(path))
        except FileNotFoundError:
            pass
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not self.alive():
                raise self.lost(f"removing {path}", exc) from exc

    def mkdir(self, path) -> None:
        self.shell(f"mkdir -p {shlex.quote(str(path))}", timeout=30, what="mkdir")

    def path(self, local: Path, run_dir: Path) -> PurePosixPath:
        """Where a file of the run directory lives on this host."""
        return self.workdir / "runs" / run_dir.name / Path(local).relative_to(run_dir).as_posix()

    def collect(self, there, local: Path) -> None:
        """Bring a file back into the run directory (a missing file leaves nothing)."""
        data = self.read_bytes(there)
        if data:
            Path(local).parent.mkdir(parents=True, exist_ok=True)
            Path(local).write_bytes(data)

    # ------------------------------------------------------------ ports

    def free_port(self) -> int:
        out = self.shell("python3 -c 'import socket; s=socket.socket(); "
                         's.bind(("127.0.0.1", 0)); print(s.getsockname()[1])\'',
                         timeout=30, what="find a free port").output
        return int(out.split()[-1])

    def channel_to(self, port: int, timeout: float = CONNECT_TIMEOUT_S) -> paramiko.Channel:
        """A direct-tcpip channel to 127.0.0.1:port on the host."""
        try:
            return self.transport.open_channel("direct-tcpip", ("127.0.0.1", port),
                                               ("127.0.0.1", 0), timeout=timeout)
        except HostLost:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if not self.alive():
                raise self.lost(f"opening a channel to port {port}", exc) from exc
            raise

    def forward(self, port: int) -> "_LocalForward":
        forward = _LocalForward(self, port)
        self._forwards.append(forward)
        return forward

    # ------------------------------------------------------------ shipping

    def put_tree(self, files: Mapping[str, Path], what: str) -> PurePosixPath:
        """Ship files (relative path → local file) into a content-addressed tree; its path."""
        listing = sorted((rel, sha256_file(src, remember=True), _mode(src)) for rel, src in files.items())
        tree_id = hashlib.sha256(repr(listing).encode()).hexdigest()[:24]
        tree = self.workdir / "trees" / tree_id
        if self.exists(tree / ".complete"):
            return tree
        objects = self.workdir / "objects"
        self.shell(f"mkdir -p {shlex.quote(str(objects))}", timeout=30, what="mkdir objects")
        missing = self._missing_objects(objects, {digest for _, digest, _ in listing})
        sources = {digest: files[rel] for rel, digest, _ in listing}
        for digest in sorted(missing):
            self._put_object(objects, digest, sources[digest], what)
        script = ["set -e", f"rm -rf {shlex.quote(str(tree))}.partial"]
        for rel, digest, mode in listing:
            target = f"{tree}.partial/{rel}"
            script.append(f"mkdir -p {shlex.quote(posixpath.dirname(target))}")
            script.append(f"ln -f {shlex.quote(str(objects / digest))} {shlex.quote(target)}")
        script += [f"touch {shlex.quote(str(tree))}.partial/.complete",
                   f"rm -rf {shlex.quote(str(tree))}",
                   f"mv {shlex.quote(str(tree))}.partial {shlex.quote(str(tree))}"]
        self.shell("sh -s", stdin="\n".join(script).encode() + b"\n", timeout=120,
                   what=f"assemble {what}")
        return tree

    def _missing_objects(self, objects: PurePosixPath, digests: set[str]) -> set[str]:
        # the names on stdin: a command line of a few thousand characters is more than
        # some SSH servers take (dropbear's limit is 9000)
        out = self.shell(f'cd {shlex.quote(str(objects))} && while read -r h; do '
                         '[ -e "$h" ] || echo "$h"; done', timeout=60,
                         stdin="".join(f"{d}\n" for d in sorted(digests)).encode(),
                         what="list the shipped files").output
        return {line.strip() for line in out.splitlines() if line.strip()} & digests

    def _put_object(self, objects: PurePosixPath, digest: str, src: Path, what: str) -> None:
        partial = str(objects / f".{digest}.partial")
        try:
            with open(src, "rb") as handle:
                self.sftp.putfo(handle, partial, file_size=os.path.getsize(src), confirm=True)
            self.sftp.chmod(partial, _mode(src))
            self.sftp.posix_rename(partial, str(objects / digest))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not self.alive():
                raise self.lost(f"shipping {what}", exc) from exc
            raise InfraError(f"host {self.label}: cannot ship {src.name} ({what}): {exc}") from exc
        self.shipped_bytes += os.path.getsize(src)


def _close(client: paramiko.SSHClient, sock) -> None:
    """A client and its socket after a failed login."""
    client.close()
    try:
        sock.close()
    except Exception:  # noqa: BLE001 - already closed with the client
        pass


def _in_own_group(command: str) -> str:
    """The shell line that runs command with sh in a session of its own, its process
    group printed first (_split_group reads it off); a host without setsid runs it plainly."""
    quoted = shlex.quote(command)
    return (f"if command -v setsid >/dev/null 2>&1; then exec setsid -w sh -c "
            f"{shlex.quote(_GROUP_LEADER)} harness-cmd {quoted}; else exec sh -c {quoted}; fi")


def _split_group(data: bytes) -> tuple[int | None, bytes]:
    """(the process group a command runs in, its output without the line that says so)."""
    match = _GROUP_LINE.match(data)
    return (int(match.group(1)), data[match.end():]) if match else (None, data)


def _mode(path: Path) -> int:
    return 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644


# ---------------------------------------------------------------- a spawned program


class RemoteProcess:
    """A program on the host under the watchdog (see _WATCHDOG); proc.Process's interface."""

    def __init__(self, host: SSHHost, argv: list[str], log_file: PurePosixPath):
        self.host = host
        self.argv = argv
        self.log_file = log_file
        self.channel: paramiko.Channel | None = None
        self._pid: int | None = None
        self._status: int | None = None
        self._ended = threading.Event()  # the watchdog's channel closed
        self._have_pid = threading.Event()
        self._killed = False

    def start(self) -> "RemoteProcess":
        log.info("start on %s: %s", self.host.label, shlex.join(self.argv))
        command = ("setsid -w sh -c " + shlex.quote(_WATCHDOG) + " harness-watchdog "
                   + shlex.join([str(self.log_file), shlex.join(self.argv), *self.argv]))
        try:
            self.channel = self.host.transport.open_session(timeout=CONNECT_TIMEOUT_S)
            self.channel.exec_command(self.host._command(command))
        except HostLost:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self.host.lost("starting QEMU", exc) from exc
        threading.Thread(target=self._read, daemon=True).start()
        if not self._have_pid.wait(CONNECT_TIMEOUT_S) or self._pid is None:
            self.kill()
            if not self.host.alive():
                raise self.host.lost("starting QEMU")
            raise InfraError(f"host {self.host.label}: could not start {self.argv[0]} "
                             f"(log: {self.log_file}): {tail(self.output(), 2)}")
        return self

    def _read(self) -> None:
        buffer = b""
        try:
            for block in iter(lambda: self.channel.recv(_CHUNK), b""):
                buffer += block
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    word, _, value = line.decode(errors="replace").partition(" ")
                    if word == "pid" and value.strip().isdigit():
                        self._pid = int(value)
                        self._have_pid.set()
                    elif word == "exit" and value.strip().lstrip("-").isdigit():
                        self._status = int(value)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self._ended.set()
            self._have_pid.set()

    def __enter__(self) -> "RemoteProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()

    @property
    def started(self) -> bool:
        return self.channel is not None

    @property
    def pid(self) -> int:
        assert self._pid is not None, "not started"
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited; HostLost if the connection dropped meanwhile."""
        if self._status is not None:
            return self._status
        if self._killed:
            return -9
        if self._ended.is_set() or not self.host.alive():
            raise self.host.lost(f"QEMU's run (pid {self._pid})")
        return None

    def running(self) -> bool:
        return self.started and self._status is None and not self._ended.is_set()

    def wait(self, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._status is None and not self._ended.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return self.returncode

    def stop(self, grace_s: float = 5.0) -> int:
        if self.running() and self._pid:
            self.host.shell(f"kill -TERM {self._pid}", check=False, timeout=30, what="stop QEMU")
            if self.wait(grace_s) is None:
                self.kill()
        return self.returncode if self._status is not None else -9

    def kill(self) -> None:
        """Close the watchdog's stdin: it SIGKILLs the process group; wait for that."""
        if self.channel is None:
            return
        if self._status is None:
            self._killed = True
        try:
            self.channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        self._ended.wait(10.0)
        self.channel.close()

    def output(self) -> str:
        try:
            text = self.host.read_bytes(self.log_file).decode(errors="replace")
        except HostLost:
            return ""
        return text.split("\n", 1)[1] if text.startswith("$ ") and "\n" in text else text

    def cpu_seconds(self) -> float | None:
        """utime + stime of the program from the host's /proc (clock ticks of 1/100 s)."""
        if self._pid is None:
            return None
        result = self.host.shell(f"cat /proc/{self._pid}/stat; getconf CLK_TCK", check=False,
                                 timeout=30, what="read QEMU's CPU time")
        lines = result.output.strip().splitlines()
        if result.returncode != 0 or len(lines) < 2 or ")" not in lines[0]:
            return None
        fields = lines[0].rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / int(lines[-1])


# ---------------------------------------------------------------- port forward


class _LocalForward:
    """127.0.0.1:<port> here ↔ 127.0.0.1:<remote port> on the host, over the SSH connection."""

    def __init__(self, host: SSHHost, remote_port: int):
        self.host = host
        self.remote_port = remote_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self._open: list = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                channel = self.host.channel_to(self.remote_port)
            except Exception:  # noqa: BLE001 - nothing listens there yet: the caller retries
                client.close()
                continue
            self._open += [client, channel]
            threading.Thread(target=_pump, args=(client, channel), daemon=True).start()
            threading.Thread(target=_pump, args=(channel, client), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for end in self._open:
            try:
                end.close()
            except Exception:  # noqa: BLE001
                pass
        if self in self.host._forwards:
            self.host._forwards.remove(self)


def _pump(source, sink) -> None:
    try:
        while True:
            data = source.recv(_CHUNK)
            if not data:
                break
            sink.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        for end in (source, sink):
            try:
                end.close()
            except Exception:  # noqa: BLE001
                pass
