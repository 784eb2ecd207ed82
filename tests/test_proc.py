"""The process helpers: output streamed to the log, process groups killed and reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.errors import InfraError, UserError
from harness.proc import Process, run


def test_the_log_is_written_while_the_command_runs(tmp_path):
    log = tmp_path / "build.log"
    seen: list[str] = []

    def watch() -> None:
        time.sleep(1.0)  # the command is sleeping now, between its two lines
        seen.append(log.read_text())

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = run(["sh", "-c", "echo first; sleep 3; echo second"], log_file=log)
    watcher.join()
    assert seen[0].splitlines()[1:] == ["first"]  # tail -f would have shown it
    assert result.output == "first\nsecond\n"
    assert log.read_text().splitlines() == ["$ sh -c 'echo first; sleep 3; echo second'",
                                            "first", "second"]


def test_a_failure_is_one_line_with_the_log(tmp_path):
    log = tmp_path / "x.log"
    with pytest.raises(InfraError) as caught:
        run(["sh", "-c", "echo step; echo broken >&2; exit 3"], log_file=log, what="make x")
    message = str(caught.value)
    assert message.startswith("make x failed with exit code 3") and str(log) in message
    assert "broken" in message and "\n" not in message


def test_a_timeout_kills_the_whole_group(tmp_path):
    marker = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(InfraError, match="timed out after 1 s"):
        run(["sh", "-c", f"sleep 60 & echo $! > {marker}; wait"], timeout=1)
    assert time.monotonic() - started < 20
    child = int(marker.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_process_is_reaped_on_the_way_out(tmp_path):
    with Process(["sh", "-c", "echo hello; sleep 60"], tmp_path / "p.log") as process:
        time.sleep(0.3)
        assert process.running() and process.output() == "hello\n"
        assert process.cpu_seconds() is not None
    assert process.returncode == -9 and not process.running()
    with pytest.raises(UserError, match="program not found"):
        Process(["/no/such/qemu"], tmp_path / "q.log").start()


def test_an_interrupt_while_a_child_starts_does_not_lose_it(tmp_path, monkeypatch):
    """A SIGINT/SIGTERM that lands inside Popen is held until the handle exists;
    then the child is killed and reaped before the KeyboardInterrupt goes on."""
    import signal
    import subprocess as sp

    from harness import proc as proc_mod

    real_popen = sp.Popen
    started: list[sp.Popen] = []

    def popen_hit_by_signal(*args, **kwargs):
        child = real_popen(*args, **kwargs)
        started.append(child)
        proc_mod.interrupt_handler(signal.SIGINT, None)  # as if the signal came now
        return child

    monkeypatch.setattr(proc_mod.subprocess, "Popen", popen_hit_by_signal)
    process = proc_mod.Process(["sleep", "30"], tmp_path / "sleep.log")
    with pytest.raises(KeyboardInterrupt):
        process.start()
    assert started and started[0].poll() is not None  # killed and reaped
    with pytest.raises(KeyboardInterrupt):
        proc_mod.run(["sleep", "30"])
    assert len(started) == 2 and started[1].poll() is not None
    with pytest.raises(KeyboardInterrupt):  # outside a start, the handler interrupts at once
        proc_mod.interrupt_handler(signal.SIGTERM, None)


# the parent of test_children_die_with_a_killed_harness: it starts a child through
# proc (argv[1]: "process" or "run"), prints the child's pid, then waits to be killed
_PARENT = """
import sys, threading, time
from pathlib import Path
from harness.proc import Process, run

how, folder = sys.argv[1], Path(sys.argv[2])
if how == "process":
    child = Process(["sleep", "300"], folder / "child.log").start()
    print(child.pid, flush=True)
else:
    pid_file = folder / "child.pid"
    threading.Thread(target=run, args=(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 300"],),
                     daemon=True).start()
    while not pid_file.exists() or not pid_file.read_text().strip():
        time.sleep(0.05)
    print(pid_file.read_text().strip(), flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    """No such process, or only a zombie (nobody reaps it in some containers)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["process", "run"])
def test_children_die_with_a_killed_harness(tmp_path, how):
    """SIGKILL (or the OOM killer) gives the harness no chance to clean up: its
    children must die with it by themselves (PR_SET_PDEATHSIG)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root),
                                                        os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, how, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = not _gone(child)
    if alive:
        os.kill(child, signal.SIGKILL)   # not left behind by the test either
    assert not alive, f"child {child} outlived its killed parent"
