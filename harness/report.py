"""report.md, plots and summary.json of one run, from run_dir/results.csv alone.

Optional inputs beside it: manifest.json (host, accelerator, QEMU facts, read
through the typed model of manifest.py), hostile.csv (the micro-guest's hostile
cases, shown as a table) and host-fio rows in results.csv (the ceiling).  The
report never runs anything; the numbers come from summary.RunNumbers, the same
ones summary.json holds.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import (headline, latency_cdf, plots, published, scaling, scaling_plot, stats,
               trace_report, trust_report)
from .errors import UserError
from .hosts.spec import LOCAL_HOST
from .files import write_json_atomic
from .manifest import Manifest, read_manifest
from .results import (HOST_VARIANT, WATCHDOG_CSV, BadLine, ResultsFile, disk_text, read_results,
                      row_key)
from .summary import PRECISION, RunNumbers, baseline_verdict, ci_half_width, summary_document


# --- facts --------------------------------------------------------------------------------

def _known(text: object) -> str:
    return str(text) if text not in (None, "") else "unknown"


def _malformed_text(bad_lines: tuple[BadLine, ...]) -> str:
    if not bad_lines:
        return "none"
    shown = "; ".join(f"line {b.line}: {b.reason}" for b in bad_lines[:10])
    more = f"; and {len(bad_lines) - 10} more" if len(bad_lines) > 10 else ""
    return f"**{len(bad_lines)} left out of every table** ({shown}{more})"


def run_facts(manifest: Manifest | None, df: pd.DataFrame,
              results: ResultsFile | None = None) -> dict[str, str]:
    """The facts the report states: from the manifest where it has them, else from the rows."""
    facts = {"host_cpu": "unknown", "host_cpus": "unknown", "host_kernel": "unknown",
             "qemu": "unknown", "storage": "unknown", "guest": "unknown", "notices": "none",
             "host_load": "not recorded", "schema": "manifest.json: none"}
    if manifest is not None:
        facts.update(host_cpu=_known(manifest.host.cpu_model), host_cpus=_known(manifest.host.cores),
                     host_kernel=_known(manifest.host.kernel), qemu=_known(manifest.qemu_text()),
                     storage=_known(manifest.storage_text()), guest=_known(manifest.guest),
                     notices="; ".join(manifest.notices) or "none",
                     host_load=manifest.host_load_text(),
                     schema=f"manifest.json: {manifest.schema_version}")
    guests = df[df["variant"] != HOST_VARIANT]
    facts["accel"] = ", ".join(sorted(set(guests["accel"]) - {""})) or "unknown"
    reps = guests.groupby(stats.GROUP_KEYS)["rep"].nunique()
    per_guest = reps.groupby(level="guest").max()
    facts["repetitions"] = ", ".join(f"{guest} {int(n)}" for guest, n in per_guest.items()) or "0"
    facts["run_id"] = ", ".join(sorted(set(df["run_id"]))) or "unknown"
    facts["guests"] = ", ".join(sorted(set(guests["guest"]))) or "unknown"
    if results is not None:
        facts["schema"] = f"results.csv: {results.schema_version}; {facts['schema']}"
        facts["malformed"] = _malformed_text(results.bad_lines)
    return facts


def accel_banner(accel: str) -> str:
    """The sentence that must not be missed: what the numbers can be compared with."""
    accels = {a.strip().lower() for a in accel.split(",")}
    if accels == {"kvm"}:
        return "KVM (hardware virtualisation)"
    if accels == {"tcg"}:
        return "TCG (software emulation): absolute numbers are not comparable to KVM"
    if accels == {"kvm-nested"}:
        return ("KVM-NESTED (KVM inside an L1 under TCG): functional figures, not KVM speed; "
                "never pooled with tcg or kvm")
    return f"{accel.upper()} — mixed or unknown accelerator: check each table's accel column"


def accel_title(accel: str) -> str:
    return {"kvm": "KVM", "tcg": "TCG (software emulation)",
            "kvm-nested": "KVM nested in TCG (functional)"}.get(accel, accel.upper() or "unknown")


# --- markdown -------------------------------------------------------------------------------

def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _ratio_text(row) -> str:
    if row is None:
        return "–"
    return _ci_text(row.ratio, row.ci_low, row.ci_high, row.range_low, row.range_high)


def _ci_text(ratio: float, low: float, high: float, range_low: float = np.nan,
             range_high: float = np.nan) -> str:
    """"1.23 [1.10, 1.38]" with a 95% CI; below 3 repetitions a side no CI is claimed and
    the min–max of the ratio is shown instead, saying so."""
    if not np.isfinite(ratio):
        return "–"
    fmt = published.fmt_ratio
    if not np.isfinite(low):
        if np.isfinite(range_low) and np.isfinite(range_high):
            return (f"{fmt(ratio)} (min–max {fmt(range_low)}–{fmt(range_high)}; "
                    f"no CI below {stats.MIN_CI_REPS} repetitions)")
        return f"{fmt(ratio)} (no CI)"
    return f"{fmt(ratio)} [{fmt(low)}, {fmt(high)}]"


def _facts_section(facts: dict[str, str]) -> str:
    rows = [["accelerator", f"**{accel_banner(facts['accel'])}**"],
            ["host CPU", facts["host_cpu"]], ["host CPUs", facts["host_cpus"]],
            ["host kernel", facts["host_kernel"]], ["QEMU", facts["qemu"]],
            ["storage", facts["storage"]], ["guests", facts["guests"]],
            ["guest", facts["guest"]], ["notices", facts["notices"]],
            ["repetitions per point", facts["repetitions"]],
            ["host CPU time during the run", facts["host_load"]], ["run", facts["run_id"]],
            ["schema versions", facts["schema"]],
            ["malformed rows in results.csv", facts.get("malformed", "none")]]
    return "## Run facts\n\n" + md_table(["fact", "value"], rows)


def _workload_heading(key: dict, guest_bound: bool = False) -> str:
    return (f"### {key['rw']} {key['bs']}, iodepth {key['iodepth']}, {key['numjobs']} job(s) — "
            f"{key['guest']} guest, disk {disk_text(key['disk'], key.get('devices', 1))}, "
            f"{accel_title(key['accel'])}"
            + (f", on host {key['host']}" if key.get("host", LOCAL_HOST) != LOCAL_HOST else "")
            + (" — *guest-bound*" if guest_bound else ""))


def cpu_text(item) -> str:
    """Host CPU µs per I/O: the total, then (vCPU / main / I/O thread / other)."""
    total = item.cpu_us_per_io_median
    if total is None or not np.isfinite(total):
        return "–"
    kinds = [item.cpu_us_per_io_vcpu_median, item.cpu_us_per_io_main_median,
             item.cpu_us_per_io_iothread_median, item.cpu_us_per_io_other_median]
    digits = 1 if total < 100 else 0
    if not any(np.isfinite(k) for k in kinds):
        return _num(total, digits)
    return f"{_num(total, digits)} ({' / '.join(_num(k, digits) for k in kinds)})"


def _summary_rows(workload, baseline: str) -> list[list]:
    rows = []
    for item in workload.variants.itertuples(index=False):
        ratio = workload.ratios.get(item.variant)
        text = "1 (baseline)" if item.variant == baseline else _ratio_text(ratio)
        if workload.guest_bound and item.variant != baseline and ratio is not None:
            text += " — guest-bound, not the data plane's effect"
        flags = ["noisy"] if item.noisy else (["all failed"] if item.n_ok == 0 else [])
        if item.guest_bound:
            flags.append(f"guest-bound ({item.n_guest_bound} of {item.n_ok})")
        iops = "–" if item.n_ok == 0 else \
            f"{_num(item.iops_median)} ({_num(item.iops_min)}–{_num(item.iops_max)})"
        verdict = "–" if item.variant == baseline else (baseline_verdict(ratio) or "–")
        if workload.guest_bound and verdict != "–":
            verdict = "not judged (guest-bound)"
        rows.append([item.variant, iops, _num(item.lat_p99_us_median, 1), text, verdict,
                     cpu_text(item), ", ".join(flags), f"{item.n_ok} ok, {item.n_failed} failed"])
    if workload.host_iops is not None:
        cpu = workload.host_cpu_us_per_io
        rows.append([f"{HOST_VARIANT} (ceiling)", _num(workload.host_iops), "–", "–", "–",
                     "–" if cpu is None else f"{_num(cpu, 1)} (fio)", "", "host"])
    return rows


def _summary_section(numbers: RunNumbers) -> str:
    baseline = numbers.baseline
    parts = ["## Summary per workload",
             f"Median IOPS over repetitions (min–max), median p99 latency, and the IOPS ratio "
             f"to **{baseline}** (of geometric means) with a 95% Welch t interval on log IOPS; "
             f"with fewer than {stats.MIN_CI_REPS} repetitions on a side no CI is given, the "
             f"min–max of the ratio instead. *≥ {baseline}*: **met** when the whole interval "
             f"is at or above 1, **missed** when it is wholly below, otherwise *undecided* "
             f"(always without a CI). *noisy*: the IOPS coefficient of variation exceeds "
             f"{stats.NOISY_CV:.0%}. The same numbers are in `summary.json` "
             f"(`harness report RUN --json`).",
             "*Host CPU µs per I/O*: the median CPU time of the QEMU process per I/O, then split "
             "by thread (vCPU / main loop / I/O thread: the data-plane thread or an iothread / "
             "other; `threads.py`); for the host-fio ceiling, fio's own usr+sys. Lower is "
             "cheaper: the price beside the speed. *guest-bound*: most of a variant's points "
             f"had the guest's own CPU at {stats.GUEST_BOUND_PCT:.0f}% of its vCPUs or more, "
             "so the point measures the emulated guest, not the I/O path; a workload with such "
             "a variant has its ratios marked and not judged: they are not the data plane's "
             "effect."]
    if len(numbers.ratios):
        parts.append(_precision_line(numbers.ratios))
    headers = ["variant", "IOPS median (min–max)", "p99 µs", f"ratio to {baseline} [95% CI]",
               f"≥ {baseline}", "host CPU µs per I/O (vCPU / main / I/O thread / other)",
               "flag", "reps"]
    for workload in numbers.workloads():
        parts += [_workload_heading(workload.key, workload.guest_bound),
                  md_table(headers, _summary_rows(workload, baseline))]
    return "\n\n".join(parts)


def _precision_line(ratios: pd.DataFrame) -> str:
    """How many ratio CIs are within ±10% of the ratio, per guest: the precision the
    configs aim at; the wide ones need more repetitions or a quieter host."""
    half_width = pd.Series(ci_half_width(ratios["ratio"], ratios["ci_low"], ratios["ci_high"]),
                           index=ratios.index)
    with_ci = ratios["ci_low"].notna() & ratios["ci_high"].notna()
    counts, none = [], []
    for guest, rows in ratios.groupby("guest"):
        have = rows[with_ci[rows.index]]
        if have.empty:
            none.append(guest)
            continue
        text = f"{guest} {int((half_width[have.index] <= PRECISION).sum())} of {len(have)}"
        if len(have) < len(rows):
            text += (f" ({len(rows) - len(have)} more without a CI: fewer than "
                     f"{stats.MIN_CI_REPS} repetitions)")
        counts.append(text)
    parts = []
    if counts:
        parts.append(f"95% CIs within ±{PRECISION:.0%} of the ratio: " + ", ".join(counts) + ".")
    if none:
        parts.append(f"No CI for {', '.join(none)}: fewer than {stats.MIN_CI_REPS} repetitions "
                     "a side, so no precision is claimed; the tables show the min–max of each "
                     "ratio instead.")
    return " ".join(parts)


def _failed_section(df: pd.DataFrame) -> str:
    failed = df[df["status"] != "ok"]
    if failed.empty:
        return "## Failed points\n\nNone."
    rows = [[row_key(r), r["accel"], r["error"] or "(no message)",
             f"`{r['log']}`" if r["log"] else "–"] for r in failed.to_dict("records")]
    return "## Failed points\n\n" + md_table(["point", "accel", "error", "log"], rows)


def watchdog_note(run_dir: Path) -> str:
    """The report's paragraph on kvm-nested: what the figures are, and the watchdog's count."""
    lines = ["## accel kvm-nested\n",
             "Rows with accel `kvm-nested` ran under KVM inside an L1 Linux that itself runs "
             "under TCG (emulated AMD SVM). They are **functional figures**: they show that the "
             "KVM path (ioeventfd, irqchip MSI-X routes, injection from the data-plane thread) "
             "works, not how fast it is — every exit of L2 is emulated by L0. They are never "
             "pooled with `tcg` or `kvm` rows: every table and ratio is per accelerator."]
    path = Path(run_dir) / WATCHDOG_CSV
    if path.exists():
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        hangs = sum(int(r["hangs"]) for r in rows)
        failed = sum(r["outcome"] == "failed" for r in rows)
        lines.append(f"\nThe L2 watchdog caught {hangs} hung run(s) on {len(rows)} point(s) "
                     f"({failed} point(s) failed after the retries; the others are ok rows "
                     f"whose error column says so); see `{WATCHDOG_CSV}` and the .hang.txt "
                     "diagnoses.")
    else:
        lines.append("\nThe L2 watchdog caught no hung run.")
    return "\n".join(lines)


def _kvm_nested_section(df: pd.DataFrame, run_dir: Path) -> str:
    if not (df["accel"] == "kvm-nested").any():
        return ""
    return watchdog_note(run_dir)


def _hostile_section(run_dir: Path) -> str:
    path = run_dir / "hostile.csv"
    if not path.exists():
        return ""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return ("## Hostile cases (micro-guest)\n\n"
            + md_table(list(table.columns), table.values.tolist()))


def _published_section(comparison: published.PublishedComparison, images: list[Path]) -> str:
    parts = ["## Published figures", comparison.paragraph]
    if not comparison.ratios.empty:
        headers = ["published", "kind", "their ratio", "their IOPS", "their setup", "ours",
                   "our ratio [95% CI]", "our median IOPS", "our workload", "verdict"]
        rows = [[r.source, r.kind, published.fmt_ratio(r.their_ratio), _num(r.their_iops),
                 f"{r.their_workload}; {r.their_hardware}; {r.their_storage}; accel {r.their_accel}",
                 f"{r.our_variant} ({r.guest} guest, disk {r.disk}, {r.our_accel})",
                 _ci_text(r.our_ratio, r.our_ci_low, r.our_ci_high), _num(r.our_iops),
                 r.our_workload, r.verdict]
                for r in comparison.ratios.itertuples(index=False)]
        parts.append(md_table(headers, rows))
    if not comparison.absolute.empty:
        rows = [[r.guest, r.variant, r.accel, f"{r.rw} {r.bs} qd{r.iodepth} j{r.numjobs}", r.disk,
                 _num(r.iops_median), _num(r.host_iops_median), published.fmt_ratio(r.of_host)]
                for r in comparison.absolute.itertuples(index=False)]
        parts += ["Our absolute IOPS beside fio on the host against the same image:",
                  md_table(["guest", "variant", "accel", "workload", "disk", "median IOPS",
                            "host fio IOPS", "fraction of host"], rows)]
    parts += [f"![ours vs published](plots/{p.name})" for p in images if p.suffix == ".png"]
    return "\n\n".join(parts)


_METHOD = """## Method

- Each point ran in its own repetitions; variants were interleaved per repetition.
- Ratios are of geometric means of the repetitions; the 95% CI is a Welch t
  interval on log IOPS (Welch–Satterthwaite degrees of freedom), which stays
  honest at 3–5 repetitions: the fewer there are, the wider it gets. With fewer
  than 3 repetitions on a side no CI is claimed and the min–max of the ratio is
  shown instead; where every repetition is equal the interval has zero width.
- Verdicts (met, missed) are read from the whole interval, never from a median:
  met when the interval clears the goal, missed when it is wholly below,
  otherwise undecided.
- Latencies are fio completion latencies; for randrw they are the reads'. IOPS of
  randrw are reads + writes."""


def _plots_section(images: list[Path], notes: list[str]) -> str:
    shown = [f"![{p.stem}](plots/{p.name})" for p in images if p.suffix == ".png"]
    if not shown:
        shown = ["No successful points to plot."]
    return "## Plots\n\n" + "\n\n".join(notes + shown)


def _speedup_notes(ratios: pd.DataFrame) -> list[str]:
    """The line saying why there is no speed-up plot when only functional ratios exist."""
    if len(ratios) and headline.speed_rows(ratios).empty:
        return [f"No speed-up plot: every ratio of this run is accel {headline.FUNCTIONAL_ACCEL}, "
                "functional figures whose speed-ups mean nothing."]
    return []


@dataclass(frozen=True)
class Report:
    markdown: Path
    plots: list[Path]
    summary_json: Path | None


#: the figures write_report draws (trace_report draws its own); one not drawn is removed
FIGURES = ("headline", "iops_vs_iodepth", "latency_percentiles", "speedup", "efficiency",
           "published")


def _draw(numbers: RunNumbers, plots_dir: Path, title: str, colors: dict) -> list[Path]:
    ok_summary = numbers.summary[numbers.summary["n_ok"] > 0]
    # functional (kvm-nested) ratios are no speed-up: the plot leaves them out
    return (plots.plot_iops(ok_summary, plots_dir / "iops_vs_iodepth", colors, title)
            + plots.plot_latency(ok_summary, plots_dir / "latency_percentiles", colors, title)
            + plots.plot_speedup(headline.speed_rows(numbers.ratios), plots_dir / "speedup",
                                 colors, title, numbers.baseline)
            + plots.plot_efficiency(ok_summary, plots_dir / "efficiency", colors, title))


def _latency_cdf(run_dir: Path, df: pd.DataFrame, title: str,
                 colors: dict) -> tuple[list[Path], list[str]]:
    """plots/latency-cdf.png from the fio points' raw JSON; a line when none is here."""
    found = latency_cdf.read_distributions(run_dir, df)
    images = plots.plot_latency_cdf(found.points, run_dir / "plots" / latency_cdf.FILE_NAME,
                                    colors, title)
    return images, [found.missing_line] if found.missing_line else []


def _remove_undrawn(plots_dir: Path, drawn: list[Path]) -> None:
    """A figure of FIGURES this report did not draw must not linger from an earlier one."""
    for name in FIGURES:
        for path in (plots_dir / f"{name}.png", plots_dir / f"{name}.svg"):
            if path not in drawn and path.exists():
                path.unlink()


def _headline(numbers: RunNumbers, plots_dir: Path, title: str, colors: dict,
              run_id: str) -> tuple[str, list[Path]]:
    """The lead section and its figure (none for a functional run)."""
    found = headline.panels(numbers.ratios, numbers.summary)
    images = plots.plot_headline(found, plots_dir / headline.FILE_NAME, colors, title,
                                 numbers.baseline)
    png = next((p.name for p in images if p.suffix == ".png"), None)
    return (headline.section(found, png, numbers.ratios, run_id, title, numbers.baseline),
            images)


def _scaling(numbers: RunNumbers, manifest: Manifest | None, plots_dir: Path, title: str,
             colors: dict) -> tuple[str, list[Path]]:
    """The scaling-with-devices section and its figure (nothing when every point had one device)."""
    cores = manifest.host.cores if manifest and manifest.host else None
    limits = scaling.Limits(cores, numbers.ceiling)
    rows = scaling.scaling_rows(numbers.summary, limits)
    images = scaling_plot.plot_scaling(rows, plots_dir / scaling_plot.FILE_NAME, colors, limits,
                                       title)
    names = [p.name for p in images if p.suffix == ".png"]
    return scaling.section(rows, limits, names, md_table), images


def _check_baseline(df: pd.DataFrame, baseline: str) -> None:
    """A baseline the run does not have would turn every ratio into n/a: refuse it."""
    variants = sorted(set(df["variant"]) - {HOST_VARIANT})
    if variants and baseline not in variants:
        raise UserError(f"baseline {baseline!r} is not a variant of this run; "
                        f"give --baseline one of: {', '.join(variants)}")


def write_report(run_dir: Path | str, baseline: str, summary_json: bool = False) -> Report:
    """Write run_dir/report.md and run_dir/plots/*.png|svg, and with summary_json also
    run_dir/summary.json."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.csv").exists():
        raise UserError(f"{run_dir} has no results.csv: nothing to report")
    results = read_results(run_dir)
    df = results.frame
    _check_baseline(df, baseline)
    manifest = read_manifest(run_dir)
    facts = run_facts(manifest, df, results)
    numbers = RunNumbers.of(df, baseline)
    title = accel_title(facts["accel"]) if "," not in facts["accel"] else facts["accel"]
    colors = plots.variant_colors(numbers.rows["variant"], numbers.baseline)
    headline_text, headline_images = _headline(numbers, run_dir / "plots", title, colors,
                                               facts["run_id"])
    images = _draw(numbers, run_dir / "plots", title, colors)
    cdf_images, cdf_notes = _latency_cdf(run_dir, df, title, colors)
    images += cdf_images
    # kvm-nested rows are functional figures: never beside the published ones
    comparison = published.compare_with_published(df[df["accel"] != "kvm-nested"], baseline, facts)
    published_images = plots.plot_published(comparison.ratios, run_dir / "plots" / "published",
                                            title)
    trace_text, trace_images = trace_report.section(run_dir, df, run_dir / "plots")
    scaling_text, scaling_images = _scaling(numbers, manifest, run_dir / "plots", title, colors)
    sections = [f"# Benchmark report: {facts['run_id']}",
                f"> **Accelerator: {accel_banner(facts['accel'])}.**",
                trust_report.banner(df, manifest), headline_text,
                _facts_section(facts), trust_report.section(df, manifest), _summary_section(numbers),
                scaling_text,
                _plots_section(images, _speedup_notes(numbers.ratios) + cdf_notes), trace_text, _failed_section(df), _hostile_section(run_dir),
                _kvm_nested_section(df, run_dir), _published_section(comparison, published_images), _METHOD]
    path = run_dir / "report.md"
    path.write_text("\n\n".join(s for s in sections if s) + "\n")
    json_path = None
    if summary_json:
        json_path = run_dir / "summary.json"
        sources = {"results_csv": results.schema_version,
                   "manifest_json": manifest.schema_version if manifest else None}
        write_json_atomic(json_path, summary_document(numbers, facts["run_id"], facts["accel"],
                                                      results.bad_lines, sources))
    drawn = headline_images + images + published_images + scaling_images
    _remove_undrawn(run_dir / "plots", drawn)
    return Report(path, drawn + trace_images, json_path)
