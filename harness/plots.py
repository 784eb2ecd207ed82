"""The plots of a report, drawn from the frames of stats (and published's comparison).

One panel per guest × disk × rw × bs × numjobs, iodepth on a log2 x axis; the
variants in the same colours in every plot (the baseline blue), fio on the host
drawn in black in the panels of every guest it can be set beside (same disk and
workload).  Each figure is written as PNG and SVG; both are reproducible (no
dates, fixed SVG ids), so redrawing a run changes nothing when its data did not.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from .published import fmt_ratio, most_comparable  # noqa: E402
from .hosts.spec import LOCAL_HOST  # noqa: E402
from .results import HOST_VARIANT, disk_text  # noqa: E402
from .stats import MIN_CI_REPS  # noqa: E402

matplotlib.rcParams["svg.hashsalt"] = "dataplane-harness"
#: a panel never mixes two hosts, nor two numbers of devices
PANEL_KEYS = ["host", "guest", "disk", "devices", "rw", "bs", "numjobs"]
HOST_KEYS = ["host", "disk", "rw", "bs", "numjobs"]
PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:olive", "tab:cyan"]
HOST_COLOR = "black"
HOST_LABEL = "host fio (same image)"
#: a series through fewer iodepths is drawn as markers only: a line through two depths
#: (QD1, QD16) suggests a trend between them that was not measured
MIN_LINE_DEPTHS = 3


def variant_colors(variants, baseline: str) -> dict[str, str]:
    """Baseline first (blue), then the others in name order; stable across plots."""
    ordered = [baseline] + sorted(set(variants) - {baseline, HOST_VARIANT})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(ordered)}


def save_figure(fig, base: Path, dpi: int = 100) -> list[Path]:
    """The figure as base.png and base.svg, cropped to what is drawn (nothing clipped); closes it."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".png"), base.with_suffix(".svg")]
    for path in paths:
        metadata = {"Date": None} if path.suffix == ".svg" else {"Software": None}
        fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.15, metadata=metadata)
    plt.close(fig)
    return paths


# --- panels -----------------------------------------------------------------------------------

def _guest_panels(frame: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    guests = frame[frame["variant"] != HOST_VARIANT]
    return list(guests.groupby(PANEL_KEYS, sort=True))


def _host_rows(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The host-fio rows to draw in the panel `key` (same disk, rw, bs, numjobs)."""
    host = frame[frame["variant"] == HOST_VARIANT]
    wanted = dict(zip(PANEL_KEYS, key))
    for name in HOST_KEYS:
        host = host[host[name] == wanted[name]]
    return host.sort_values("iodepth")


def _panel_title(key: tuple) -> str:
    host, guest, disk, devices, rw, bs, jobs = key
    where = "" if host == LOCAL_HOST else f"{host} · "
    return (f"{where}{guest} · {disk_text(disk, devices)} · {rw} {bs} · "
            f"{jobs} job{'s' if jobs > 1 else ''}")


def _grid(n: int, width: float = 4.6, height: float = 3.4, sharey: bool = False):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.6),
                             squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _iodepth_axis(ax, depths) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(depths), [str(d) for d in sorted(depths)])
    ax.minorticks_off()
    ax.set_xlabel("iodepth (requests in flight)")
    ax.grid(True, alpha=0.3, which="major")


def _si(value: float, _pos=None) -> str:
    """12000 → '12k', 1.5e6 → '1.5M', 0.5 → '0.5'."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _log_y(ax, formatter=_si) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(formatter))
    ax.yaxis.set_minor_formatter(NullFormatter())


def line_style(depths, style: str = "-") -> str:
    """`style` for a series through `depths`, "none" (markers only) below MIN_LINE_DEPTHS."""
    return style if len(set(depths)) >= MIN_LINE_DEPTHS else "none"


def _dodge(depths: pd.Series, variant: str, order: list[str]) -> pd.Series:
    """Shift each series slightly along the log2 x axis so error bars do not overlap."""
    index = order.index(variant) if variant in order else len(order)
    return depths * 2 ** ((index - (len(order) - 1) / 2) * 0.06)


def _finish(fig, axes, title: str, extra: list | None = None):
    """One legend for all panels, right of the grid (host fio and style keys last); title."""
    handles: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles, key=lambda label: label == HOST_LABEL)
    items = [(handles[l], l) for l in labels] + [(h, h.get_label()) for h in extra or []]
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    if items:
        fig.legend([h for h, _ in items], [l for _, l in items], loc="upper left",
                   bbox_to_anchor=(1.0, 0.95), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12, y=1.0)
    return fig


def _order(colors: dict) -> list[str]:
    return list(colors) + [HOST_VARIANT]


# --- the plots of a run ------------------------------------------------------------------

def _errorbar(ax, rows: pd.DataFrame, column: str, low: str, high: str, x, **style) -> None:
    err = np.nan_to_num([rows[column] - rows[low], rows[high] - rows[column]])
    ax.errorbar(x, rows[column], yerr=np.clip(err, 0, None), capsize=3, **style)


def plot_iops(summary: pd.DataFrame, base: Path, colors: dict, title: str) -> list[Path]:
    fig = iops_figure(summary, colors, title)
    return [] if fig is None else save_figure(fig, base)


def iops_figure(summary: pd.DataFrame, colors: dict, title: str):
    """Median IOPS vs iodepth per variant, bars min–max over repetitions; host fio beside them."""
    panels = _guest_panels(summary)
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    order = _order(colors)
    for ax, (key, frame) in zip(axes, panels):
        for variant, rows in frame.groupby("variant"):
            rows = rows.sort_values("iodepth")
            _errorbar(ax, rows, "iops_median", "iops_min", "iops_max",
                      _dodge(rows["iodepth"], variant, order), marker="o", label=variant,
                      color=colors.get(variant), linestyle=line_style(rows["iodepth"]))
        host = _host_rows(summary, key)
        if len(host):
            _errorbar(ax, host, "iops_median", "iops_min", "iops_max",
                      _dodge(host["iodepth"], HOST_VARIANT, order), marker="x",
                      linestyle=line_style(host["iodepth"], "--"), color=HOST_COLOR,
                      label=HOST_LABEL)
        _iodepth_axis(ax, set(frame["iodepth"]) | set(host["iodepth"]))
        _log_y(ax)
        ax.set_ylabel("IOPS (median; bars min–max; log)")
        ax.set_title(_panel_title(key), fontsize=9)
    return _finish(fig, axes, f"IOPS vs iodepth — {title}")


def plot_latency(summary: pd.DataFrame, base: Path, colors: dict, title: str) -> list[Path]:
    fig = latency_figure(summary, colors, title)
    return [] if fig is None else save_figure(fig, base)


def latency_figure(summary: pd.DataFrame, colors: dict, title: str):
    """p99 latency vs iodepth per variant (bars: min–max of the repetitions' p99), p50 dotted.

    Host fio is left out here: its completion latency does not include the time spent
    in io_submit, which on a tmpfs image is the whole request (0.2 µs at QD1), so it
    cannot be set beside a guest's; its latencies are in results.csv and summary.json.
    """
    panels = _guest_panels(summary)
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    order = _order(colors)
    for ax, (key, frame) in zip(axes, panels):
        for variant, rows in frame.groupby("variant"):
            rows, color = rows.sort_values("iodepth"), colors.get(variant)
            x = _dodge(rows["iodepth"], variant, order)
            _errorbar(ax, rows, "lat_p99_us_median", "lat_p99_us_min", "lat_p99_us_max", x,
                      marker="o", markersize=4, color=color, label=variant,
                      linestyle=line_style(rows["iodepth"]))
            ax.plot(x, rows["lat_p50_us_median"], linestyle=line_style(rows["iodepth"], ":"),
                    marker="_", markersize=7, linewidth=1.2, color=color)
        _iodepth_axis(ax, frame["iodepth"].unique())
        _log_y(ax)
        ax.set_ylabel("latency, µs (log)")
        ax.set_title(_panel_title(key), fontsize=9)
    keys = [Line2D([], [], color="gray", marker="o", markersize=4,
                   label="p99: median of the repetitions,\nbars min–max"),
            Line2D([], [], color="gray", linestyle=":", marker="_",
                   label="p50: median of the repetitions")]
    return _finish(fig, axes, f"Latency: p99 (solid) and p50 (dotted) — {title}", keys)


def _ratio_ticks(low: float, high: float) -> list[float]:
    """Powers of two; on a narrow axis (a panel of ratios near 1) finer steps as well."""
    powers = [2.0 ** k for k in range(-7, 8)]
    medium = sorted(set(powers) | {0.4, 0.75, 1.5, 3.0, 6.0, 12.0, 24.0, 48.0})
    fine = sorted(set(medium) | {0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3})
    for candidates in (fine, medium, powers):
        inside = [t for t in candidates if low <= t <= high]
        if len(inside) <= 8:
            return inside or [1.0]
    return inside


def _times(value: float, _pos=None) -> str:
    return f"{value:g}×"


def _ratio_axis(ax, frame: pd.DataFrame) -> None:
    """Log y around the panel's ratios and CIs, always showing 1×."""
    values = frame[["ratio", "ci_low", "ci_high"]].to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    low = min(values.min(initial=1.0), 1.0) / 1.12
    high = max(values.max(initial=1.0), 1.0) * 1.12
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(_ratio_ticks(low, high)))
    ax.yaxis.set_major_formatter(FuncFormatter(_times))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plot_speedup(ratios: pd.DataFrame, base: Path, colors: dict, title: str,
                 baseline: str) -> list[Path]:
    fig = speedup_figure(ratios, colors, title, baseline)
    return [] if fig is None else save_figure(fig, base)


def speedup_figure(ratios: pd.DataFrame, colors: dict, title: str, baseline: str):
    """IOPS ratio of each variant over the baseline with its 95% CI, log y, 1.0 marked."""
    if ratios.empty:
        return None
    panels = list(ratios.groupby(PANEL_KEYS, sort=True))
    fig, axes = _grid(len(panels))
    order = _order(colors)
    for ax, (key, frame) in zip(axes, panels):
        ax.axhline(1.0, color="black", linewidth=1.0)
        for variant, rows in frame.groupby("variant"):
            rows = rows.sort_values("iodepth")
            _errorbar(ax, rows, "ratio", "ci_low", "ci_high",
                      _dodge(rows["iodepth"], variant, order), marker="o",
                      color=colors.get(variant), label=f"{variant} / {baseline}",
                      linestyle=line_style(rows["iodepth"]))
        _iodepth_axis(ax, frame["iodepth"].unique())
        _ratio_axis(ax, frame)
        ax.set_title(_panel_title(key), fontsize=9)
        ax.set_ylabel(f"IOPS / {baseline} (95% CI; log)")
    return _finish(fig, axes, f"Speed-up over {baseline} — {title}")


def plot_efficiency(summary: pd.DataFrame, base: Path, colors: dict, title: str) -> list[Path]:
    fig = efficiency_figure(summary, colors, title)
    return [] if fig is None else save_figure(fig, base)


def efficiency_figure(summary: pd.DataFrame, colors: dict, title: str):
    """Median IOPS against median host CPU µs per I/O, one line per variant through its
    iodepths (each point labelled with its iodepth), log-log; host fio (its own CPU) in
    black; guest-bound points hollow.  Up and to the left is better: more I/O for less CPU."""
    has_cpu = summary[np.isfinite(summary["cpu_us_per_io_median"].astype(float))
                      & (summary["iops_median"] > 0)]
    panels = _guest_panels(has_cpu)
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    bound_seen = False
    for ax, (key, frame) in zip(axes, panels):
        for variant, rows in frame.groupby("variant"):
            rows = rows.sort_values("iodepth")
            color = colors.get(variant)
            ax.plot(rows["cpu_us_per_io_median"], rows["iops_median"], marker="o", color=color,
                    label=variant, linestyle=line_style(rows["iodepth"]))
            bound = rows[rows["guest_bound"].astype(bool)]
            if len(bound):
                bound_seen = True
                ax.plot(bound["cpu_us_per_io_median"], bound["iops_median"], linestyle="none",
                        marker="o", markersize=9, markerfacecolor="white", color=color)
            _label_depths(ax, rows)
        host = _host_rows(has_cpu, key)
        if len(host):
            host = host.sort_values("iodepth")
            ax.plot(host["cpu_us_per_io_median"], host["iops_median"], marker="x",
                    linestyle=line_style(host["iodepth"], "--"), color=HOST_COLOR,
                    label=HOST_LABEL)
            _label_depths(ax, host)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
        low, high = ax.get_xlim()
        # within one decade a log axis has no major tick: label the minor ones
        ax.xaxis.set_minor_formatter(FuncFormatter(_si) if high < 10 * low else NullFormatter())
        _log_y(ax)
        ax.set_xlabel("host CPU µs per I/O (median; log)")
        ax.set_ylabel("IOPS (median; log)")
        ax.set_title(_panel_title(key), fontsize=9)
    extra = [Line2D([], [], linestyle="none", marker="o", markerfacecolor="white",
                    color="gray", label="guest-bound")] if bound_seen else []
    return _finish(fig, axes, f"Efficiency: IOPS vs CPU per I/O — {title} "
                              f"(up and to the left is better)", extra)


def _label_depths(ax, rows: pd.DataFrame) -> None:
    for row in rows.itertuples(index=False):
        ax.annotate(f"QD{row.iodepth}", (row.cpu_us_per_io_median, row.iops_median),
                    textcoords="offset points", xytext=(4, 3), fontsize=7, color="dimgray")


# --- the headline: ratio and CPU per I/O per guest ------------------------------------------

def plot_headline(panels: list, base: Path, colors: dict, title: str, baseline: str) -> list[Path]:
    fig = headline_figure(panels, colors, title, baseline)
    return [] if fig is None else save_figure(fig, base)


def headline_figure(panels: list, colors: dict, title: str, baseline: str):
    """headline.Panel each: above, every variant's IOPS ratio to the baseline with its 95%
    interval (dashed: the min–max, without an interval; hollow: guest-bound), the iodepths
    side by side; below, every variant's host CPU µs per I/O as bars (when recorded)."""
    if not panels:
        return None
    with_cpu = any(panel.has_cpu for panel in panels)
    cols = min(3, len(panels))
    bands = math.ceil(len(panels) / cols)
    per_band = 2 if with_cpu else 1
    fig, axes = plt.subplots(bands * per_band, cols, squeeze=False,
                             figsize=(4.8 * cols, (5.9 if with_cpu else 3.4) * bands + 0.6),
                             gridspec_kw={"height_ratios": [1.2, 1.0] * bands if with_cpu
                                          else [1.0] * bands})
    for ax in axes.flat:
        ax.set_visible(False)
    accels = {panel.key["accel"] for panel in panels}
    drawn = []
    for i, panel in enumerate(panels):
        band, col = divmod(i, cols)
        top = axes[band * per_band][col]
        _headline_ratios(top, panel, colors, baseline)
        top.set_title(panel.title(len(accels) > 1), fontsize=9)
        drawn.append(top)
        if with_cpu:
            _headline_cpu(axes[band * per_band + 1][col], panel, colors)
            drawn.append(axes[band * per_band + 1][col])
    for ax in drawn:
        ax.set_visible(True)
    return _finish(fig, drawn, f"IOPS over {baseline}" + (" (top) and host CPU per I/O "
                                                            "(bottom)" if with_cpu else "")
                   + f" — {title}", _headline_keys(panels, colors, baseline))


def _slots(panel, variants: list[str], width: float = 0.8) -> dict[str, dict[int, float]]:
    """x of each variant at each iodepth: the depths at 0, 1, …, the variants side by side."""
    step = width / max(len(variants), 1)
    return {variant: {depth: i + (k - (len(variants) - 1) / 2) * step
                      for i, depth in enumerate(panel.depths)}
            for k, variant in enumerate(variants)}


def _depth_slots_axis(ax, panel) -> None:
    ax.set_xticks(range(len(panel.depths)), [f"QD{d}" for d in panel.depths])
    ax.set_xlim(-0.5, len(panel.depths) - 0.5)
    ax.set_xlabel("iodepth")


def _whiskers(rows: pd.DataFrame) -> pd.DataFrame:
    """ratio, ci_low, ci_high and dashed: the 95% CI, or the min–max where there is none."""
    has_ci = np.isfinite(rows["ci_low"].astype(float)) & np.isfinite(rows["ci_high"].astype(float))
    return pd.DataFrame({"iodepth": rows["iodepth"].astype(int), "ratio": rows["ratio"],
                         "ci_low": np.where(has_ci, rows["ci_low"], rows["range_low"]),
                         "ci_high": np.where(has_ci, rows["ci_high"], rows["range_high"]),
                         "dashed": ~has_ci, "bound": rows["guest_bound"].astype(bool)})


def _headline_ratios(ax, panel, colors: dict, baseline: str) -> None:
    variants = [v for v in colors if v in set(panel.ratios["variant"])]
    slots = _slots(panel, variants)
    ax.axhline(1.0, color="black", linewidth=1.0)
    every = []
    for variant in variants:
        whiskers = _whiskers(panel.ratios[panel.ratios["variant"] == variant])
        every.append(whiskers)
        for point in whiskers.itertuples(index=False):
            _ratio_point(ax, slots[variant][point.iodepth], point, colors[variant],
                         _label_rotation(variants))
    _depth_slots_axis(ax, panel)
    _ratio_axis(ax, pd.concat(every))
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * (high / low) ** 0.25)  # room for the labels above the whiskers
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_ylabel(f"IOPS / {baseline} (95% CI; log)")


def _label_rotation(variants: list[str]) -> int:
    """Values above the bars and whiskers: upright while three fit side by side."""
    return 90 if len(variants) > 3 else 0


def _ratio_point(ax, x: float, point, color: str, rotation: int) -> None:
    """One ratio: its whisker (dashed without an interval), its marker (hollow when
    guest-bound) and its value above."""
    if np.isfinite(point.ci_low) and np.isfinite(point.ci_high):
        ax.plot([x, x], [point.ci_low, point.ci_high], color=color, linewidth=1.4,
                linestyle="--" if point.dashed else "-")
        ax.plot([x - 0.04, x + 0.04], [point.ci_low] * 2, color=color, linewidth=1.0)
        ax.plot([x - 0.04, x + 0.04], [point.ci_high] * 2, color=color, linewidth=1.0)
    ax.plot([x], [point.ratio], marker="o", markersize=6, linestyle="none", color=color,
            markerfacecolor="white" if point.bound else color)
    top = point.ci_high if np.isfinite(point.ci_high) else point.ratio
    ax.annotate(fmt_ratio(point.ratio), (x, top), textcoords="offset points", xytext=(0, 3),
                rotation=rotation, ha="center", va="bottom", fontsize=7, color=color,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})


def _headline_cpu(ax, panel, colors: dict) -> None:
    """Bars of the median host CPU µs per I/O of every variant, its value on top."""
    _depth_slots_axis(ax, panel)
    ax.set_ylabel("host CPU µs per I/O (median)")
    if not panel.has_cpu:
        ax.text(0.5, 0.5, "host CPU per I/O not recorded", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="dimgray")
        ax.set_yticks([])
        return
    variants = [v for v in colors if v in set(panel.variants["variant"])]
    slots, width = _slots(panel, variants), 0.8 / max(len(variants), 1)
    for variant in variants:
        rows = panel.variants[panel.variants["variant"] == variant]
        for row in rows.itertuples(index=False):
            value = float(row.cpu_us_per_io_median)
            if not np.isfinite(value):
                continue
            x = slots[variant][int(row.iodepth)]
            ax.bar(x, value, width=width * 0.9, color=colors[variant])
            ax.annotate(f"{value:.0f}" if value >= 10 else f"{value:.1f}", (x, value),
                        textcoords="offset points", xytext=(0, 2), ha="center", va="bottom",
                        fontsize=7, rotation=_label_rotation(variants))
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.grid(True, axis="y", alpha=0.3)


def _headline_keys(panels: list, colors: dict, baseline: str) -> list:
    """A colour per variant drawn (the baseline's only where its CPU bars are), then the
    keys of the 1× line, the whiskers and the markers."""
    shown = set().union(*(set(p.ratios["variant"]) for p in panels))
    shown |= set().union(*(set(p.variants["variant"]) for p in panels if p.has_cpu))
    keys = [Patch(color=color, label=variant) for variant, color in colors.items()
            if variant in shown]
    keys.append(Line2D([], [], color="black", label=f"1× = {baseline}"))
    every = pd.concat([_whiskers(p.ratios) for p in panels])
    keys.append(Line2D([], [], color="gray", label="95% CI"))
    if every["dashed"].any():
        keys.append(Line2D([], [], color="gray", linestyle="--",
                           label=f"min–max (fewer than {MIN_CI_REPS} repetitions: no CI)"))
    if every["bound"].any():
        keys.append(Line2D([], [], color="gray", marker="o", markerfacecolor="white",
                           linestyle="none", label="guest-bound: not the data plane's effect"))
    return keys


# --- fio's completion-latency distribution ---------------------------------------------------

CDF_ROW_KEYS = ["host", "guest", "accel", "disk", "devices", "rw", "bs", "numjobs"]
PERCENTILE_TICKS = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)


def plot_latency_cdf(points: pd.DataFrame, base: Path, colors: dict, title: str) -> list[Path]:
    fig = latency_cdf_figure(points, colors, title)
    return [] if fig is None else save_figure(fig, base)


def latency_cdf_figure(points: pd.DataFrame, colors: dict, title: str):
    """latency_cdf.Distributions.points: a row of panels per workload, an iodepth per
    column; per variant each repetition's percentiles faint and the median over the
    repetitions of each percentile's latency bold; log µs along x, a logit y so that both
    tails show."""
    if points.empty:
        return None
    workloads = list(points.groupby(CDF_ROW_KEYS, sort=True))
    depths = sorted({int(d) for d in points["iodepth"]})
    fig, axes = plt.subplots(len(workloads), len(depths), squeeze=False,
                             figsize=(3.8 * len(depths), 3.1 * len(workloads) + 0.6))
    for (key, workload), row in zip(workloads, axes):
        for depth, ax in zip(depths, row):
            here = workload[workload["iodepth"] == depth]
            if here.empty:
                ax.set_visible(False)
                continue
            _cdf_panel(ax, here, colors)
            ax.set_title(f"{_cdf_title(key)} · QD{depth}", fontsize=9)
    keys = [Line2D([], [], color="gray", linewidth=2.0, label="median of the repetitions"),
            Line2D([], [], color="gray", linewidth=0.8, alpha=0.35, label="each repetition")]
    return _finish(fig, [ax for ax in axes.flat if ax.get_visible()],
                   f"fio completion latency (clat) distribution — {title}", keys)


def _cdf_title(key: tuple) -> str:
    host, guest, _accel, disk, devices, rw, bs, jobs = key
    where = "" if host == LOCAL_HOST else f"{host} · "
    return (f"{where}{guest} · {disk_text(disk, devices)} · {rw} {bs} · "
            f"{jobs} job{'s' if jobs > 1 else ''}")


def _cdf_panel(ax, here: pd.DataFrame, colors: dict) -> None:
    for variant in [v for v in colors if v in set(here["variant"])]:
        mine, color = here[here["variant"] == variant], colors[variant]
        for _, rep in mine.groupby("rep"):
            rep = rep.sort_values("percentile")
            ax.plot(rep["lat_us"], rep["percentile"] / 100, color=color, linewidth=0.8,
                    alpha=0.35)
        median = mine.groupby("percentile")["lat_us"].median().sort_index()
        ax.plot(median.to_numpy(), median.index.to_numpy() / 100, color=color, linewidth=2.0,
                label=variant)
    ax.set_xscale("log")
    decades = math.log10(here["lat_us"].max() / here["lat_us"].min())
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 2 else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(_si))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("completion latency, µs (log)")
    _percentile_axis(ax, here["percentile"] / 100)


def _percentile_axis(ax, fractions: pd.Series) -> None:
    """Logit y from the lowest to the highest percentile fio reported, labelled in %."""
    low, high = float(fractions.min()), float(fractions.max())
    ax.set_yscale("logit")
    pad = 0.35  # logit units beyond the outermost percentiles
    ax.set_ylim(_expit(_logit(low) - pad), _expit(_logit(high) + pad))
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(
        [t for t in PERCENTILE_TICKS if low - 1e-9 <= t <= high + 1e-9]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{100 * value:g}%"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylabel("share of requests completed")
    ax.grid(True, alpha=0.3)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _expit(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# --- ours beside the published figures ----------------------------------------------------------

def plot_published(table: pd.DataFrame, out_base: Path, accel_title: str) -> list[Path]:
    fig = published_figure(table, accel_title)
    return [] if fig is None else save_figure(fig, out_base, dpi=110)


def published_figure(table: pd.DataFrame, accel_title: str):
    """Ours (with CI) vs published ratios: one line per published ratio, beside it the most
    comparable of ours (published.most_comparable; all of ours are in report.md's table)."""
    table = most_comparable(table)
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.8 * len(table) + 1.8))
    y = np.arange(len(table))[::-1]
    ax.scatter(table["their_ratio"], y + 0.15, marker="D", color="tab:gray", label="published",
               zorder=3)
    err = np.array([table["our_ratio"] - table["our_ci_low"],
                    table["our_ci_high"] - table["our_ratio"]])
    ax.errorbar(table["our_ratio"], y - 0.15, xerr=np.clip(np.nan_to_num(err), 0, None), fmt="o",
                color="tab:blue", capsize=3, label="ours (95% CI)", zorder=3)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    for yy, theirs, ours in zip(y, table["their_ratio"], table["our_ratio"]):
        ax.annotate(fmt_ratio(theirs), (theirs, yy + 0.15), textcoords="offset points",
                    xytext=(7, -3), fontsize=8, color="dimgray")
        if np.isfinite(ours):
            ax.annotate(fmt_ratio(ours), (ours, yy - 0.15), textcoords="offset points",
                        xytext=(7, -11), fontsize=8, color="tab:blue")
    labels = [f"{r.figure} ({r.kind})\n{_ours_label(r)}" for r in table.itertuples()]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(-0.7, len(table) - 0.3)
    _published_x_axis(ax, table)
    ax.set_title(f"Published ratios, each beside the most comparable of ours\nours measured "
                 f"on {accel_title}; all of ours: report.md's table", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return fig


def _ours_label(row) -> str:
    """Which of ours a published ratio is set beside, and what keeps them apart."""
    if not np.isfinite(row.our_ratio):
        return f"ours: {row.verdict} ({row.guest} guest, disk {row.disk})"
    text = f"ours: {row.our_variant}, {row.guest} guest, disk {row.disk}, {row.our_workload}"
    return text + ("\nguest-bound: not the data plane's effect" if row.guest_bound else "")


def _published_x_axis(ax, table: pd.DataFrame) -> None:
    values = table[["their_ratio", "our_ci_low", "our_ci_high", "our_ratio"]].to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    low, high = min(values.min(), 1.0) / 1.5, max(values.max(), 1.0) * 2.0  # room for labels
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ticks = [m * 10.0 ** e for e in range(-4, 3) for m in (1, 2, 5) if low <= m * 10.0 ** e <= high]
    ax.set_xticks(ticks, [f"{t:.4g}" for t in ticks])
    ax.minorticks_off()
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_xlabel("ratio (log scale; 1 = no difference)")
