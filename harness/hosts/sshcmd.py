"""One command over an SSH connection that Ctrl-C can stop.

invoke (under fabric) answers a KeyboardInterrupt by forwarding it to the
remote command and waiting on, so a run whose command ignores it (fio in a
guest, a QEMU waited on in L1) would go on to its next point.  Here SIGINT or
SIGTERM closes the connection instead, and KeyboardInterrupt is raised once
conn.run has returned (with the channel's -1 or an error).
"""

from __future__ import annotations

import signal
import threading


def run_interruptible(conn, command: str, timeout: float):
    """conn.run(command) with output hidden, no stdin, warn=True; a signal stops it."""
    if threading.current_thread() is not threading.main_thread():
        return conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
    caught: list[int] = []

    def interrupt(signum: int, _frame) -> None:
        caught.append(signum)
        conn.close()

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
    except Exception:  # noqa: BLE001 - closed under it by interrupt(): the signal wins
        if caught:
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt
    return result
