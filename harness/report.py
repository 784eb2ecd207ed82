"""report.md and plots of one run, from run_dir/results.csv alone.

Optional inputs beside it: manifest.json (host, accelerator, QEMU facts; any
shape — its scalar fields are searched by name), hostile.csv (the micro-guest's
hostile cases, shown as a table) and host-fio rows in results.csv (the ceiling).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
import pandas as pd  # noqa: E402

from . import published, stats  # noqa: E402
from .errors import UserError  # noqa: E402
from .results import HOST_VARIANT, load_results, row_key  # noqa: E402

PANEL_KEYS = ["guest", "disk", "rw", "bs", "numjobs"]
PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:olive", "tab:cyan"]
HOST_STYLE = {"color": "black", "linestyle": "--", "marker": "x"}
PRECISION = 0.10  # the ±10% that rfc-v9 aims its repetitions at


# --- facts --------------------------------------------------------------------------------

def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"manifest": "unreadable"}


def flatten(data, prefix: str = "") -> dict[str, str]:
    """{'host': {'cpu': 'X'}} → {'host.cpu': 'X'}; lists of scalars are joined."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list):
        if all(not isinstance(v, (dict, list)) for v in data):
            return {prefix[:-1]: ", ".join(map(str, data))}
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: "" if data is None else str(data)}


_FACT_PATTERNS = {
    "host_cpu": r"(cpu_model|model_name|host\.cpu|cpu_name)$",
    "host_cpus": r"(nproc|host_cpus|cpu_count|ncpus|host\.cpus|host\.cores)$",
    "host_kernel": r"(host.*kernel|kernel_release|uname)",
    "storage": r"(storage|fstype|filesystem|backing)",
    "qemu": r"(qemu.*(version|commit)|\.version$|worktree_head|commit$)",
    "notices": r"^notices",
    "guest": r"^guest$",
}


def _generic_facts(flat: dict[str, str]) -> dict[str, str]:
    facts = {}
    for fact, pattern in _FACT_PATTERNS.items():
        hits = [f"{k}: {v}" if fact == "qemu" else v for k, v in flat.items()
                if re.search(pattern, k, re.IGNORECASE) and v]
        facts[fact] = "; ".join(dict.fromkeys(hits)) or "unknown"
    return facts


def _qemu_facts(variants: dict) -> str:
    """bench.write_manifest's shape: variants.<name>.qemu_version and .build.worktree_head."""
    parts = []
    for name, info in variants.items():
        if not isinstance(info, dict):
            continue
        build = info.get("build") or {}
        version = (info.get("qemu_version") or info.get("version") or build.get("version")
                   or "version unknown")
        head = build.get("worktree_head")
        parts.append(f"{name}: {version}" + (f" (commit {str(head)[:12]})" if head else ""))
    return "; ".join(parts)


def _disk_facts(config: dict) -> str:
    disks = config.get("disks") if isinstance(config, dict) else None
    if not isinstance(disks, list):
        return ""
    return "; ".join(f"{d.get('name', 'disk')}: raw image {d.get('path', '?')} ({d.get('size', '?')})"
                     for d in disks if isinstance(d, dict))


def run_facts(manifest: dict, df: pd.DataFrame) -> dict[str, str]:
    """The facts the report states, from the manifest where it has them."""
    facts = _generic_facts(flatten(manifest))
    if isinstance(manifest.get("variants"), dict):
        facts["qemu"] = _qemu_facts(manifest["variants"]) or facts["qemu"]
    if facts["storage"] == "unknown":
        facts["storage"] = _disk_facts(manifest.get("config", {})) or "unknown"
    guests = df[df["variant"] != HOST_VARIANT]
    facts["accel"] = ", ".join(sorted(set(guests["accel"]) - {""})) or "unknown"
    reps = guests.groupby(stats.GROUP_KEYS)["rep"].nunique()
    per_guest = reps.groupby(level="guest").max()
    facts["repetitions"] = ", ".join(f"{guest} {int(n)}" for guest, n in per_guest.items()) or "0"
    facts["run_id"] = ", ".join(sorted(set(df["run_id"]))) or "unknown"
    facts["guests"] = ", ".join(sorted(set(guests["guest"]))) or "unknown"
    share = manifest.get("host_cpu_during_run") or {}
    facts["host_load"] = (f"busy {share['busy_pct']}%, stolen by the hypervisor "
                          f"{share['steal_pct']}%, idle {share['idle_pct']}%"
                          if share else "not recorded")
    return facts


def accel_banner(accel: str) -> str:
    """The sentence that must not be missed: what the numbers can be compared with."""
    accels = {a.strip().lower() for a in accel.split(",")}
    if accels == {"kvm"}:
        return "KVM (hardware virtualisation)"
    if accels == {"tcg"}:
        return "TCG (software emulation): absolute numbers are not comparable to KVM"
    return f"{accel.upper()} — mixed or unknown accelerator: check each table's accel column"


def accel_title(accel: str) -> str:
    return {"kvm": "KVM", "tcg": "TCG (software emulation)"}.get(accel, accel.upper() or "unknown")


# --- plots --------------------------------------------------------------------------------

def variant_colors(variants, baseline: str) -> dict[str, str]:
    """Baseline first (blue), then the others in name order; stable across plots."""
    ordered = [baseline] + sorted(set(variants) - {baseline, HOST_VARIANT})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(ordered)}


def _panels(frame: pd.DataFrame):
    keys = PANEL_KEYS + (["accel"] if "accel" in frame else [])
    return list(frame.groupby(keys, sort=True))


def _panel_title(key: tuple) -> str:
    guest, disk, rw, bs, jobs = key[:5]
    return f"{guest} guest · {disk} · {rw} {bs} · {jobs} job{'s' if jobs > 1 else ''}"


def _grid(n: int, width: float = 5.2, height: float = 3.8):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.8), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _iodepth_axis(ax, depths) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(depths), [str(d) for d in sorted(depths)])
    ax.minorticks_off()
    ax.set_xlabel("iodepth (requests in flight)")
    ax.grid(True, alpha=0.3)


def _thousands(value: float, _pos=None) -> str:
    return f"{value / 1000:g}k" if value else "0"


def save_figure(fig, base: Path, dpi: int = 100) -> list[Path]:
    """The figure as base.png and base.svg; closes it."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".png"), base.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


def _finish(fig, axes, base: Path, title: str, legend_room: float) -> list[Path]:
    """Shared legend, title, layout (legend_room: the part of the width left of the legend)."""
    _legend(fig, axes)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, legend_room, 0.95))
    return save_figure(fig, base)


def _legend(fig, axes) -> None:
    """One legend for all panels, right of the grid; the host ceiling last."""
    handles: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles, key=lambda label: label.startswith("host"))
    if labels:
        fig.legend([handles[l] for l in labels], labels, loc="upper right",
                   bbox_to_anchor=(0.995, 0.93), fontsize=8)


def _dodge(depths: pd.Series, variant: str, colors: dict) -> pd.Series:
    """Shift each variant slightly along the log2 x axis so error bars do not overlap."""
    order = list(colors)
    index = order.index(variant) if variant in order else len(order)
    return depths * 2 ** ((index - (len(order) - 1) / 2) * 0.07)


def plot_iops(summary: pd.DataFrame, base: Path, colors: dict, title: str) -> list[Path]:
    """(a) Median IOPS vs iodepth per variant, error bars min–max; host-fio dashed."""
    panels = _panels(summary)
    if not panels:
        return []
    fig, axes = _grid(len(panels))
    for ax, (key, frame) in zip(axes, panels):
        for variant, rows in frame.groupby("variant"):
            rows = rows.sort_values("iodepth")
            err = [rows["iops_median"] - rows["iops_min"], rows["iops_max"] - rows["iops_median"]]
            style = HOST_STYLE if variant == HOST_VARIANT else {"color": colors.get(variant), "marker": "o"}
            label = "host fio (ceiling)" if variant == HOST_VARIANT else variant
            x = _dodge(rows["iodepth"], variant, colors)
            ax.errorbar(x, rows["iops_median"], yerr=err, capsize=3, label=label, **style)
        _iodepth_axis(ax, frame["iodepth"].unique())
        ax.set_ylabel("IOPS (median; bars min–max)")
        ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
        ax.set_ylim(bottom=0)
        ax.set_title(_panel_title(key), fontsize=9)
    return _finish(fig, axes, base, f"IOPS vs iodepth — {title}", 0.88)


_PCT_STYLES = (("lat_p50_us_median", "p50", "-"), ("lat_p99_us_median", "p99", "--"),
               ("lat_p999_us_median", "p99.9", ":"))


def plot_latency(summary: pd.DataFrame, base: Path, colors: dict, title: str) -> list[Path]:
    """(b) Latency percentiles vs iodepth: colour = variant, line style = percentile."""
    guests = summary[summary["variant"] != HOST_VARIANT]
    panels = _panels(guests)
    if not panels:
        return []
    fig, axes = _grid(len(panels))
    for ax, (key, frame) in zip(axes, panels):
        for variant, rows in frame.groupby("variant"):
            rows = rows.sort_values("iodepth")
            for column, name, style in _PCT_STYLES:
                ax.plot(rows["iodepth"], rows[column], linestyle=style, marker=".",
                        color=colors.get(variant), label=f"{variant} {name}")
        _iodepth_axis(ax, frame["iodepth"].unique())
        ax.set_yscale("log")
        ax.set_ylabel("latency, µs (median over reps; log)")
        ax.set_title(_panel_title(key), fontsize=9)
    return _finish(fig, axes, base,
                   f"Latency percentiles (p50 solid, p99 dashed, p99.9 dotted) — {title}", 0.85)


def plot_speedup(ratios: pd.DataFrame, base: Path, colors: dict, title: str, baseline: str) -> list[Path]:
    """(c) IOPS ratio of each variant over the baseline with 95% CI; 1.0 marked."""
    panels = _panels(ratios)
    if not panels:
        return []
    fig, axes = _grid(len(panels))
    for ax, (key, frame) in zip(axes, panels):
        for variant, rows in frame.groupby("variant"):
            rows = rows.sort_values("iodepth")
            err = np.nan_to_num([rows["ratio"] - rows["ci_low"], rows["ci_high"] - rows["ratio"]])
            x = _dodge(rows["iodepth"], variant, colors)
            ax.errorbar(x, rows["ratio"], yerr=err, capsize=3, marker="o",
                        color=colors.get(variant), label=f"{variant} / {baseline}")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        _iodepth_axis(ax, frame["iodepth"].unique())
        ax.set_ylabel(f"IOPS ratio to {baseline} (95% CI)")
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 0.9), max(high, 1.1))
        ax.set_title(_panel_title(key), fontsize=9)
    return _finish(fig, axes, base, f"Speed-up over {baseline} — {title}", 0.85)


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
    return "–" if row is None else _ci_text(row.ratio, row.ci_low, row.ci_high)


def _ci_text(ratio: float, low: float, high: float) -> str:
    if not np.isfinite(ratio):
        return "–"
    if not np.isfinite(low):
        return f"{ratio:.2f} (no CI)"
    return f"{ratio:.2f} [{low:.2f}, {high:.2f}]"


def _facts_section(facts: dict[str, str]) -> str:
    rows = [["accelerator", f"**{accel_banner(facts['accel'])}**"],
            ["host CPU", facts["host_cpu"]], ["host CPUs", facts["host_cpus"]],
            ["host kernel", facts["host_kernel"]], ["QEMU", facts["qemu"]],
            ["storage", facts["storage"]], ["guests", facts["guests"]],
            ["guest", facts["guest"]], ["notices", facts["notices"]],
            ["repetitions per point", facts["repetitions"]],
            ["host CPU time during the run", facts["host_load"]], ["run", facts["run_id"]]]
    return "## Run facts\n\n" + md_table(["fact", "value"], rows)


def _workload_heading(key: tuple) -> str:
    guest, accel, disk, rw, bs, qd, jobs = key
    return (f"### {rw} {bs}, iodepth {qd}, {jobs} job(s) — {guest} guest, disk {disk}, "
            f"{accel_title(accel)}")


def _summary_rows(frame: pd.DataFrame, ratio_by_variant: dict, baseline: str, ceiling) -> list[list]:
    rows = []
    for item in frame.itertuples(index=False):
        ratio = ratio_by_variant.get(item.variant)
        text = "1 (baseline)" if item.variant == baseline else _ratio_text(ratio)
        flag = "noisy" if item.noisy else ("all failed" if item.n_ok == 0 else "")
        iops = "–" if item.n_ok == 0 else \
            f"{_num(item.iops_median)} ({_num(item.iops_min)}–{_num(item.iops_max)})"
        rows.append([item.variant, iops,
                     _num(item.lat_p99_us_median, 1), text, flag,
                     f"{item.n_ok} ok, {item.n_failed} failed"])
    if ceiling is not None:
        rows.append([f"{HOST_VARIANT} (ceiling)", _num(ceiling), "–", "–", "", "host"])
    return rows


def _summary_section(summary: pd.DataFrame, ratios: pd.DataFrame, baseline: str,
                     ceiling: pd.DataFrame) -> str:
    parts = ["## Summary per workload",
             f"Median IOPS over repetitions (min–max), median p99 latency, and the ratio of "
             f"median IOPS to **{baseline}** with a 95% bootstrap CI. *noisy*: the IOPS "
             f"coefficient of variation exceeds {stats.NOISY_CV:.0%}."]
    if len(ratios):
        parts.append(_precision_line(ratios))
    guests = summary[summary["variant"] != HOST_VARIANT]
    headers = ["variant", "IOPS median (min–max)", "p99 µs", f"ratio to {baseline} [95% CI]",
               "flag", "reps"]
    for key, frame in guests.groupby(stats.WORKLOAD_KEYS, sort=False):
        wanted = pd.Series(dict(zip(stats.WORKLOAD_KEYS, key)))
        these = ratios[(ratios[stats.WORKLOAD_KEYS] == wanted).all(axis=1)]
        by_variant = {r.variant: r for r in these.itertuples(index=False)}
        table = _summary_rows(frame, by_variant, baseline, _ceiling_for(ceiling, key))
        parts += [_workload_heading(key), md_table(headers, table)]
    return "\n\n".join(parts)


def _precision_line(ratios: pd.DataFrame) -> str:
    """How many ratio CIs are within ±10% of the ratio, per guest: the precision the
    configs aim at; the wide ones need more repetitions or a quieter host."""
    half_width = (ratios["ci_high"] - ratios["ci_low"]) / 2 / ratios["ratio"]
    counts = [f"{guest} {int((half_width[rows.index] <= PRECISION).sum())} of {len(rows)}"
              for guest, rows in ratios.groupby("guest")]
    return (f"95% CIs within ±{PRECISION:.0%} of the ratio: " + ", ".join(counts) + ".")


def _ceiling_for(ceiling: pd.DataFrame, key: tuple):
    _, _, disk, rw, bs, qd, jobs = key
    hit = ceiling[(ceiling["disk"] == disk) & (ceiling["rw"] == rw) & (ceiling["bs"] == bs)
                  & (ceiling["iodepth"] == qd) & (ceiling["numjobs"] == jobs)]
    return float(hit["host_iops_median"].iloc[0]) if len(hit) else None


def _failed_section(df: pd.DataFrame) -> str:
    failed = df[df["status"] != "ok"]
    if failed.empty:
        return "## Failed points\n\nNone."
    rows = [[row_key(r), r["accel"], r["error"] or "(no message)", f"`{r['log']}`" if r["log"] else "–"]
            for r in failed.to_dict("records")]
    return "## Failed points\n\n" + md_table(["point", "accel", "error", "log"], rows)


def _hostile_section(run_dir: Path) -> str:
    path = run_dir / "hostile.csv"
    if not path.exists():
        return ""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return ("## Hostile cases (micro-guest)\n\n"
            + md_table(list(table.columns), table.values.tolist()))


def _published_section(comparison: published.PublishedComparison, plots: list[Path]) -> str:
    parts = ["## Published figures", comparison.paragraph]
    if not comparison.ratios.empty:
        headers = ["published", "kind", "their ratio", "their IOPS", "their setup", "ours",
                   "our ratio [95% CI]", "our median IOPS", "our workload", "verdict"]
        rows = [[r.source, r.kind, _num(r.their_ratio, 2), _num(r.their_iops),
                 f"{r.their_workload}; {r.their_hardware}; {r.their_storage}; accel {r.their_accel}",
                 f"{r.our_variant} ({r.guest} guest, {r.our_accel})",
                 _ci_text(r.our_ratio, r.our_ci_low, r.our_ci_high), _num(r.our_iops),
                 r.our_workload, r.verdict]
                for r in comparison.ratios.itertuples(index=False)]
        parts.append(md_table(headers, rows))
    if not comparison.absolute.empty:
        rows = [[r.guest, r.variant, r.accel, f"{r.rw} {r.bs} qd{r.iodepth} j{r.numjobs}", r.disk,
                 _num(r.iops_median), _num(r.host_iops_median), _num(r.of_host, 2)]
                for r in comparison.absolute.itertuples(index=False)]
        parts += ["Our absolute IOPS beside fio on the host against the same image:",
                  md_table(["guest", "variant", "accel", "workload", "disk", "median IOPS",
                            "host fio IOPS", "fraction of host"], rows)]
    parts += [f"![ours vs published](plots/{p.name})" for p in plots if p.suffix == ".png"]
    return "\n\n".join(parts)


_METHOD = """## Method

- Each point ran in its own repetitions; variants were interleaved per repetition.
- Ratios are of medians; the 95% CI is a percentile bootstrap over repetitions
  (10,000 resamples, fixed seed). With 3 repetitions it excludes 1 only when every
  repetition of one variant beats every repetition of the other.
- Latencies are fio completion latencies; for randrw they are the reads'. IOPS of
  randrw are reads + writes."""


def _plots_section(plots: list[Path]) -> str:
    images = [f"![{p.stem}](plots/{p.name})" for p in plots if p.suffix == ".png"]
    return "## Plots\n\n" + ("\n\n".join(images) if images else "No successful points to plot.")


def write_report(run_dir: Path | str, baseline: str) -> Path:
    """Write run_dir/report.md and run_dir/plots/*.png|svg; returns the report's path."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.csv").exists():
        raise UserError(f"{run_dir} has no results.csv: nothing to report")
    df = load_results(run_dir)
    facts = run_facts(read_manifest(run_dir), df)
    summary, ratios = stats.summarize(df), stats.ratios(df, baseline)
    colors = variant_colors(df["variant"], baseline)
    title = accel_title(facts["accel"]) if "," not in facts["accel"] else facts["accel"]
    plots_dir = run_dir / "plots"
    ok_summary = summary[summary["n_ok"] > 0]
    plots = (plot_iops(ok_summary, plots_dir / "iops_vs_iodepth", colors, title)
             + plot_latency(ok_summary, plots_dir / "latency_percentiles", colors, title)
             + plot_speedup(ratios, plots_dir / "speedup", colors, title, baseline))
    comparison = published.compare_with_published(df, baseline, facts)
    published_plots = published.plot_published(comparison, plots_dir / "published", title)
    sections = [f"# Benchmark report: {facts['run_id']}",
                f"> **Accelerator: {accel_banner(facts['accel'])}.**",
                _facts_section(facts),
                _summary_section(summary, ratios, baseline, stats.host_ceiling(df)),
                _plots_section(plots), _failed_section(df), _hostile_section(run_dir),
                _published_section(comparison, published_plots), _METHOD]
    path = run_dir / "report.md"
    path.write_text("\n\n".join(s for s in sections if s) + "\n")
    return path
