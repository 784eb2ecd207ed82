"""The one place that starts external programs.

Every command is an argv list, logged before it runs, with stdin from
/dev/null and its own process group, so that a timeout or Ctrl-C kills the
whole tree, and it is always reaped.

* run(): a command to completion.  Its output is captured and, with log_file,
  written to the log as it comes (`tail -f` works while make runs).  A
  failure is an InfraError (or the caller's error class) with the command,
  the tail of its output and the log's path.
* Process: a long-running program (QEMU) whose output goes to a log file;
  a context manager that kills and reaps it on the way out.

A harness killed with SIGKILL (or by the OOM killer) runs none of that
cleanup, so every child also dies with it by itself: it starts under a tiny
Python wrapper (_DIE_WITH_PARENT) that sets PR_SET_PDEATHSIG to SIGKILL and
then execs the program, keeping its pid.  A wrapper rather than preexec_fn,
which is not safe in a process with threads.  The kernel sends that signal
when the *thread* that forked the child exits, not the process: run() forks
from the thread that then waits for the child, and every Process is started
by the main thread (local runs and builds run there; the scheduler's worker
threads drive remote hosts, whose programs die with the SSH connection), and
the main thread lives as long as the interpreter.  A Process started from a
thread that ends before it would be killed then.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .errors import HarnessError, InfraError, UserError
from .util import tail

log = logging.getLogger("harness.proc")


#: Runs in the child before the program: argv is the harness's pid, the write end of
#: a pipe that reports a failed exec (closed unread by a successful one), the program.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
parent, report, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:   # PR_SET_PDEATHSIG
    os.write(report, str(ctypes.get_errno()).encode())
    os._exit(127)
if os.getppid() != parent:   # the harness died before prctl: nothing would kill us later
    os._exit(137)
os.set_inheritable(report, False)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    os.write(report, str(exc.errno).encode())
    os._exit(127)
"""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    output: str


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
        try:
            proc = None
            with _start_guard:
                proc = _popen(
                    args, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                )
        except KeyboardInterrupt:
            if proc is not None:  # interrupted as it started: it must not outlive us
                kill_group(proc)
                proc.wait()
            raise
        except FileNotFoundError as exc:
            raise error(f"{what or args[0]}: program not found: {args[0]}") from exc
        chunks = _pump(proc, sink, timeout, what or args[0], error)
    finally:
        if sink:
            sink.close()
    text = b"".join(chunks).decode(errors="replace")
    if check and proc.returncode != 0:
        where = f" (log: {log_file})" if log_file else ""
        raise error(f"{what or args[0]} failed with exit code {proc.returncode}{where}: "
                    f"{tail(text, 3)}")
    return Result(args, proc.returncode, text)


def _popen(args: Sequence[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen of args under _DIE_WITH_PARENT: it dies when this process dies.

    The program keeps the Popen's pid (the wrapper execs it).  Returns once it
    has been exec'd; an OSError (FileNotFoundError, ...) as Popen would raise
    when it cannot be, the wrapper reaped.
    """
    read_end, write_end = os.pipe()
    try:
        wrapper = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()),
                   str(write_end), *args]
        child = subprocess.Popen(wrapper, pass_fds=(write_end,), **kwargs)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    try:
        with open(read_end, "rb") as report:
            failed = report.read()
    except BaseException:   # interrupted before the program started: it must not outlive us
        if kwargs.get("start_new_session"):
            kill_group(child)
        else:
            child.kill()
        child.wait()
        raise
    if failed:
        child.wait()
        code = int(failed)
        raise OSError(code, os.strerror(code), args[0])
    return child


def _pump(proc: subprocess.Popen, sink, timeout: float | None, what: str,
          error: type[HarnessError]) -> list[bytes]:
    """Copy the output to the log as it comes while waiting; kill on timeout or Ctrl-C."""
    chunks: list[bytes] = []

    def copy() -> None:
        for block in iter(lambda: proc.stdout.read1(1 << 16), b""):
            chunks.append(block)
            if sink:
                sink.write(block)
                sink.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
        reader.join()
        raise error(f"{what}: timed out after {timeout:.0f} s") from None
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    finally:
        reader.join(timeout=5)
        proc.stdout.close()
    return chunks


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a process started in its own session and all its children."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class _StartGuard:
    """Holds SIGINT/SIGTERM back while a child is created and its handle stored.

    An interrupt raised inside subprocess.Popen, after the fork but before the
    Popen object is returned, loses the child's pid: nobody could kill it.  The
    CLI's handlers (interrupt_handler) ask `deferring()` first; a signal that
    arrives meanwhile is re-raised as KeyboardInterrupt once the handle is
    stored, so the caller's cleanup sees the child.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth == 0 and self.pending:
            self.pending = False
            raise KeyboardInterrupt


_start_guard = _StartGuard()


def interrupt_handler(signum, frame) -> None:
    """SIGINT and SIGTERM as KeyboardInterrupt, held back while a child is being started."""
    if threading.current_thread() is threading.main_thread() and _start_guard.depth:
        _start_guard.pending = True
        return
    raise KeyboardInterrupt


class Process:
    """A long-running program in its own process group, its output in log_file.

    `with Process(argv, log_file) as p:` starts it; leaving the block kills the
    group (if it still runs) and reaps it, whatever happened inside.
    """

    def __init__(self, argv: Sequence[str | os.PathLike], log_file: Path):
        self.argv = [str(a) for a in argv]
        self.log_file = Path(log_file)
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Process":
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("start: %s", shlex.join(self.argv))
        with open(self.log_file, "wb") as out:
            out.write(f"$ {shlex.join(self.argv)}\n".encode())
            out.flush()
            try:
                with _start_guard:
                    self.popen = _popen(self.argv, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except KeyboardInterrupt:
                self.kill()  # interrupted as it started: it must not outlive us
                raise
            except FileNotFoundError as exc:
                raise UserError(f"program not found: {self.argv[0]}") from exc
        return self

    def __enter__(self) -> "Process":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()

    @property
    def started(self) -> bool:
        return self.popen is not None

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (polled), else None."""
        return None if self.popen is None else self.popen.poll()

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout: float | None) -> int | None:
        """Its exit status, or None if it is still running after timeout seconds."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 5.0) -> int:
        """SIGTERM to the group, SIGKILL after grace_s; the exit status."""
        if self.running():
            kill_group(self.popen, signal.SIGTERM)
            if self.wait(grace_s) is None:
                self.kill()
        return self.popen.wait()

    def kill(self) -> None:
        """SIGKILL of the whole group and reap (a no-op once it has exited)."""
        if self.popen is not None:
            if self.popen.poll() is None:
                kill_group(self.popen)
            self.popen.wait()

    def output(self) -> str:
        """What it has printed so far (the log without the command line)."""
        try:
            text = self.log_file.read_bytes().decode(errors="replace")
        except OSError:
            return ""
        return text.split("\n", 1)[1] if text.startswith("$ ") and "\n" in text else text

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid) if self.popen is not None else None


def split_stat(line: str) -> tuple[int, str, list[str]]:
    """A /proc/PID/stat (or task/TID/stat) line: (id, comm, the fields after comm).

    comm sits between the first '(' and the last ')' and may hold spaces and
    parentheses ("CPU 0/TCG"); the fields list starts at proc(5)'s field 3
    (state), so utime and stime are [11] and [12], ppid [1].
    """
    head, _, rest = line.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    return int(pid_text), comm, rest.split()


def cpu_seconds(pid: int) -> float | None:
    """CPU time of a whole process (all threads, also exited ones) in seconds.

    Reads the process CPU clock (Linux: clockid ((~pid) << 3) | CPUCLOCK_SCHED),
    which is exact and includes the running threads' current slice; falls back
    to utime + stime from /proc/<pid>/stat (clock-tick resolution).  None when
    there is no such process.
    """
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except (OSError, OverflowError):
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = split_stat(stat)[2]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
