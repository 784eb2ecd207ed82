"""`harness bench`: run a config's matrix and keep every finished point.

The flow is one way: config → variants' binaries → run directory (new, or
resumed with the same config) → guests → accelerator → disks → sessions (one
boot each, through the runners) → rows in results.csv → report.

* A point that fails (guest does not boot, SSH or fio fails, a timeout)
  becomes a failed row with its log's path and the run goes on; at the end
  PointsFailed names them (exit code 3).
* A UserError (say, a guest that cannot fit in its memory) is the same for
  every boot: the run stops at once (exit code 2).
* A UserError before anything was measured leaves no run behind: the new run
  directory goes (a resumed one, or one with rows, always stays).
* Ctrl-C or SIGTERM stops after writing what has finished; `--resume RUN`
  goes on from there, retrying failed points (their rows are replaced).
"""

from __future__ import annotations

import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from .accel import TCG, accel_named
from .accelprobe import choose_accel, probe_for
from .build import built_binary
from .config import BenchConfig, VariantSpec, load_config
from .errors import PointsFailed, UserError
from .guest import GuestAssets
from .devices import ensure_images_space, most_devices, prepare_images
from .hostinfo import disturbers
from .hostload import PointWatch, wait_for_quiet
from .fleet.prepare import prepare_host
from .hosts.spec import merge_hosts
from .manifest_writer import read_run_manifest, write_manifest
from .matrix import Session, plan, skipped
from .microguest.elf import build_microguest
from .nested.host import L1Provider
from .paths import cache_dir, results_dir
from .progress import RunProgress
from .qemuinfo import qemu_info
from .report import write_report
from .results_writer import ResultsWriter
from .rounds import (adaptive_guests, as_sessions, by_round, disturbed_points, round_wanted,
                     run_off_target)
from .runners import make_runner
from .runners.ceiling import host_points, run_host_ceiling
from .runners.fio import linux_image
from .runners.micro import hostile_todo, run_hostile
from .runners.nested import run_hostile as run_hostile_nested
from .runners.trace import ensure_trace_builds
from .runstate import Run
from .fleet.scheduler import Scheduler, Unit, units
from .util import Say, stamp


def resolve_binary(variant: VariantSpec) -> Path:
    """A built variant's binary, or a system QEMU; a UserError says how to get it."""
    if variant.build:
        return built_binary(cache_dir(), variant.build)
    found = shutil.which(variant.binary) if "/" not in variant.binary else variant.binary
    if not found or not Path(found).exists():
        raise UserError(f"variant {variant.name!r}: QEMU binary {variant.binary!r} not found "
                        "(apt-get install qemu-system-x86, or give its full path)")
    return Path(found)


def find_run(run: str) -> Path:
    """A run given by path or by its name under results/."""
    for candidate in (Path(run), results_dir() / run):
        if (candidate / "results.csv").exists() or (candidate / "manifest.json").exists():
            return candidate
    raise UserError(f"no run {run!r}: give a results/<run-id> directory (ls results/)")


def new_run_dir(config: BenchConfig, config_path: Path) -> Path:
    run_dir = results_dir() / f"{config.name}-{stamp()}"
    run_dir.mkdir(parents=True, exist_ok=False)
    shutil.copy(config_path, run_dir / "config.yaml")
    return run_dir


@contextmanager
def discarded_unless_measured(run_dir: Path, fresh: bool) -> Iterator[None]:
    """On a UserError, a fresh run directory without rows is removed (nothing to report).

    fresh: new_run_dir made it for this run; a resumed run's directory always stays.
    """
    try:
        yield
    except UserError:
        if fresh and not measured(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def measured(run_dir: Path) -> bool:
    """Whether a CSV of the run (results.csv, hostile.csv, …) holds a row, even a malformed one."""
    return any(_has_rows(path) for path in run_dir.glob("*.csv"))


def _has_rows(path: Path) -> bool:
    """A line after the header."""
    with open(path, "rb") as handle:
        handle.readline()
        return any(line.strip() for line in handle)


def resumed_run_dir(config: BenchConfig, resume: str) -> Path:
    """The run to go on with; a UserError if its config differs from this one."""
    run_dir = find_run(resume)
    ResultsWriter(run_dir).check_resumable()
    recorded = run_dir / "config.yaml"
    if not recorded.exists():
        raise UserError(f"run {run_dir.name} has no config.yaml, so --resume cannot check "
                        "that it used this config; start a new run")
    differences = load_config(recorded).differences(config)
    if differences:
        raise UserError(f"--resume {run_dir.name}: the config differs from the run's in "
                        f"{', '.join(differences)}; use the run's config ({recorded}) "
                        "or start a new run")
    return run_dir


def prepare_guests(config: BenchConfig, say: Say) -> GuestAssets:
    images = {g.id: linux_image(g, say) for g in config.guests if g.kind != "microguest"}
    wants_micro = config.hostile or any(g.kind == "microguest" for g in config.guests)
    return GuestAssets(images, build_microguest() if wants_micro else None)


def prepare(config: BenchConfig, config_path: Path, resume: str | None, accel: str | None,
            say: Say, remote: bool = False) -> tuple[Run, GuestAssets]:
    """Everything resolved and checked before the first boot.

    remote: the points run on hosts (fleet.prepare.prepare_host does their disks and accel).
    """
    ensure_trace_builds(config, say)
    binaries = {v.name: resolve_binary(v) for v in config.variants}
    legacy = {name: qemu_info(binary).legacy for name, binary in binaries.items()}
    for disk in config.disks if not remote else []:
        ensure_images_space(disk, most_devices(config))
    run_dir = resumed_run_dir(config, resume) if resume else new_run_dir(config, config_path)
    with discarded_unless_measured(run_dir, fresh=not resume):
        return _prepare_run(config, run_dir, resume, accel or config.accel, binaries, legacy, say,
                            remote)


def _prepare_run(config: BenchConfig, run_dir: Path, resume: str | None, requested: str,
                 binaries: dict[str, Path], legacy: dict[str, bool], say: Say,
                 remote: bool) -> tuple[Run, GuestAssets]:
    """prepare's steps once the run directory exists: guests, accelerator, disks."""
    assets = prepare_guests(config, say)
    if remote:
        chosen = TCG if requested == "auto" else accel_named(requested)  # each host decides
        return Run(config, run_dir, chosen, binaries, legacy, {}, ResultsWriter(run_dir)), assets
    reference = config.baseline
    chosen, notice = choose_accel(requested, str(binaries[reference]), legacy[reference],
                                  probe_for(assets) if requested == "auto" else None, say)
    recorded = read_run_manifest(run_dir).get("accel") if resume else None
    if recorded and recorded != chosen.name:
        raise UserError(f"--resume {run_dir.name}: the run used accel {recorded}, this one "
                        f"would use {chosen.name}; pass --accel {recorded}")
    # kvm-nested figures are functional, not timings: its points are not checked
    run = Run(config, run_dir, chosen, binaries, legacy, {}, ResultsWriter(run_dir),
              watch=PointWatch(config.host_check.foreign_cpu_pct, enabled=not chosen.inner))
    if notice:
        run.notices.append(notice)
        say(notice)
    for disk in config.disks:
        count = most_devices(config)
        images = f"{count} images {disk.path}[.N]" if count > 1 else f"image {disk.path}"
        say(f"disk {disk.name}: preallocated raw {images} ({disk.size})")
        run.disks[disk.name] = prepare_images(disk, count, say)[0]
    return run, assets


def pending_sessions(run: Run) -> list[Session]:
    """The plan minus the points already finished ok (what --resume skips)."""
    done = run.writer.done_keys()
    sessions = []
    for session in plan(run.config):
        todo = tuple(p for p in session.points if p.key not in done)
        if todo:
            sessions.append(replace(session, points=todo))
    return sessions


def run_bench(config_path: Path, resume: str | None = None, accel: str | None = None,
              say: Say = print, bar=None, hosts: list[str] | None = None,
              accept_new_host_keys: bool = False) -> Path:
    """The whole run; returns the run directory (report written there).

    hosts: `[USER@]HOST[:PORT]`s to run on instead of the config's `hosts:`; with
    neither, the points run here.  accept_new_host_keys: a host's unknown SSH key
    is recorded and trusted (else refused).  Raises PointsFailed (after the
    report) when points failed, UserError when the config or a machine needs a
    change.
    """
    config = load_config(config_path)
    specs = merge_hosts(config.hosts, hosts or [], accept_new_host_keys)
    traced = [guest.id for guest in config.guests if guest.trace]
    if specs and traced:
        raise UserError(f"guest {traced[0]}: trace: true runs on this machine only (the trace "
                        "flavour is not shipped to hosts): drop --host/hosts: or the trace")
    run, assets = prepare(config, Path(config_path), resume, accel, say, remote=bool(specs))
    with discarded_unless_measured(run.run_dir, fresh=not resume):
        if specs:
            hosted = _prepare_hosts(run, specs, assets, accel or config.accel, say)
        elif run.accel.inner:
            hosted = [_boot_l1(run, assets, say)]
        else:
            hosted = []
        try:
            return _run_prepared(config_path, run, assets, hosted, say, bar)
        finally:
            for each in hosted:
                each.run.host.close()


def _boot_l1(run: Run, assets: GuestAssets, say: Say) -> "HostedRun":
    """accel kvm-nested: an L1 booted here is the run's one host (nested/host.py)."""
    provider = L1Provider(run, assets, say)
    return HostedRun(*provider.host(), revive=provider.revive)


def _prepare_hosts(run: Run, specs, assets: GuestAssets, requested: str,
                   say: Say) -> list[HostedRun]:
    """Each host checked, shipped to and prepared, one after the other (a UserError stops)."""
    lock = threading.Lock()
    hosted: list[HostedRun] = []
    try:
        for spec in specs:
            there, host_assets = prepare_host(run, spec, assets.images, assets.kernel, requested,
                                              lock, say)
            hosted.append(HostedRun(there, host_assets))
    except BaseException:
        for each in hosted:
            each.run.host.close()
        raise
    run.accel = hosted[0].run.accel
    return hosted


@dataclass(frozen=True)
class HostedRun:
    run: Run
    assets: GuestAssets  # the guests' files there
    #: a new host in place of this one once it is lost (kvm-nested's next L1), or None
    revive: Callable[[], tuple[Run, GuestAssets] | None] | None = None


def _run_prepared(config_path: Path, run: Run, assets: GuestAssets, hosted: list[HostedRun],
                  say: Say, bar) -> Path:
    config = run.config
    runs_on = hosted[0].run if hosted else run
    runners = {guest.id: make_runner(runs_on, guest, hosted[0].assets if hosted else assets, say)
               for guest in config.guests}
    description = "; ".join(f"{kind}: {r.description}" for kind, r in runners.items())
    write_manifest(run, "running", description)
    for line in skipped(config):
        say(line)
    sessions = pending_sessions(run)
    host = host_points(run) if config.host_ceiling else []
    hostile = hostile_todo(run) if config.hostile else []
    if hostile and hosted:
        say("hostile: the malformed-request cases run on the local machine only; "
            "not run on remote hosts")
        hostile = []
    points = sum(len(s.points) for s in sessions)
    say(f"run {run.run_id}: {points} points in {len(sessions)} boots, accel={run.accel}"
        + (f", {len(host)} host fio points" if host else "")
        + (f", {len(hostile)} hostile cases" if hostile else ""))
    if run.watch.enabled:
        _check_quiet(run, say)
    status = "interrupted"
    try:
        with RunProgress(points + len(host) + len(hostile), say, bar) as progress:
            _run_rounds(run, runners, hosted, sessions, say, progress)
            if host and hosted:
                _run_on_hosts(run, hosted, [], host, say, progress.advance)
            elif host:
                run_host_ceiling(run, say, progress.advance)
            if hostile and run.accel.inner:
                run_hostile_nested(run, say, progress.advance)
            elif hostile:
                run_hostile(run, say, assets.kernel, progress.advance)
        status = "complete"
    except UserError:
        status = "aborted"
        raise
    finally:
        write_manifest(run, status, description)
        if status == "interrupted":
            say(f"stopped; finished points are in {run.run_dir / 'results.csv'}; "
                f"go on with: harness bench --config {config_path} --resume {run.run_id}")
    _report(run, say)
    failed = run.writer.failed()
    if failed:
        raise PointsFailed(run.run_dir, failed)
    return run.run_dir


def _check_quiet(run: Run, say: Say) -> None:
    """Wait (up to host_check.quiet_wait_s) for a quiet host; note what could disturb it."""
    spec = run.config.host_check
    run.host_check.update(threshold_pct=spec.foreign_cpu_pct, disturbers=disturbers(),
                          reruns=run.host_check.get("reruns", 0))
    for line in run.host_check["disturbers"]:
        say(f"host check: {line}")
    if spec.quiet_wait_s <= 0:
        run.host_check["quiet_at_start"] = "not checked (host_check.quiet_wait_s: 0)"
        return
    check = wait_for_quiet(spec.foreign_cpu_pct, spec.quiet_wait_s)
    say(check.line(spec.foreign_cpu_pct))
    run.host_check["quiet_at_start"] = check.line(spec.foreign_cpu_pct)
    if not check.quiet:
        run.notices.append(check.line(spec.foreign_cpu_pct))


def _run_rounds(run: Run, runners: dict, hosted: list[HostedRun], sessions: list[Session],
                say: Say, progress: RunProgress) -> None:
    """Round after round (rounds.py): disturbed points again at the end of their round;
    with adaptive repetitions, no more rounds once every ratio is precise enough."""
    config = run.config
    adaptive = adaptive_guests(config)
    stopped = False
    for rep, todo in by_round(sessions):
        if adaptive and not stopped and rep > config.min_repetitions:
            wanted, _wide = round_wanted(config, run.run_dir, rep)
            if not wanted:
                stopped = True
                say(f"round {rep}: not needed: every ratio's interval is within "
                    f"±{config.target:.0%}")
        if stopped:
            progress.resize(-sum(len(s.points) for s in todo if s.guest in adaptive))
            todo = [s for s in todo if s.guest not in adaptive]
        _run_sessions(run, runners, hosted, todo, say, progress.advance)
        _rerun_disturbed(run, runners, hosted, rep, say, progress)
    if adaptive:
        _record_precision(run, say)


def _run_sessions(run: Run, runners: dict, hosted: list[HostedRun], sessions: list[Session],
                  say: Say, advance) -> None:
    if hosted:
        _run_on_hosts(run, hosted, sessions, [], say, advance)
        return
    for session in sessions:
        runners[session.guest].run_session(session, advance)


def _rerun_disturbed(run: Run, runners: dict, hosted: list[HostedRun], rep: int, say: Say,
                     progress: RunProgress) -> None:
    """Points of round rep that others' load disturbed, again, up to host_check.retries times."""
    if not run.watch.enabled:
        return
    retries = run.config.host_check.retries
    for attempt in range(1, retries + 1):
        points = disturbed_points(run.writer.rows(), rep)
        if not points:
            return
        say(f"round {rep}: {len(points)} disturbed point(s) again (attempt {attempt} of "
            f"{retries}): {', '.join(p.key for p in points[:4])}"
            + (f" and {len(points) - 4} more" if len(points) > 4 else ""))
        run.host_check["reruns"] = run.host_check.get("reruns", 0) + len(points)
        progress.resize(len(points))
        _run_sessions(run, runners, hosted, as_sessions(points), say, progress.advance)
    left = disturbed_points(run.writer.rows(), rep)
    if left:
        say(f"round {rep}: {len(left)} point(s) still disturbed after {retries} re-run(s); "
            "their rows are flagged")


def _record_precision(run: Run, say: Say) -> None:
    config = run.config
    wide = run_off_target(config, run.run_dir)
    run.host_check["precision"] = {"target": config.target, "off_target": wide}
    if wide:
        say(f"repetitions: {len(wide)} ratio(s) still wider than ±{config.target:.0%} after "
            f"{config.max_repetitions} rounds: {'; '.join(wide[:3])}"
            + (f" and {len(wide) - 3} more" if len(wide) > 3 else ""))
    else:
        say(f"repetitions: every ratio's interval is within ±{config.target:.0%}")


def _run_on_hosts(run: Run, hosted: list[HostedRun], sessions: list[Session],
                  ceiling: list, say: Say, advance) -> None:
    """The sessions and ceiling points spread over the hosts (fleet/scheduler.py).

    A host brought back after it was lost replaces its entry in hosted, for
    the rest of this call and the rounds after it."""
    runners = {id(each.run): _runners(each, run.config, say) for each in hosted}

    def run_unit(there: Run, unit: Unit, step) -> None:
        for session in unit.sessions:
            runners[id(there)][session.guest].run_session(session, step)
        if unit.ceiling:
            run_host_ceiling(there, say, step, list(unit.ceiling))

    def revive(lost: Run) -> Run | None:
        index = next(i for i, each in enumerate(hosted) if each.run is lost)
        again = hosted[index].revive() if hosted[index].revive else None
        if again is None:
            return None
        hosted[index] = HostedRun(*again, revive=hosted[index].revive)
        runners[id(hosted[index].run)] = _runners(hosted[index], run.config, say)
        return hosted[index].run

    per_point = {g.id for g in run.config.guests if g.kind == "microguest"}
    scheduler = Scheduler([each.run for each in hosted], units(sessions, ceiling, per_point),
                          run_unit, say, advance, revive)
    try:
        scheduler.run()
    finally:
        for each in hosted:
            host = each.run.host
            say(f"host {host.label}: {scheduler.work_done[host.label]} point(s) run; sent "
                f"{host.wire_bytes_sent} bytes over SSH, {host.shipped_bytes} of them new files"
                + (f"; lost: {scheduler.lost[host.label]}" if host.label in scheduler.lost else ""))


def _runners(hosted: HostedRun, config, say: Say) -> dict:
    """A runner per guest of the config, for one host's Run."""
    return {g.id: make_runner(hosted.run, g, hosted.assets, say) for g in config.guests}


def _report(run: Run, say: Say) -> None:
    if run.writer.path.exists():
        write_report(run.run_dir, run.config.baseline)
        say(f"report: {run.run_dir / 'report.md'}")
