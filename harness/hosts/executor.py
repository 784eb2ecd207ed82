"""Where a VM and its commands run: the executor that proc and vm go through.

An executor is what vm.VM and the runners need from a machine: run a command
to completion, spawn a long-running program (QEMU) in its own process group,
read and write its files, and reach a TCP port on its loopback.  LocalHost
does exactly what the harness always did (proc.run, proc.Process, the local
filesystem); hosts.ssh.SSHHost does the same over SSH.  The VM lifecycle is
written once, against this interface.

`path()` maps a path under the run directory to where that file lives on the
executor's machine (the same path here; the host's work folder there), and
`collect()` brings such a file back into the run directory (a no-op here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..errors import HarnessError, InfraError
from .spec import LOCAL_HOST
from ..proc import Process, Result, run
from ..util import free_port


class Spawned(Protocol):
    """A long-running program: proc.Process's interface."""

    log_file: Path

    def start(self) -> "Spawned": ...
    def running(self) -> bool: ...
    def wait(self, timeout: float | None) -> int | None: ...
    def stop(self, grace_s: float = 5.0) -> int: ...
    def kill(self) -> None: ...
    def output(self) -> str: ...
    def cpu_seconds(self) -> float | None: ...

    @property
    def started(self) -> bool: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def pid(self) -> int: ...


class Executor(Protocol):
    label: str  # the results' host column
    is_local: bool
    #: opens a channel to a TCP port of the executor's loopback (the fio guest's SSH,
    #: jumped through the host's own SSH); None here, where the port is reached directly
    channel_to: Callable[[int], Any] | None

    def run(self, argv: Sequence[str | os.PathLike], *, timeout: float | None = None,
            check: bool = True, what: str | None = None,
            error: type[HarnessError] = InfraError, log_file: Path | None = None) -> Result: ...
    def spawn(self, argv: Sequence[str | os.PathLike], log_file: Path) -> Spawned: ...
    def read_bytes(self, path: Path) -> bytes: ...
    def write_bytes(self, path: Path, data: bytes) -> None: ...
    def exists(self, path: Path) -> bool: ...
    def unlink(self, path: Path) -> None: ...
    def mkdir(self, path: Path) -> None: ...
    def free_port(self) -> int: ...
    def forward(self, port: int) -> "Forward": ...
    def path(self, local: Path, run_dir: Path) -> Path: ...
    def collect(self, there: Path, local: Path) -> None: ...
    def alive(self) -> bool: ...


class Forward(Protocol):
    """A TCP port of the executor's loopback, reachable here at 127.0.0.1:port."""

    port: int

    def close(self) -> None: ...


class _SamePort:
    def __init__(self, port: int):
        self.port = port

    def close(self) -> None:
        pass


class LocalHost:
    """This machine: proc and the local filesystem, exactly as before executors existed."""

    label = LOCAL_HOST
    is_local = True
    channel_to = None

    def run(self, argv, *, timeout=None, check=True, what=None, error=InfraError,
            log_file=None) -> Result:
        return run(argv, timeout=timeout, check=check, what=what, error=error, log_file=log_file)

    def spawn(self, argv, log_file: Path) -> Process:
        return Process(argv, log_file)

    def read_bytes(self, path: Path) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError:
            return b""

    def write_bytes(self, path: Path, data: bytes) -> None:
        Path(path).write_bytes(data)

    def exists(self, path: Path) -> bool:
        return Path(path).exists()

    def unlink(self, path: Path) -> None:
        Path(path).unlink(missing_ok=True)

    def mkdir(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def free_port(self) -> int:
        return free_port()

    def forward(self, port: int) -> _SamePort:
        return _SamePort(port)

    def path(self, local: Path, run_dir: Path) -> Path:
        return Path(local)

    def collect(self, there: Path, local: Path) -> None:
        pass

    def alive(self) -> bool:
        return True


LOCAL = LocalHost()
