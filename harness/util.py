"""Small helpers every layer uses: the message callback, UTC timestamps, output tails, a free port."""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from typing import Callable

#: How modules report what they are doing ("cloning ...", "disk ready").  The
#: CLI prints these; tests collect them.  Not a progress bar (see progress.py).
Say = Callable[[str], None]


def quiet(_message: str) -> None:
    """A Say that drops everything."""


def now_iso() -> str:
    """The current UTC time as 2026-01-31T12:00:00Z (result rows, manifests)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp() -> str:
    """The current UTC time for names: 20260131-120000 (run ids)."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def tail(text: str, lines: int = 5, sep: str = " | ") -> str:
    """The last `lines` non-empty lines of text joined by sep (one line by default)."""
    kept = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return sep.join(kept[-lines:])


def one_line(text: str) -> str:
    """Runs of white space (newlines included) folded into single spaces."""
    return " ".join(str(text).split())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
