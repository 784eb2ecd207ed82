"""One benchmark point with the micro-guest: boot it, time it, parse its result."""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace

from ..accel import Accel
from ..config import VariantSpec
from ..matrix import Workload
from ..hosts.executor import LOCAL, Executor
from ..threads import CpuSplit, Sample, exited
from ..vm import VM, QemuExited
from .cmdline import DEFAULT_MEMORY_MB, guest_cmdline, microguest_spec
from .elf import build_microguest
from .output import BEGIN_MARK, END_MARK, RESULT_PREFIX, MicroResult, parse_result

#: How long a guest that reported may take to power off by itself.
POWER_OFF_S = 10.0


def run_microguest_point(binary: str | os.PathLike, accel: Accel | str,
                         disk_path: str | os.PathLike, variant: VariantSpec, workload: Workload,
                         requests: int, wait: str, console_log: str | os.PathLike,
                         timeout: float, *, memory_mb: int = DEFAULT_MEMORY_MB,
                         verify: bool = False, seed: int = 1, warmup: int = 0,
                         kernel: str | os.PathLike | None = None,
                         legacy: bool | None = None, host: Executor = LOCAL,
                         extra: tuple[str, ...] = (), kick: str = "honour",
                         disks: int = 1) -> MicroResult:
    """Boot the micro-guest for one point and return its parsed result.

    Host CPU is QEMU's process CPU time (all threads) between the guest's
    BEGIN and END marks divided by the wall time between them, sampled when
    the console shows them (polled every 5 ms, so use runs of a second or more;
    a run that ends within one poll gets NaN).  At the same marks QEMU's threads
    are sampled: `cpu` is the CPU seconds per thread kind between them (threads.py),
    which micro_row turns into CPU µs per I/O.  InfraError (naming the log) when
    no result line appears before the timeout or QEMU dies first.  host: where QEMU
    runs (console_log and the paths are paths there).  extra: more QEMU arguments
    (the trace flavour's -trace).  disks: how many virtio-blk devices the guest drives
    (the first is disk_path; the caller attaches the others through extra).
    """
    cmdline = guest_cmdline(workload, requests, wait, verify=verify, seed=seed, warmup=warmup,
                            kick=kick, disks=disks)
    spec = microguest_spec(binary, accel, disk_path, variant, cmdline, console_log,
                           kernel=kernel or build_microguest(), memory_mb=memory_mb,
                           legacy=legacy)
    if extra:
        spec = replace(spec, extra=spec.extra + tuple(extra))
    marks: dict[str, tuple[float, float | None]] = {}
    samples: dict[str, tuple[float, Sample | None]] = {}
    with VM(spec, host=host) as vm:
        def reported(text: str) -> bool:
            now = time.monotonic()
            if "begin" not in marks and BEGIN_MARK in text:
                marks["begin"] = (now, vm.process.cpu_seconds())
                samples["begin"] = (now, vm.thread_sample())
            elif "begin" in marks and "end" not in marks and host.is_local:
                samples["last"] = (now, vm.thread_sample())  # in case END comes too late
            if "end" not in marks and (END_MARK in text or RESULT_PREFIX in text):
                marks["end"] = (now, vm.process.cpu_seconds())
                samples["end"] = (now, vm.thread_sample())
            return RESULT_PREFIX in text and text.rstrip("\x00").endswith("\n")

        try:
            text = vm.wait_until(reported, timeout, "micro-guest result", poll_s=0.005)
            status = vm.wait_exit(POWER_OFF_S)
        except QemuExited:
            text, status = vm.console(), vm.returncode
            if parse_result(text) is None:
                raise
        if status is None:
            status = vm.shutdown()
        cpu = _thread_split(vm, samples)
    result = parse_result(text)
    return replace(result, **_cpu_share(marks), cpu=cpu, exit_status=status,
                   log=str(spec.console_log))


def _thread_split(vm: VM, samples: dict[str, tuple[float, Sample | None]]) -> CpuSplit:
    """QEMU's CPU per thread kind from BEGIN to END.  When the guest powered off before
    the END sample (its threads already gone, their time unsplittable), the last sample
    before END, at most one console poll earlier, closes the window instead."""
    begin, end = samples.get("begin"), samples.get("end")
    if begin is None or end is None:
        return CpuSplit.unknown()
    last = samples.get("last")
    if exited(begin[1], end[1]) and last is not None and last[0] > begin[0] \
            and not exited(begin[1], last[1]):
        end = last
    if end[0] <= begin[0]:
        return CpuSplit.unknown()
    return vm.cpu_split(begin[1], end[1], end[0] - begin[0])


def _cpu_share(marks: dict[str, tuple[float, float | None]]) -> dict[str, float]:
    begin, end = marks.get("begin"), marks.get("end")
    if not (begin and end and end[0] > begin[0]):
        return {"host_cpu_pct": math.nan, "wall_s": math.nan}
    wall = end[0] - begin[0]
    cpu = math.nan
    if begin[1] is not None and end[1] is not None:
        cpu = (end[1] - begin[1]) / wall * 100
    return {"host_cpu_pct": cpu, "wall_s": wall}



