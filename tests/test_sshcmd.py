"""Ctrl-C during a command over SSH (sshcmd.run_interruptible) stops the run."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from harness.fio_jobs import run_fio
from harness.matrix import Workload



@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_fio_in_a_guest_stops_the_run(signum):
    """run_fio goes through sshcmd: Ctrl-C closes the SSH connection and interrupts,
    where invoke alone would forward it to the guest's fio and wait on."""
    class Conn:
        closed = False

        def run(self, command, **_kw):
            os.kill(os.getpid(), signum)      # arrives while fio runs
            return SimpleNamespace(exited=-1, stdout="", stderr="")

        def close(self):
            self.closed = True

    conn = Conn()
    with pytest.raises(KeyboardInterrupt):
        run_fio(conn, Workload("randread", "4k", 1, 1), 3, 1, 60)
    assert conn.closed
