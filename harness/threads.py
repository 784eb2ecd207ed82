"""Where a QEMU process spends its host CPU: per-thread CPU time, by kind of thread.

A sample (`sample(pid)`) is the process's CPU time from /proc/PID/stat
(utime + stime: every thread, those that already exited included) and each
live thread's from /proc/PID/task/TID/stat, with the thread's name (its comm,
the same text as /proc/PID/task/TID/comm; 15 characters at most).  Two
samples give the CPU seconds of each kind of thread between them (`split`):

* ``vcpu``     — the guest's vCPU threads: the thread ids QMP reports
  (`query-cpus` on the 2012 tree, `query-cpus-fast` today: `vcpu_query`,
  `parse_vcpu_threads`; vm.VM asks once at launch, while the guest is paused),
  or by name on a QEMU started with ``-name debug-threads=on``
  (``CPU 0/TCG``, ``CPU 0/KVM``).  Under single-threaded TCG one thread runs
  every vCPU; on the 2012 tree under TCG that is its TCG thread.
* ``main``     — the main loop: the thread whose id is the process id (unless
  it is the only thread QMP names for the vCPUs: then they run in it, and it
  counts as ``vcpu``).  The 2012 tree under TCG with several vCPUs names the
  main thread beside its TCG thread: a vCPU created after the TCG thread
  started keeps the id of the thread that created it (cpus.c sets the ids of
  the vCPUs it finds when it starts), so there it stays ``main``.
* ``iothread`` — the thread that serves the disk outside the main loop: the
  2012 data plane's thread when it is named ``dataplane``, or a modern
  ``-object iothread`` (named ``IO <id>``; not ``IO mon_iothread``, QMP's own).
* ``other``    — everything else (thread-pool workers, call_rcu, a data-plane
  thread without a name) and the remainder below.

Threads come and go between samples: a thread present only in the second
sample counts from zero; a thread present only in the first has exited and
its own time after the first sample cannot be read (the kernel folds it into
the process's total).  The total from /proc/PID/stat is the authority: the
remainder (the total minus the live threads' sum) goes to the kind of the
exited threads when they were all of one kind (the vCPU thread of a guest
that powers off as the END sample is taken), else to ``other``: then
``other`` is the total minus the three named kinds, absorbing the exited
threads and the skew of reading the files one after another (a few clock
ticks; never below zero: when the named threads outrun the total by that
skew, the total is raised to their sum, so the kinds always add up to it).
`CpuSplit.threads_s` keeps the plain sum of the live threads' deltas, so a
test can check how much was left to the remainder.

CPU µs per I/O (`cpu_per_io`, results' cpu_us_per_io* columns) is the CPU
seconds per wall second of the window divided by the I/Os per second the
benchmark reports: a rate over a rate, so the two windows need not coincide.

Resolution: locally nanoseconds — each thread's on-CPU time from
/proc/PID/task/TID/schedstat and the process total from its CPU clock
(clock_gettime on the process; both are the scheduler's sum_exec_runtime), so
a micro-guest point of a tenth of a second still splits cleanly; where either
cannot be read (a fake /proc, a kernel without schedstat), clock ticks
(1/100 s), which want windows of a second or more.  On a remote host (hosts.executor.Executor not local) the same files are read with one
``cat`` over the executor per sample.  Locally each thread's run-queue wait
(/proc/.../schedstat) is read too: `thread_loads` gives a thread's demand (CPU
used plus time spent waiting for a CPU), which says "wants a whole core" on a
host too busy to give it one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .proc import cpu_seconds as process_cpu_seconds
from .proc import split_stat

THREAD_KINDS = ("vcpu", "main", "iothread", "other")
#: The name the series gives its data-plane thread (qemu_thread_create + prctl).
DATAPLANE_THREAD = "dataplane"
#: Modern QEMU's monitor thread is an iothread too, but it serves QMP, not the disk.
MONITOR_IOTHREAD = "IO mon_iothread"
_VCPU_SUFFIXES = ("/TCG", "/KVM", "/HVF", "/WHPX")


@dataclass(frozen=True)
class ThreadTime:
    tid: int
    name: str
    seconds: float  # utime + stime
    waited_s: float = math.nan  # runnable but not running (schedstat's run_delay); NaN unknown


@dataclass(frozen=True)
class Sample:
    """One reading of a process's CPU time, in all and per live thread."""

    pid: int
    total_s: float
    threads: tuple[ThreadTime, ...] = ()


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds between two samples: in all, per kind, and the live threads' sum."""

    total_s: float
    kinds: Mapping[str, float] = field(default_factory=dict)
    threads_s: float = math.nan
    # the two samples and the vCPU ids behind it, for per-thread detail (thread_loads)
    samples: tuple["Sample", "Sample"] | None = field(default=None, compare=False, repr=False)
    vcpu_tids: frozenset[int] = field(default=frozenset(), compare=False, repr=False)
    wall_s: float = math.nan  # the window between the two samples, where the caller knows it

    @classmethod
    def unknown(cls) -> "CpuSplit":
        return cls(math.nan, {kind: math.nan for kind in THREAD_KINDS})

    def loads(self, wall_s: float) -> list["ThreadLoad"]:
        """Each live thread's CPU and demand over the window, in cores ([] if unknown)."""
        if self.samples is None or not _finite(wall_s) or wall_s <= 0:
            return []
        return thread_loads(*self.samples, wall_s, self.vcpu_tids)

    def per_io_us(self, wall_s: float, iops: float) -> dict[str, float]:
        """results' CPU-per-I/O columns: CPU seconds per wall second ÷ I/Os per second, in µs.

        A rate over a rate, so the CPU window and the window the IOPS were measured
        in need not be the same length (fio's ramp, the console's poll interval).
        """
        return cpu_per_io(self.total_s, wall_s, iops, self.kinds)


def cpu_per_io(cpu_s: float, wall_s: float, iops: float,
               kinds: Mapping[str, float] | None = None) -> dict[str, float]:
    """{cpu_us_per_io, cpu_us_per_io_<kind>...}: µs of host CPU per I/O (NaN if unknown)."""
    def per_io(seconds: float) -> float:
        if not (_finite(seconds) and _finite(wall_s) and _finite(iops)) or wall_s <= 0 or iops <= 0:
            return math.nan
        return seconds / wall_s / iops * 1e6

    out = {"cpu_us_per_io": per_io(cpu_s)}
    if kinds is not None:
        out.update({f"cpu_us_per_io_{kind}": per_io(kinds.get(kind, math.nan))
                    for kind in THREAD_KINDS})
    return out


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


# --------------------------------------------------------------------------- reading


def parse_stat(line: str) -> tuple[int, str, int]:
    """(id, comm, utime + stime in ticks) of one /proc/.../stat line (proc.split_stat)."""
    tid, comm, fields = split_stat(line)
    return tid, comm, int(fields[11]) + int(fields[12])


def parse_sample(pid: int, process_stat: str, task_stats: Iterable[str], ticks: int,
                 waits: Mapping[int, float] | None = None) -> Sample:
    """A Sample from the text of /proc/PID/stat and of each /proc/PID/task/*/stat;
    waits: run-queue seconds per thread id (parse_schedstat), where known."""
    _, _, total = parse_stat(process_stat)
    threads = []
    for line in task_stats:
        if line.strip():
            tid, name, used = parse_stat(line)
            threads.append(ThreadTime(tid, name, used / ticks,
                                      (waits or {}).get(tid, math.nan)))
    return Sample(pid, total / ticks, tuple(sorted(threads, key=lambda t: t.tid)))


def parse_schedstat(text: str) -> float:
    """Seconds spent runnable but waiting for a CPU, from /proc/.../schedstat
    ("<on-CPU ns> <run-queue ns> <timeslices>")."""
    return int(text.split()[1]) / 1e9


def schedstat_on_cpu(text: str) -> float:
    """Seconds on a CPU (exact, nanoseconds) from /proc/.../schedstat."""
    return int(text.split()[0]) / 1e9


def precise(coarse: Sample, on_cpu: Mapping[int, float], total_s: float | None) -> Sample:
    """coarse with nanosecond times where every live thread's schedstat was read and the
    process CPU clock answered (both count the scheduler's sum_exec_runtime)."""
    if total_s is None or any(t.tid not in on_cpu for t in coarse.threads):
        return coarse
    threads = tuple(ThreadTime(t.tid, t.name, on_cpu[t.tid], t.waited_s) for t in coarse.threads)
    return Sample(coarse.pid, total_s, threads)


def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def sample(pid: int, proc_root: str | os.PathLike = "/proc") -> Sample | None:
    """Read the process and its threads now; None when the process is gone.

    A thread that exits while the directory is being read is left out.
    """
    root = Path(proc_root) / str(pid)
    try:
        process_stat = (root / "stat").read_text()
        tids = os.listdir(root / "task")
    except OSError:
        return None
    lines, waits, on_cpu = [], {}, {}
    for tid in tids:
        try:
            lines.append((root / "task" / tid / "stat").read_text())
        except OSError:
            continue  # exited between listdir and read
        try:
            schedstat = (root / "task" / tid / "schedstat").read_text()
            waits[int(tid)] = parse_schedstat(schedstat)
            on_cpu[int(tid)] = schedstat_on_cpu(schedstat)
        except (OSError, ValueError, IndexError):
            pass  # a kernel without schedstat: waits stay unknown, times in ticks
    coarse = parse_sample(pid, process_stat, lines, _ticks(), waits)
    total = process_cpu_seconds(pid) if Path(proc_root) == Path("/proc") else None
    return precise(coarse, on_cpu, total)


_REMOTE_SCRIPT = "getconf CLK_TCK; cat /proc/{pid}/stat; cat /proc/{pid}/task/*/stat 2>/dev/null"


def sample_on(host, pid: int | None) -> Sample | None:
    """sample() on the executor's machine (hosts.executor.Executor); None if it cannot be read."""
    if pid is None:
        return None
    if getattr(host, "is_local", True):
        return sample(pid)
    result = host.run(["sh", "-c", _REMOTE_SCRIPT.format(pid=int(pid))], check=False,
                      timeout=30, what="read QEMU's thread CPU times")
    lines = result.output.strip().splitlines()
    if result.returncode != 0 or len(lines) < 2 or not lines[0].strip().isdigit():
        return None
    try:
        return parse_sample(pid, lines[1], lines[2:], int(lines[0]))
    except (ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- kinds


def classify(tid: int, name: str, pid: int, vcpu_tids: Iterable[int] = ()) -> str:
    """The kind (THREAD_KINDS) of one thread; see the module docstring."""
    vcpus = set(vcpu_tids)
    if name.startswith("CPU ") and name.endswith(_VCPU_SUFFIXES):
        return "vcpu"
    if tid == pid:
        return "vcpu" if vcpus == {pid} else "main"
    if tid in vcpus:
        return "vcpu"
    if name == DATAPLANE_THREAD or (name.startswith("IO ") and name != MONITOR_IOTHREAD):
        return "iothread"
    return "other"


def split(before: Sample | None, after: Sample | None,
          vcpu_tids: Iterable[int] = (), wall_s: float = math.nan) -> CpuSplit:
    """CPU seconds between two samples of one process, per kind (module docstring);
    wall_s: the time between them, kept with the split."""
    if before is None or after is None or before.pid != after.pid:
        return CpuSplit.unknown()
    vcpus = frozenset(vcpu_tids)
    start = {t.tid: t.seconds for t in before.threads}
    kinds = {kind: 0.0 for kind in THREAD_KINDS}
    live = 0.0
    for thread in after.threads:
        delta = max(0.0, thread.seconds - start.get(thread.tid, 0.0))
        live += delta
        kinds[classify(thread.tid, thread.name, after.pid, vcpus)] += delta
    total = max(0.0, after.total_s - before.total_s)
    remainder = total - live
    alive = {t.tid for t in after.threads}
    exited = {classify(t.tid, t.name, before.pid, vcpus)
              for t in before.threads if t.tid not in alive}
    if remainder > 0 and len(exited) == 1 and exited != {"other"}:
        # only threads of one kind exited (a vCPU thread as QEMU powers off): theirs
        kinds[exited.pop()] += remainder
    else:
        named = kinds["vcpu"] + kinds["main"] + kinds["iothread"]
        # the threads are read after the total: by a few ms they can outrun it
        total = max(total, named)
        kinds["other"] = total - named
    return CpuSplit(total, kinds, live, (before, after), vcpus, wall_s)


def exited(before: Sample | None, after: Sample | None) -> bool:
    """Some thread of `before` is gone in `after` (QEMU powering off, say)."""
    if before is None or after is None:
        return False
    alive = {t.tid for t in after.threads}
    return any(t.tid not in alive for t in before.threads)


def has_thread(sample_: Sample | None, name: str) -> bool:
    return sample_ is not None and any(t.name == name for t in sample_.threads)


@dataclass(frozen=True)
class ThreadLoad:
    """One thread over a window, in cores: what it used and what it wanted.

    `demand` adds the time it sat runnable waiting for a CPU: on a busy host a
    thread that spins shows a demand near 1 even when it got less.
    """

    tid: int
    name: str
    kind: str
    cores: float
    demand: float


def thread_loads(before: Sample, after: Sample, wall_s: float,
                 vcpu_tids: Iterable[int] = ()) -> list[ThreadLoad]:
    """Each thread alive in `after`: its CPU (and demand) over the window, in cores."""
    vcpus = frozenset(vcpu_tids)
    start = {t.tid: t for t in before.threads}
    loads = []
    for thread in after.threads:
        first = start.get(thread.tid)
        used = thread.seconds - (first.seconds if first else 0.0)
        waited = thread.waited_s - (first.waited_s if first else 0.0)
        loads.append(ThreadLoad(thread.tid, thread.name,
                                classify(thread.tid, thread.name, after.pid, vcpus),
                                used / wall_s, (used + waited) / wall_s))
    return loads


# --------------------------------------------------------------------------- QMP


def parse_vcpu_threads(answer) -> tuple[int, ...]:
    """Thread ids from a query-cpus (`thread_id`) or query-cpus-fast (`thread-id`) answer."""
    tids = []
    for cpu in answer or ():
        value = cpu.get("thread-id", cpu.get("thread_id")) if isinstance(cpu, dict) else None
        if isinstance(value, int) and value > 0:
            tids.append(value)
    return tuple(tids)


def vcpu_query(legacy: bool) -> str:
    """The QMP command that names the vCPU threads in this dialect (qemuinfo.QemuInfo.legacy)."""
    return "query-cpus" if legacy else "query-cpus-fast"
