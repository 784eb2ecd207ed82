"""The `harness` command as a pipe or a script sees it: stdout is not a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from harness import DEFAULT_SOURCE, PINNED_COMMIT
from harness.matrix import Workload
from harness.results import ResultsStore, new_row

ROOT = Path(__file__).resolve().parent.parent
# a directory name long enough that every path under it runs past 80 columns
DEEP = "a-directory-name-long-enough-to-push-every-path-under-it-beyond-eighty-columns"


def harness(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`harness ARGS` with stdout and stderr piped, run from this checkout."""
    return subprocess.run([sys.executable, "-c", "from harness.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=env if env is not None else clean_env())


def clean_env(**values: str) -> dict[str, str]:
    """The environment without HARNESS_* (a developer's own source or cache), plus values."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    return {**kept, "COLUMNS": "80", **values}


def test_build_plan_prints_every_line_whole(tmp_path):
    cache = tmp_path / DEEP / "cache"
    done = harness("build", "--dry-run", "--variant", "dataplane",
                   env=clean_env(HARNESS_CACHE=str(cache)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"source: {DEFAULT_SOURCE} @ {PINNED_COMMIT}" in lines
    patches = [line for line in lines if line.startswith("  git am ")]
    assert len(patches) > 27 and all(line.endswith(".patch") for line in patches), patches
    configure = [line for line in lines if line.startswith(f"  in {cache}/build/dataplane: ")]
    assert len(configure) == 1 and configure[0].endswith(" --disable-strip"), lines
    assert all(line.startswith(("source: ", "cache: ", "dataplane: ", "  ")) or not line
               for line in lines), lines


def test_bench_plan_prints_every_line_whole():
    done = harness("bench", "--config", "configs/smoke.yaml", "--dry-run")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("config smoke: variants ") and first.endswith("2 round(s)"), first
    assert len(first) > 80


def test_build_table_keeps_the_whole_binary_path(tmp_path):
    binary = str(tmp_path / DEEP / "build" / "poll" / "x86_64-softmmu" / "qemu-system-x86_64")
    row = ("poll", "built", "312.5", binary, "QEMU emulator version 1.2.50 (qemu-kvm-devel)")
    done = subprocess.run([sys.executable, "-c", "import sys; from harness import cli; "
                           "cli.out.print(cli._built_table([tuple(sys.argv[1:])]))", *row],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert binary in done.stdout and "…" not in done.stdout, done.stdout
    assert row[4] in done.stdout


def test_report_prints_its_paths_whole(tmp_path):
    run = tmp_path / DEEP / "r1"
    store = ResultsStore(run)
    for rep in (1, 2, 3):
        for variant, iops in (("baseline", 1000.0 + rep), ("dataplane", 1500.0 - rep)):
            store.append(new_row(run_id="r1", guest="fio", variant=variant, accel="tcg",
                                 disk="file", workload=Workload("randread", "4k", 1, 1),
                                 rep=rep, log="logs/x.log", started_at="2026-11-25T04:00:00Z",
                                 iops=iops, lat_mean_us=1e6 / iops, lat_p50_us=1e6 / iops,
                                 lat_p99_us=2e6 / iops, lat_p999_us=3e6 / iops))
    done = harness("report", str(run), "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"report: {run / 'report.md'}",
                                        f"summary: {run / 'summary.json'}"]


def command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand: (), ("build",), …, ("hosts", "check")."""
    import typer

    from harness.cli import app

    def walk(command, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path]
        for name, sub in getattr(command, "commands", {}).items():
            found += walk(sub, (*path, name))
        return found

    return walk(typer.main.get_command(app), ())


def flags(path: tuple[str, ...]) -> list[str]:
    """The long names of a command's boolean options: --dry-run, --json, …"""
    import typer

    from harness.cli import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return [opt for param in command.params if getattr(param, "is_flag", False)
            for opt in param.opts if opt.startswith("--")]


def test_every_help_reads_well_piped():
    paths = command_paths()
    assert ("hosts", "check") in paths and ("compare",) in paths
    for path in paths:
        done = harness(*path, "--help")
        assert done.returncode == 0, done.stderr
        text = done.stdout
        assert text.startswith(f"Usage: {' '.join(('harness', *path))} "), text[:200]
        assert "<bool>" not in text, text
        assert not [line for line in text.splitlines()[1:] if line.endswith("...")], text
        assert all(len(line) <= 80 for line in text.splitlines()), text
        for flag in flags(path):  # a flag, then its help: no value to give
            assert re.search(rf"^  (-\w, )?{re.escape(flag)}  +\S", text, re.MULTILINE), (flag, text)


def test_build_help_shows_the_default_source():
    done = harness("build", "--help")
    assert done.returncode == 0, done.stderr
    assert DEFAULT_SOURCE in done.stdout.split(), done.stdout


def test_compare_help_keeps_its_sentences_and_exit_codes_whole():
    listing = harness("--help").stdout.splitlines()
    assert "  compare       Compare two runs: B/A per workload, with a verdict." in listing
    lines = harness("compare", "--help").stdout.splitlines()
    assert "  Compare two runs: B/A per workload, with a verdict." in lines
    assert "    0  compared, and no gate tripped" in lines
    assert "    4  --fail-on-regression and a workload regressed" in lines


def test_build_checks_its_config_like_bench(tmp_path):
    config = tmp_path / "unknown-field.yaml"
    config.write_text((ROOT / "configs" / "smoke.yaml").read_text() + "bogus_field: 3\n")
    env = clean_env(HARNESS_CACHE=str(tmp_path / "cache"), HARNESS_SOURCE=str(tmp_path / "src"))
    bench = harness("bench", "--config", str(config), "--dry-run", env=env)
    assert bench.returncode == 2 and "unknown field 'bogus_field'" in bench.stderr, bench.stderr
    for source in ([], ["--source", str(tmp_path / "src")]):  # the source from elsewhere, too
        build = harness("build", "--config", str(config), "--dry-run", *source, env=env)
        assert (build.returncode, build.stderr) == (2, bench.stderr), build.stdout
        assert build.stdout == "" and len(build.stderr.splitlines()) == 1
