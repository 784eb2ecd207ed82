"""fio jobs inside a Linux guest, over one SSH connection per boot.

The SSH algorithms are pinned for TCG: an emulated guest needs ~20 s for a
curve25519/ed25519 login but ~3 s for RSA keys with diffie-hellman-group14,
so paramiko is told to offer nothing else (dropbear supports both).
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from typing import Any, Callable

import fabric
import paramiko
from invoke.exceptions import CommandTimedOut

from .errors import HostLost, InfraError
from .guest import GuestImage
from .matrix import Workload
from .results import parse_fio_output
from .hosts.sshcmd import run_interruptible
from .util import tail

# paramiko logs every refused attempt while the guest boots as an ERROR with a
# traceback; open_connection reports the last failure itself
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

KEX = "diffie-hellman-group14-sha256"
HOST_KEYS = ("rsa-sha2-256", "rsa-sha2-512")
PUBKEYS = ("rsa-sha2-256",)


class GuestStalled(InfraError):
    """fio ran past its timeout: the session's guest cannot be trusted any more.

    Seen with Debian's QEMU 7.2 and an iothread under TCG: about one boot in
    ten loses a virtio-blk completion and the guest waits for it forever.
    """


@dataclass(frozen=True)
class FioRun:
    json_text: str  # fio's JSON exactly as printed, to be saved as raw output
    data: dict
    guest_cpu_pct: float  # busy share of all guest CPUs over the fio run (/proc/stat)
    seconds: float  # wall time of the fio command as seen from the host


def _disabled_algorithms() -> dict[str, list[str]]:
    transport = paramiko.Transport
    return {
        "kex": [k for k in transport._preferred_kex if k != KEX],
        "keys": [k for k in transport._preferred_keys if k not in HOST_KEYS],
        "pubkeys": [k for k in transport._preferred_pubkeys if k not in PUBKEYS],
    }


def open_connection(port: int, image: GuestImage, timeout: float,
                    host: str = "127.0.0.1",
                    via: Callable[[int], Any] | None = None) -> fabric.Connection:
    """Log into the guest, retrying until `timeout` seconds have passed.

    via: opens a channel to the port on the guest's host (hosts.ssh.SSHHost.channel_to):
    the guest's forward listens on that host's loopback, reached with it as SSH jump.
    """
    deadline = time.monotonic() + timeout
    attempt_timeout = max(5.0, min(30.0, timeout))
    while True:
        conn = None
        try:
            sock = via(port) if via else None
            conn = _connection(host, port, image, attempt_timeout, sock)
            conn.open()
            return conn
        except HostLost:
            raise
        except Exception as exc:  # noqa: BLE001 - the guest may not listen yet
            if conn is not None:
                conn.close()
            if time.monotonic() + 0.5 > deadline:
                raise InfraError(f"cannot SSH into the guest at {host}:{port} as "
                                 f"{image.ssh_user} within {timeout:.0f} s: "
                                 f"{type(exc).__name__}: {exc}") from exc
            time.sleep(0.5)


def _connection(host: str, port: int, image: GuestImage, timeout: float,
                sock=None) -> fabric.Connection:
    config = fabric.Config(ssh_config=paramiko.SSHConfig())
    extra = {"sock": sock} if sock is not None else {}
    return fabric.Connection(
        host, user=image.ssh_user, port=port, config=config, connect_timeout=timeout,
        connect_kwargs={
            "key_filename": [str(image.ssh_key)], "look_for_keys": False,
            "allow_agent": False, "disabled_algorithms": _disabled_algorithms(),
            "banner_timeout": timeout, "auth_timeout": timeout, **extra,
        },
    )


def fio_argv(workload: Workload, runtime_s: int, ramp_s: int,
             device: str | tuple[str, ...] = "/dev/vda", vcpus: int = 1) -> list[str]:
    """The fio command for one point (direct libaio on the raw test disks).

    One device: one job, group_reporting.  Several: the workload's options are
    global and each device is a job of its own (`<label>.d<i>`, iodepth per device),
    reported per job with its latency histogram (json+), which fio_merge sums.  With
    several vCPUs the device jobs are pinned round-robin (device i on vCPU i mod vcpus),
    so that every vCPU submits and the guest's scheduler does not stack them on one."""
    devices = (device,) if isinstance(device, str) else tuple(device)
    options = ["--direct=1", "--ioengine=libaio", f"--rw={workload.rw}", f"--bs={workload.bs}",
               f"--iodepth={workload.iodepth}", f"--numjobs={workload.numjobs}",
               f"--runtime={runtime_s}", f"--ramp_time={ramp_s}", "--time_based"]
    if len(devices) == 1:
        return ["fio", f"--name={workload.label}", f"--filename={devices[0]}", *options,
                "--group_reporting", "--randrepeat=0", "--output-format=json"]
    return ["fio", *options, "--randrepeat=0", "--output-format=json+",
            *device_jobs(workload, devices, vcpus)]


def device_jobs(workload: Workload, paths, vcpus: int = 1) -> list[str]:
    """fio's job options for one job per device (after the global options): its name,
    its file and, with several vCPUs, its vCPU (round-robin)."""
    return [arg for index, path in enumerate(paths)
            for arg in (f"--name={device_job(workload, index)}", f"--filename={path}",
                        *([f"--cpus_allowed={index % vcpus}"] if vcpus > 1 else []))]


def device_job(workload: Workload, index: int) -> str:
    """The fio job name of device `index` (fio_merge groups the per-job results by it)."""
    return f"{workload.label}.d{index}"


def run_fio(conn: fabric.Connection, workload: Workload, runtime_s: int, ramp_s: int,
            timeout: float, device: str | tuple[str, ...] = "/dev/vda",
            vcpus: int = 1) -> FioRun:
    """Run one fio point; the guest's /proc/stat is sampled before and after."""
    fio = shlex.join(fio_argv(workload, runtime_s, ramp_s, device, vcpus))
    command = f"head -n1 /proc/stat >&2; {fio}; rc=$?; head -n1 /proc/stat >&2; exit $rc"
    started = time.monotonic()
    try:
        result = run_interruptible(conn, command, timeout)
    except CommandTimedOut as exc:
        raise GuestStalled(f"fio did not finish within {timeout:.0f} s (the guest or its disk "
                           f"is stalled; reboot before the next point): {fio}") from exc
    except Exception as exc:  # noqa: BLE001 - dropped connections and the like
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InfraError(f"fio in the guest failed ({type(exc).__name__}: {first}): {fio}") from exc
    seconds = time.monotonic() - started
    if result.exited != 0:
        raise InfraError(f"fio in the guest exited with {result.exited}: {fio}: "
                         f"{tail(result.stderr or result.stdout)}")
    data = parse_fio_output(result.stdout)
    # fio may print notes before the JSON: the raw output kept is the JSON itself
    return FioRun(result.stdout[result.stdout.find("{"):], data, guest_cpu_pct(result.stderr),
                  seconds)


def guest_cpu_pct(stat_lines: str) -> float:
    """Busy % from two aggregate 'cpu ' lines of /proc/stat (iowait counts as idle)."""
    samples = [[int(v) for v in line.split()[1:]] for line in stat_lines.splitlines()
               if line.startswith("cpu ")]
    if len(samples) < 2:
        return float("nan")
    delta = [b - a for a, b in zip(samples[0], samples[-1])]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal
    idle = delta[3] + delta[4]
    return 100.0 * (total - idle) / total if total > 0 else float("nan")
