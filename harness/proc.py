"""The one place that starts external programs.

Every command is an argv list, logged before it runs, with stdin from /dev/null,
its output captured (and optionally appended to a log file), a timeout, and its
own process group so that a timeout or Ctrl-C kills the whole tree.  A failure
becomes an InfraError (or the caller's error class) carrying the command and the
tail of its output.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .errors import HarnessError, InfraError

log = logging.getLogger("harness.proc")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    output: str


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: Sequence[str | os.PathLike],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log_file: Path | None = None,
    check: bool = True,
    error: type[HarnessError] = InfraError,
    what: str | None = None,
) -> Result:
    """Run argv to completion; stdout and stderr are merged.

    check: raise `error` on a non-zero exit.  what: a short description used in
    the error message ("configure baseline").
    """
    args = tuple(str(a) for a in argv)
    log.debug("run: %s (cwd=%s)", shlex.join(args), cwd or ".")
    full_env = None if env is None else {**os.environ, **env}
    sink = open(log_file, "ab") if log_file else None
    try:
        if sink:
            sink.write(f"$ {shlex.join(args)}\n".encode())
            sink.flush()
        proc = subprocess.Popen(
            args, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
    except FileNotFoundError as exc:
        if sink:
            sink.close()
        raise error(f"{what or args[0]}: program not found: {args[0]}") from exc
    chunks: list[bytes] = []
    try:
        out, _ = proc.communicate(timeout=timeout)
        chunks.append(out)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        chunks.append(out or b"")
        _write(sink, chunks)
        raise error(f"{what or args[0]}: timed out after {timeout:.0f} s: {shlex.join(args)}")
    except BaseException:
        kill_group(proc)
        proc.wait()
        _write(sink, chunks)
        raise
    _write(sink, chunks)
    text = b"".join(chunks).decode(errors="replace")
    if check and proc.returncode != 0:
        where = f" (log: {log_file})" if log_file else ""
        raise error(
            f"{what or args[0]} failed with exit code {proc.returncode}{where}: "
            f"{shlex.join(args)}\n{_tail(text)}"
        )
    return Result(args, proc.returncode, text)


def _write(sink, chunks: list[bytes]) -> None:
    if sink:
        sink.write(b"".join(chunks))
        sink.close()


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill a process started with start_new_session=True and all its children."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
