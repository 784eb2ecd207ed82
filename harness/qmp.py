"""The one QMP client: every QEMU the harness or its tests talk to goes through it.

QMP is one JSON object a line over a stream socket: QEMU greets, the client
negotiates (qmp_capabilities), then every command gets one reply, either
{"return": ...} or {"error": {"class": ..., "desc": ...}}, with events
({"event": ...}) in between at any time.  The 2012 tree speaks the same.

The client is synchronous and small: one command at a time, each with its own
deadline, events read and dropped.  Each command carries an `id` and a reply
with another id is skipped, so that a late answer to a command that timed out
is never taken for the next one's.  The address is a unix socket path or a
(host, port) pair: a remote host's QMP comes through an SSH forward, the L2
QEMU's of kvm-nested through a port that L0 forwards into L1.

Transport problems are OSErrors (TimeoutError, ConnectionError); an error
reply is a QMPError.  `quit` is the one command whose reply QEMU may not send:
it can close the connection first, which counts as done.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from typing import Any, Union

from .errors import InfraError

Address = Union[str, os.PathLike, tuple[str, int]]
DEFAULT_TIMEOUT_S = 10.0


class QMPError(InfraError):
    """QEMU answered a command with an error; `error` is QMP's error object."""

    def __init__(self, command: str, error: dict[str, Any]) -> None:
        super().__init__(f"QMP {command}: {error.get('desc', error)}")
        self.command = command
        self.error = error


class QMPClosed(ConnectionError):
    """QEMU closed the connection (or never greeted)."""


class QMP:
    """One QMP connection.  `with QMP(address) as qmp:` connects and always closes."""

    def __init__(self, address: Address, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = address
        self.timeout = timeout  # for each call that names none
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._ids = itertools.count(1)

    def __enter__(self) -> "QMP":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self, timeout: float | None = None) -> None:
        """Connect, read the greeting and negotiate; all within timeout."""
        deadline = self._deadline(timeout)
        self._sock = _open(self.address, _remaining(deadline, "connect"))
        try:
            greeting = self._receive(deadline)
            if "QMP" not in greeting:
                raise QMPClosed(f"not a QMP greeting: {str(greeting)[:200]}")
            self._answer("qmp_capabilities", self._send("qmp_capabilities", {}, deadline),
                         deadline)
        except BaseException:
            self.close()
            raise

    def reply(self, command: str, timeout: float | None = None,
              **arguments: Any) -> dict[str, Any]:
        """The whole reply to one command: {"return": ...} or {"error": ...}."""
        deadline = self._deadline(timeout)
        try:
            return self._answer(command, self._send(command, arguments, deadline), deadline)
        except ConnectionError:
            if command == "quit":  # QEMU may hang up before it answers
                return {"return": {}}
            raise

    def cmd(self, command: str, timeout: float | None = None, **arguments: Any) -> Any:
        """One command's return value; QMPError if QEMU answers with an error."""
        answer = self.reply(command, timeout, **arguments)
        if "error" in answer:
            raise QMPError(command, answer["error"])
        return answer.get("return")

    def hmp(self, command_line: str, timeout: float | None = None) -> str:
        """A human monitor command (`info registers`); what it printed."""
        return str(self.cmd("human-monitor-command", timeout, **{"command-line": command_line}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    # ------------------------------------------------------------ the wire

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _send(self, command: str, arguments: dict[str, Any], deadline: float) -> int:
        if self._sock is None:
            raise QMPClosed("QMP is not connected")
        request_id = next(self._ids)
        message: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments:
            message["arguments"] = arguments
        self._sock.settimeout(_remaining(deadline, command))
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        return request_id

    def _answer(self, command: str, request_id: int, deadline: float) -> dict[str, Any]:
        """The reply with request_id (a reply without an id is QEMU's answer to a
        line it could not parse: ours)."""
        while True:
            message = self._receive(deadline, command)
            if ("return" in message or "error" in message) \
                    and message.get("id", request_id) == request_id:
                return message

    def _receive(self, deadline: float, what: str = "greeting") -> dict[str, Any]:
        """The next JSON object QEMU sends."""
        assert self._sock is not None
        line = b""
        while not line.strip():
            while b"\n" not in self._buffer:
                self._sock.settimeout(_remaining(deadline, what))
                try:
                    data = self._sock.recv(65536)
                except TimeoutError:
                    raise TimeoutError(f"QMP {what}: no answer in time") from None
                if not data:
                    raise QMPClosed(f"QMP {what}: QEMU closed the connection")
                self._buffer += data
            line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"QMP {what}: not a JSON object: {line[:200]!r}")
        return message


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"QMP {what}: no answer in time")
    return left


def _open(address: Address, timeout: float) -> socket.socket:
    """A stream socket connected to a (host, port) pair or a unix socket path."""
    if isinstance(address, tuple):
        return socket.create_connection(address, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(address))
    except BaseException:
        sock.close()
        raise
    return sock
