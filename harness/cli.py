"""The `harness` command: thin wrappers that map errors to exit codes (errors.EXIT_CODES_HELP)."""

from __future__ import annotations

import logging
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import DEFAULT_SOURCE, __version__
from .build import SERIES_LAYERS
from .config import ACCEL_CHOICES, BUILT_VARIANTS
from .errors import (EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_USER, HarnessError, PointsFailed,
                     UserError)

# plain help (rich_markup_mode=None): flags print without a value, text wraps at word breaks
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Build, benchmark and report the 2012 virtio-blk data-plane RFC.\n\n"
                       + EXIT_CODES_HELP)
#: Piped (not a terminal), lines print whole at any length: no wrapping, no `…` in tables.
WHOLE_LINES = 1_000_000


def _console(stderr: bool = False) -> Console:
    """The terminal's width on a terminal; elsewhere every line whole, to grep or copy."""
    stream = sys.stderr if stderr else sys.stdout
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=WHOLE_LINES)


console = _console(stderr=True)
out = _console()
# command-line choices, from the names defined once in config.py and build.py
BuildChoice = Enum("BuildChoice", {name: name for name in BUILT_VARIANTS}, type=str)
AccelOption = Enum("AccelOption", {name: name for name in ACCEL_CHOICES}, type=str)
SeriesChoice = Enum("SeriesChoice", {name: name for name in SERIES_LAYERS}, type=str)
# the default source in a paragraph of its own: an option's help column would split the URL
SOURCE_HELP = f"The source: --source, else $HARNESS_SOURCE, else {DEFAULT_SOURCE}"
BUILD_SOURCE_HELP = ("The source: --source, else $HARNESS_SOURCE, else the source: of --config, "
                     f"else {DEFAULT_SOURCE}")


#: --accept-new-host-keys, on every command that connects to hosts
_ACCEPT_NEW_HELP = ("Accept a host's SSH key that is in neither ~/.ssh/known_hosts nor the "
                    "harness's known_hosts, record it in the latter and say so (like ssh's "
                    "StrictHostKeyChecking=accept-new). Without it an unknown key is refused; "
                    "a key that differs from a known one is always refused.")


def _progress(message: str) -> None:
    console.print(f"[dim]…[/dim] {message}")


def _show_version(asked: bool) -> None:
    if asked:
        out.print(f"harness {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                       help="Print the harness version and exit."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every command run."),
          cache: Optional[Path] = typer.Option(None, "--cache", envvar="HARNESS_CACHE",
                                               help="Cache directory (clones, builds, guests).")):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if cache:
        import os
        os.environ["HARNESS_CACHE"] = str(cache)


@app.command()
def version():
    """Print the harness version."""
    out.print(__version__)


@app.command(epilog=BUILD_SOURCE_HELP)
def build(
    source: Optional[str] = typer.Option(None, "--source", envvar="HARNESS_SOURCE",
                                         metavar="URL|PATH",
                                         help="qemu-kvm git URL or local clone (default: below)."),
    variant: List[BuildChoice] = typer.Option(list(BuildChoice), "--variant",
                                              metavar=f"[{'|'.join(BUILT_VARIANTS)}]",
                                              help="A variant to build (repeatable)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="make -j (default: all cores)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and do nothing."),
    config: Optional[Path] = typer.Option(None, "--config", help="Check this bench config and "
                                          "take its source: (see below)."),
    trace: bool = typer.Option(False, "--trace", help="Build the variants' trace flavours "
                               "(<variant>+trace: our trace points, the simple trace backend)."),
):
    """Clone the pinned tree, patch it and build each variant."""
    from .build import Builder, check_prerequisites, configure_argv
    from .config import load_config
    from .paths import cache_dir
    from .source import SourceCache

    configured = load_config(config).source if config else None  # checked like bench's
    source = source or configured or DEFAULT_SOURCE
    cache = SourceCache(cache_dir(), source)
    check_prerequisites()
    builder = Builder(cache, jobs=jobs, progress=_progress)
    names = list(dict.fromkeys(v.value for v in variant))
    if trace:
        from .trace_build import traced
        names = [traced(name) for name in names]
    plans, notices = builder.plan(names)
    for notice in notices:
        console.print(f"[yellow]note:[/yellow] {notice}")
    if dry_run:
        _print_plan(cache, builder, plans, configure_argv)
        return
    repo = cache.ensure(progress=_progress)
    rows = []
    for plan in plans:
        outcome = builder.build(plan, repo)
        rows.append(_built_row(plan.name, outcome.rebuilt, outcome.manifest))
    out.print(_built_table(rows))


def _built_row(name: str, rebuilt: bool, manifest: dict) -> tuple[str, ...]:
    return (name, "built" if rebuilt else "up to date",
            str(manifest.get("build_seconds", "")) if rebuilt else "0",
            manifest.get("binary", ""), manifest.get("version", "").split(", Copyright")[0])


def _built_table(rows: list[tuple[str, ...]]) -> Table:
    """What `harness build` built: one row per variant, its binary's path in full."""
    table = Table("variant", "status", "seconds", "binary", "version")
    for row in rows:
        table.add_row(*row)
    return table


def _print_plan(cache, builder, plans, configure_argv) -> None:
    out.print(f"source: {cache.source} @ {cache.commit}")
    out.print(f"cache:  {cache.cache}")
    for plan in plans:
        state = "up to date, nothing to do" if plan.up_to_date else "will build"
        out.print(f"\n[bold]{plan.name}[/bold]: {state}")
        out.print(f"  worktree: {plan.worktree} (branch harness/{plan.name})")
        for patch in plan.patches:
            out.print(f"  git am {patch.path.parent.name}/{patch.path.name}")
        from .build import configure_flags
        argv = configure_argv(plan.worktree, configure_flags(plan.name))
        out.print(f"  in {plan.build_dir}: {shlex.join(argv)}")
        out.print(f"  make -j{builder.jobs}")


@app.command("check-series", epilog=SOURCE_HELP)
def check_series_cmd(
    source: Optional[str] = typer.Option(None, "--source", envvar="HARNESS_SOURCE",
                                         metavar="URL|PATH",
                                         help="qemu-kvm git URL or local clone (default: below)."),
    layer: SeriesChoice = typer.Option("dataplane", "--layer",
                                       help="The series to check (with the layers below it)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="make -j (default: all cores)."),
):
    """Check that each patch of a series compiles on its own.

    The series is built patch by patch, on top of the layers below it.
    """
    from .build import Builder, check_prerequisites, check_series
    from .paths import cache_dir
    from .source import SourceCache

    check_prerequisites()
    cache = SourceCache(cache_dir(), source or DEFAULT_SOURCE)
    builder = Builder(cache, jobs=jobs, progress=_progress)
    repo = cache.ensure(progress=_progress)

    def report(label: str, ok: bool, detail: str) -> None:
        out.print(f"{'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {label} {detail}")

    outcomes = check_series(builder, repo, SERIES_LAYERS[layer.value], report)
    failed = [label for label, ok in outcomes if not ok]
    if failed:
        raise UserError(f"{failed[0]} does not compile (log: {builder.build_dir('series-check') / 'build.log'})")
    out.print(f"all {len(outcomes) - 1} patches of patches/{layer.value} compile one by one")


@app.command()
def bench(
    config: Path = typer.Option(..., "--config", "-c", help="Benchmark config (configs/*.yaml)."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN_ID",
                                         help="Go on with an interrupted run (results/<run-id>)."),
    accel: Optional[AccelOption] = typer.Option(None, "--accel",
                                                help="Accelerator (overrides the config)."),
    host: List[str] = typer.Option([], "--host", metavar="[USER@]HOST[:PORT]",
                                   help="Run the points on this host over SSH instead of here "
                                        "(repeatable; replaces the config's hosts:). HOST may "
                                        "be a Host alias of ~/.ssh/config (USER and PORT given "
                                        "here win over it). Each host "
                                        "is checked, sent what it lacks, and runs one point at "
                                        "a time; rows name their host."),
    accept_new_host_keys: bool = typer.Option(
        False, "--accept-new-host-keys", help=_ACCEPT_NEW_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the config, print the plan "
                                 "(points, boots, estimated time) and run nothing."),
):
    """Run a config's matrix and write results and the report.

    Guests boot under each variant and run every point of the matrix; the rows
    go to results/<run-id>/results.csv, then report.md and the plots.

    With --host (or hosts: in the config) the points run on those machines over
    SSH: QEMU runs there, results come back into the one results.csv here, and a
    host that drops out hands its unfinished points to the others.

    Exit codes: 0 every point ok; 3 the run finished but points failed (named on
    stderr); 2 the config or command line must change (a host that fails its
    checks, too); 1 infrastructure failure; 130 interrupted.
    """
    from rich import progress as rich_progress

    from .bench import run_bench

    if dry_run:
        from .config import load_config
        from .estimate import plan_lines

        for line in plan_lines(load_config(config)):
            out.print(line, highlight=False, soft_wrap=True)
        return

    bar = None
    if console.is_terminal:
        bar = rich_progress.Progress(
            rich_progress.TextColumn("{task.description}"), rich_progress.BarColumn(),
            rich_progress.MofNCompleteColumn(), rich_progress.TimeRemainingColumn(),
            console=console, transient=False)
    try:
        run_dir = run_bench(config, resume=resume, accel=accel.value if accel else None,
                            say=_progress, bar=bar, hosts=host,
                            accept_new_host_keys=accept_new_host_keys)
    except PointsFailed as exc:
        for key, error in exc.failed:
            console.print(f"[red]failed:[/red] {key}: {error}", highlight=False, soft_wrap=True)
        out.print(f"report: {exc.run_dir / 'report.md'}")
        raise
    out.print(f"report: {run_dir / 'report.md'}")


@app.command()
def report(run: str = typer.Argument(..., metavar="RUN", help="results/<run-id> or its path"),
           baseline: Optional[str] = typer.Option(None, metavar="VARIANT",
                                                  help="Reference variant for ratios (default: "
                                                       "the run's config's baseline)."),
           json_summary: bool = typer.Option(False, "--json", help="Also write summary.json: "
                                             "per workload and variant the medians, spread, "
                                             "p99, ratio to the baseline with its CI and the "
                                             "verdict flags (schema_version 3: per host).")):
    """Redraw a run's plots and report.md from its results.csv.

    Nothing is run again.
    """
    from .bench import find_run
    from .report import write_report
    from .results import read_results

    run_dir = find_run(run)
    if baseline is None:
        baseline = _config_baseline(run_dir)
    warning = read_results(run_dir).warning()
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    written = write_report(run_dir, baseline, summary_json=json_summary)
    out.print(f"report: {written.markdown}", soft_wrap=True, highlight=False)
    if written.summary_json:
        out.print(f"summary: {written.summary_json}", soft_wrap=True, highlight=False)


@app.command()
def compare(run_a: str = typer.Argument(..., metavar="RUN_A", help="The reference run (A)."),
            run_b: str = typer.Argument(..., metavar="RUN_B",
                                        help="The run to compare with it (B)."),
            tolerance: str = typer.Option("5%", "--tolerance", metavar="FRACTION|PERCENT",
                                          help="Changes within ±this count as none: a fraction "
                                               "(0.05) or a percentage (5% or 5)."),
            fail_on_regression: bool = typer.Option(
                False, "--fail-on-regression",
                help="Exit 4 when any workload regressed: its whole interval of B/A (false-"
                     "coverage-rate adjusted) lies below 1 - tolerance. Each is named on stderr. "
                     "For CI gates and bisecting."),
            fail_on_inconclusive: bool = typer.Option(
                False, "--fail-on-inconclusive",
                help="Exit 5 when any workload is inconclusive (interval too wide, or fewer "
                     "than 3 repetitions a side), for gates that must decide."),
            json_output: bool = typer.Option(False, "--json",
                                             help="Print the verdicts as JSON instead of the "
                                                  "markdown table.")):
    """Compare two runs: B/A per workload, with a verdict.

    The same workloads (same host, accelerator, guest, variant, disk, rw, bs,
    iodepth, numjobs) from two runs: the ratio B/A with a Welch t interval on log
    IOPS and a verdict: regressed, improved, unchanged (interval inside
    ±tolerance) or inconclusive.

    \b
    Exit codes:
      0  compared, and no gate tripped
      2  a run is missing or unreadable, the runs share no workload, or
         --tolerance is nonsense
      4  --fail-on-regression and a workload regressed
      5  --fail-on-inconclusive and a workload is inconclusive (4 wins when
         both hold)
    """
    import json

    from .bench import find_run
    from .compare import (compare_runs, inconclusive_lines, json_document, parse_tolerance,
                          regression_lines, render_markdown)
    from .errors import EXIT_INCONCLUSIVE, EXIT_REGRESSION

    fraction = parse_tolerance(tolerance)
    comparison = compare_runs(find_run(run_a), find_run(run_b), tolerance=fraction)
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    if json_output:
        typer.echo(json.dumps(json_document(comparison), indent=2))
    else:
        typer.echo(render_markdown(comparison))
    regressed = fail_on_regression and len(comparison.regressions)
    undecided = fail_on_inconclusive and len(comparison.inconclusive)
    if regressed:
        for line in regression_lines(comparison):
            console.print(line, highlight=False, soft_wrap=True)
    if undecided:
        for line in inconclusive_lines(comparison):
            console.print(line, highlight=False, soft_wrap=True)
    if regressed:
        raise typer.Exit(EXIT_REGRESSION)
    if undecided:
        raise typer.Exit(EXIT_INCONCLUSIVE)


hosts_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Remote hosts: check them before a run.")
app.add_typer(hosts_app, name="hosts")


@hosts_app.command("check")
def hosts_check(
    host: List[str] = typer.Option([], "--host", metavar="[USER@]HOST[:PORT]",
                                   help="A host to check (repeatable; default: the config's)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="Also check the free space for its disks and "
                                               "/dev/kvm if its accel asks for KVM."),
    accel: Optional[AccelOption] = typer.Option(None, "--accel", help="The accel to check for."),
    accept_new_host_keys: bool = typer.Option(
        False, "--accept-new-host-keys", help=_ACCEPT_NEW_HELP),
):
    """Check the hosts as a run would, and run nothing.

    SSH, architecture, kernel, /dev/kvm, fio and tools, free space: one line per
    problem, saying what to install or change.  Exit codes: 0 every host is
    ready; 2 a host is not (unreachable, or something to install or change).
    """
    from .config import load_config
    from .devices import most_devices
    from .hosts.check import check_hosts
    from .hosts.spec import merge_hosts

    loaded = load_config(config) if config else None
    specs = merge_hosts(loaded.hosts if loaded else [], host, accept_new_host_keys)
    if not specs:
        raise UserError("no host to check: give --host [USER@]HOST[:PORT] or a config with hosts:")
    wanted = accel.value if accel else (loaded.accel if loaded else "auto")
    bad = 0
    images = most_devices(loaded) if loaded else 1
    for spec, lines in check_hosts(specs, loaded.disks if loaded else [], wanted, _progress,
                                   images):
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
        bad += any(not line.startswith(f"host {spec.label}: ok") for line in lines)
    if bad:
        raise UserError(f"{bad} of {len(specs)} host(s) not ready (above)")


def _config_baseline(run_dir: Path) -> str:
    import yaml

    config_file = run_dir / "config.yaml"
    if config_file.exists():
        data = yaml.safe_load(config_file.read_text()) or {}
        return data.get("baseline", "baseline")
    return "baseline"


def main() -> None:
    """SIGTERM stops a run like Ctrl-C does: QEMU reaped, finished points kept."""
    import signal

    from .proc import interrupt_handler

    signal.signal(signal.SIGINT, interrupt_handler)
    signal.signal(signal.SIGTERM, interrupt_handler)
    sys.exit(run_cli())


def run_cli(args: list[str] | None = None) -> int:
    """The command line's exit code (errors.EXIT_CODES_HELP); messages on stderr."""
    try:
        code = app(args=args, prog_name="harness", standalone_mode=False)
    except HarnessError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except Exception as exc:
        if not (hasattr(exc, "show") and hasattr(exc, "exit_code")):
            raise
        exc.show()  # a usage error: an unknown option or choice
        return exc.exit_code or EXIT_USER
    if code == EXIT_INTERRUPTED:
        console.print("[yellow]interrupted[/yellow]; finished work is kept")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
