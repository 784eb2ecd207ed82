"""The QMP client against a scripted monitor in a thread (no QEMU)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.errors import InfraError
from harness.qmp import QMP, QMPClosed, QMPError

GREETING = {"QMP": {"version": {"qemu": {"major": 1, "minor": 1, "micro": 50}}, "capabilities": []}}
#: what the monitor sends for one request: messages, or None to hang up
Script = Callable[[dict[str, Any]], "list[dict[str, Any]] | None"]


def answer(request: dict[str, Any], **reply: Any) -> dict[str, Any]:
    return {**reply, "id": request["id"]} if "id" in request else reply


def plain(request: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every command returns {}; query-status says running; quit hangs up."""
    if request["execute"] == "quit":
        return None
    if request["execute"] == "query-status":
        return [answer(request, **{"return": {"status": "running"}})]
    return [answer(request, **{"return": {}})]


class Monitor:
    """One QMP connection served from a thread; `requests` records what came in."""

    def __init__(self, listener: socket.socket, script: Script) -> None:
        self.listener = listener
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(json.dumps(GREETING).encode() + b"\r\n")
            for line in lines:
                request = json.loads(line)
                self.requests.append(request)
                messages = self.script(request)
                if messages is None:
                    return
                for message in messages:
                    conn.sendall(json.dumps(message).encode() + b"\r\n")

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def unix_monitor(tmp_path):
    made: list[Monitor] = []

    def start(script: Script = plain) -> Path:
        path = tmp_path / f"qmp{len(made)}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        made.append(Monitor(listener, script))
        return path

    yield start, made
    for monitor in made:
        monitor.close()


@pytest.fixture
def tcp_monitor():
    made: list[Monitor] = []

    def start(script: Script = plain) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        made.append(Monitor(listener, script))
        return listener.getsockname()

    yield start, made
    for monitor in made:
        monitor.close()


def test_unix_socket_negotiates_then_returns_the_value(unix_monitor):
    start, made = unix_monitor
    with QMP(start()) as qmp:
        assert qmp.cmd("query-status") == {"status": "running"}
    names = [r["execute"] for r in made[0].requests]
    assert names == ["qmp_capabilities", "query-status"]
    assert "arguments" not in made[0].requests[1]


def test_tcp_address_and_arguments_on_the_wire(tcp_monitor):
    start, made = tcp_monitor
    with QMP(start()) as qmp:
        qmp.cmd("block_resize", device="disk0", size=1 << 20)
    assert made[0].requests[1]["arguments"] == {"device": "disk0", "size": 1 << 20}


def test_events_and_stale_replies_are_skipped(unix_monitor):
    def noisy(request):
        if request["execute"] != "query-status":
            return plain(request)
        return [{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}},
                {"return": {"status": "stale"}, "id": request["id"] - 1},
                answer(request, **{"return": {"status": "paused"}})]

    start, _ = unix_monitor
    with QMP(start(noisy)) as qmp:
        assert qmp.cmd("query-status") == {"status": "paused"}


def test_error_reply_is_a_qmp_error_and_reply_keeps_it(unix_monitor):
    error = {"class": "DeviceInUse", "desc": "Device 'disk0' is in use"}

    def refusing(request):
        if request["execute"] == "eject":
            return [answer(request, error=error)]
        return plain(request)

    start, _ = unix_monitor
    with QMP(start(refusing)) as qmp:
        reply = qmp.reply("eject", device="disk0", force=True)
        assert reply == {"error": error, "id": 2}
        with pytest.raises(QMPError) as raised:
            qmp.cmd("eject", device="disk0")
    assert isinstance(raised.value, InfraError)
    assert raised.value.error == error and "is in use" in str(raised.value)


def test_hmp_goes_through_human_monitor_command(unix_monitor):
    def hmp(request):
        if request["execute"] == "human-monitor-command":
            printed = f"ran {request['arguments']['command-line']}\r\n"
            return [answer(request, **{"return": printed})]
        return plain(request)

    start, made = unix_monitor
    with QMP(start(hmp)) as qmp:
        assert qmp.hmp("info registers") == "ran info registers\r\n"
    assert made[0].requests[1]["arguments"] == {"command-line": "info registers"}


def test_quit_answered_by_a_hang_up_is_done_other_commands_are_not(unix_monitor):
    start, _ = unix_monitor
    with QMP(start()) as qmp:
        assert qmp.cmd("quit") == {}
    hang_up = lambda request: None if request["execute"] == "system_reset" else plain(request)
    with QMP(start(hang_up)) as qmp, pytest.raises(QMPClosed):
        qmp.cmd("system_reset")


def test_each_call_has_its_own_deadline(unix_monitor):
    def slow(request):
        if request["execute"] == "query-status":
            time.sleep(float(request.get("arguments", {}).get("delay", 0)))
        return plain(request)

    start, _ = unix_monitor
    with QMP(start(slow), timeout=5.0) as qmp:
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            qmp.cmd("query-status", timeout=0.2, delay=1.0)
        assert time.monotonic() - began < 0.9
        # the late answer to the timed-out call is not taken for this one's
        assert qmp.cmd("cont", timeout=5.0) == {}


def test_no_greeting_is_a_closed_connection(tmp_path):
    path = tmp_path / "mute.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    qmp = QMP(path, timeout=5.0)
    with pytest.raises(QMPClosed):
        qmp.connect()
    thread.join(timeout=5)
    listener.close()
