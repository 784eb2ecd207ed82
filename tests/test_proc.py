"""The process helpers: output streamed to the log, process groups killed and reaped."""

from __future__ import annotations

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
