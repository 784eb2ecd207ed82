"""Commands on a remote host (remote.SSHHost) against a real OpenSSH server on 127.0.0.1.

No QEMU here (tests/test_remote.py runs the benchmark through hosts): a
command that times out is killed there, its log is written however it ended,
and a prepared test image is reused.  The "host" is this machine behind its
own sshd, so what the commands left running is visible in /proc.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from harness.config import DiskSpec
from harness.errors import InfraError
from harness.fleet.prepare import prepare_disk_there
from harness.hosts.spec import HostSpec
from harness.hosts.ssh import SSHHost
from procs import processes_mentioning
from sshd import make_sshd, own_ssh_files, sshd_missing


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A connected SSHHost on a test sshd whose key the user knows; ssh files in a temporary place."""
    missing = sshd_missing()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("remote-commands")
    with own_ssh_files(root):
        server = make_sshd(root / "sshd").start().trust()
        try:
            with SSHHost(HostSpec.model_validate(server.host_yaml(root / "work"))) as connected:
                yield connected
        finally:
            server.stop()


def _running(pid: int) -> bool:
    """A process that is neither gone nor a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False




def _gone_within(pids: list[int], seconds: float) -> list[int]:
    """The pids still running after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _running(p)]


@pytest.mark.timeout(60)
def test_a_timed_out_command_is_killed_there_and_its_log_kept(host, tmp_path):
    """A remote fio or dd that overran its timeout must not go on beside the next
    point: the command and its children are killed; the log has what it printed."""
    token = f"harness-timeout-test-{os.getpid()}-{time.monotonic_ns()}"
    log = tmp_path / "fio.log"
    started = time.monotonic()
    with pytest.raises(InfraError, match="timed out after 2 s"):
        host.run(["sh", "-c", f"sleep 300 & echo child $!; wait; : {token}"], timeout=2,
                 log_file=log, what="host fio ceiling")
    assert time.monotonic() - started < 20
    left = _gone_within(processes_mentioning(token), 5)
    text = log.read_text() if log.exists() else ""
    child = re.search(r"child (\d+)", text)
    if child:
        left += _gone_within([int(child.group(1))], 5)
    for pid in left:                 # not left behind by the test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running there after the timeout: {left}"
    assert text.startswith(f"$ sh -c 'sleep 300 & echo child $!; wait; : {token}'")
    assert child and "timed out after 2 s" in text


@pytest.mark.timeout(60)
def test_a_failed_command_leaves_its_log(host, tmp_path):
    """A failed host-fio row names its log: the log must exist with what was printed."""
    log = tmp_path / "fio.log"
    with pytest.raises(InfraError, match="failed with exit code 3"):
        host.run(["sh", "-c", "echo fio: cannot open the disk >&2; exit 3"], log_file=log,
                 what="host fio ceiling")
    lines = log.read_text().splitlines()
    assert lines[0].startswith("$ sh -c ") and "fio: cannot open the disk" in lines[1:]
    result = host.run(["sh", "-c", "echo fine"], log_file=log)
    assert result.output == "fine\n" and log.read_text().endswith("fine\n")


@pytest.mark.timeout(120)
def test_an_image_of_no_whole_mib_is_made_once_and_reused(host, tmp_path):
    """An image size that is not a multiple of 1 MiB is filled to the byte, so the
    next run finds it complete instead of filling it again."""
    disk = DiskSpec(name="odd", path=tmp_path / "odd.img", size="16388k")  # 16 MiB + 4 KiB
    said: list[str] = []
    prepare_disk_there(host, disk, said.append)
    first = os.stat(disk.path)
    assert first.st_size == disk.size_bytes
    prepare_disk_there(host, disk, said.append)
    again = os.stat(disk.path)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
