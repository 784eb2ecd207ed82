"""fio on the host against the test images: the reference a guest is measured beside.

Rows have guest "host", variant results.HOST_VARIANT and accel "host";
host_cpu_pct is fio's usr+sys, cpu_us_per_io that divided by fio's IOPS (fio's
own CPU per I/O; no thread split, the other CPU-per-I/O columns stay empty).

A config whose guests attach several devices (disks_per_guest) gets a ceiling
at every such count N: fio with one job per image on the N images a guest's
devices use (devices.image_paths), each job the workload's iodepth and
numjobs, reported per job and summed as a guest's row is (fio_merge).  The
storage then has the same number of submitters as the guest gives it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..config import parse_size
from ..devices import device_counts, image_paths
from ..errors import InfraError, UserError
from ..fio_jobs import device_jobs
from ..matrix import Point, Workload, workloads
from ..hosts.executor import LOCAL, Executor
from ..results import HOST_VARIANT, parse_fio_output, row_from_fio
from ..threads import cpu_per_io
from ..runstate import Advance, Run, fail_points, host_lost, is_host_lost
from ..util import Say, now_iso


def host_fio_argv(disk_paths: tuple[Path, ...], workload: Workload, runtime_s: int,
                  size_bytes: int) -> list[str]:
    """fio on the images (libaio, O_DIRECT): one job for one image, else one per image."""
    options = ["--direct=1", "--ioengine=libaio", f"--rw={workload.rw}",
               f"--bs={parse_size(workload.bs)}", f"--iodepth={workload.iodepth}",
               f"--numjobs={workload.numjobs}", "--time_based", f"--runtime={runtime_s}",
               f"--size={size_bytes}"]
    if len(disk_paths) == 1:
        return ["fio", "--name=ceiling", f"--filename={disk_paths[0]}", *options,
                "--group_reporting", "--output-format=json"]
    return ["fio", *options, "--output-format=json+", *device_jobs(workload, disk_paths)]


def host_fio_ceiling(disk_path: str | os.PathLike, workload: Workload, runtime_s: int, *,
                     run_id: str = "", disk: str | None = None, rep: int = 1,
                     log_file: Path | None = None, host: Executor = LOCAL,
                     size_bytes: int | None = None, devices: int = 1) -> dict[str, Any]:
    """One row: fio on the host against the first `devices` images of disk_path.

    host: where the images are and fio runs (hosts/check.py makes sure a remote host has
    fio); size_bytes: each image's (stat()ed when None, which only a local host allows).
    """
    if host.is_local and not shutil.which("fio"):
        raise UserError("the host fio ceiling needs fio (install the Debian package fio)")
    paths = image_paths(Path(disk_path), devices)
    size = size_bytes or paths[0].stat().st_size
    started = now_iso()
    result = host.run(host_fio_argv(paths, workload, runtime_s, size),
                      timeout=runtime_s + 120, log_file=log_file, what="host fio ceiling")
    fio_json = parse_fio_output(result.output)
    jobs = fio_json.get("jobs") or [{}]
    # usr+sys per job in % of one CPU: together, fio's share of the cores
    cpu = sum(float(j.get("usr_cpu", 0.0)) + float(j.get("sys_cpu", 0.0)) for j in jobs)
    row = row_from_fio(fio_json, run_id=run_id, guest="host", variant=HOST_VARIANT,
                       accel="host", disk=disk or paths[0].name, workload=workload, rep=rep,
                       guest_cpu_pct=None, host_cpu_pct=cpu, log=str(log_file or ""),
                       started_at=started, devices=devices)
    # fio's usr+sys (% of one CPU over its runtime) ÷ its IOPS: no threads to split
    row["cpu_us_per_io"] = cpu_per_io(cpu / 100.0, 1.0, row["iops"])["cpu_us_per_io"]
    return row


def host_points(run: Run) -> list[Point]:
    """The host-ceiling points of the run not yet finished ok."""
    done = run.writer.done_keys()
    points = [Point("host", HOST_VARIANT, disk.name, workload, rep, devices)
              for rep in range(1, run.config.min_repetitions + 1)
              for disk in run.config.disks for devices in device_counts(run.config)
              for workload in workloads(run.config)]
    return [p for p in points if p.key not in done]


def run_host_ceiling(run: Run, say: Say, advance: Advance,
                     points: list[Point] | None = None) -> None:
    """fio on the host against each image, every workload and repetition (or `points`)."""
    for point in host_points(run) if points is None else points:
        log_file = run.log_path(f"{point.key}.fio.json")
        watch = run.watch.start()
        try:
            row = host_fio_ceiling(run.disks[point.disk], point.workload,
                                   run.config.workloads.runtime_s, run_id=run.run_id,
                                   disk=point.disk, rep=point.rep, log_file=log_file,
                                   host=run.host, size_bytes=_disk_size(run, point.disk),
                                   devices=point.devices)
            row["log"] = run.relative(log_file)
            run.writer.append({**row, **run.watch.stop(watch).columns()})
        except InfraError as exc:
            if is_host_lost(run, exc):
                raise host_lost(run, exc) from exc
            say(f"{point.key}: failed: {exc}")
            fail_points(run, [point], str(exc), log_file)
        advance(point.key)


def _disk_size(run: Run, name: str) -> int | None:
    """The image's size from the config (a remote image cannot be stat()ed from here)."""
    return None if run.host.is_local else next(d.size_bytes for d in run.config.disks
                                                 if d.name == name)
