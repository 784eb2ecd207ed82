"""The per-request latency breakdown of a run's traced points: tables, plots, prose.

Reads results/<run>/traces/ (runners/trace.py) and results.csv only.  Per
workload (guest, disk, rw, bs, iodepth) and variant, the requests of all its
traced repetitions are pooled (the guest's warm-up left out) and each stage's
median and p99 taken (tracepoints.py defines the stages).  The guest's own
latency under tracing is on the guest's TSC, the stages on the host's
CLOCK_MONOTONIC: they are shown side by side, never added.  The tracing
overhead is the traced run against the untraced row of the same point: the
guest's mean latency (at QD1 the request cycle, 1/IOPS) with and without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .results import row_key  # noqa: E402
from .trace_parse import read_trace  # noqa: E402
from .tracepoints import (HOST_SPAN, SEEN_SHARE, STAGE_LABELS, STAGES, TRACES_DIR,  # noqa: E402
                          TURNAROUND, load_point_json, read_events_list, seen_stages, segment, spans)

#: the stages drawn and tabled: the kick is each request's origin (0)
SHOWN = STAGES[1:] + (TURNAROUND,)
WORKLOAD_KEY = ("guest", "disk", "rw", "bs", "iodepth", "numjobs")
STAGE_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#cccccc")


@dataclass(frozen=True)
class VariantBreakdown:
    """One variant on one workload: its pooled requests' stage statistics."""

    variant: str
    stats: pd.DataFrame  # index SHOWN + (HOST_SPAN,), columns median, p99, seen_share
    state: dict[str, str]  # stage → "seen" / "not traced" / "not seen"
    requests: int
    incomplete: int
    dropped: int
    traced_points: int
    guest_p50_us: float  # the guest's own latency under tracing (its TSC)
    guest_p99_us: float
    traced_mean_us: float  # mean latency of the traced runs
    untraced_mean_us: float  # mean latency of the same points without tracing
    untraced_p50_us: float
    untraced_p50_range: tuple[float, float]  # over the repetitions
    traced_p50_range: tuple[float, float]

    @property
    def overhead(self) -> float:
        """Tracing's share of the traced latency, (traced - untraced) / traced, on the
        guest's median latency (medians over the repetitions)."""
        return _share(self.guest_p50_us, self.untraced_p50_us)

    @property
    def overhead_mean(self) -> float:
        """The same on the mean latency (at QD1 1/IOPS), which host preemption's tail sways."""
        return _share(self.traced_mean_us, self.untraced_mean_us)


def _share(traced: float, untraced: float) -> float:
    if not (traced > 0 and untraced > 0):
        return math.nan
    return (traced - untraced) / traced


@dataclass(frozen=True)
class Breakdown:
    workload: dict
    variants: list[VariantBreakdown]


def has_traces(run_dir: Path) -> bool:
    return any((Path(run_dir) / TRACES_DIR).glob("*.json"))


def _point_spans(run_dir: Path, meta: dict) -> tuple[pd.DataFrame, tuple[str, ...], int, int]:
    traces = Path(run_dir) / TRACES_DIR
    names = read_events_list(traces / meta["events_list"])
    requests = segment(read_trace(traces / meta["trace"], names))
    table = spans(requests, skip=int(meta.get("warmup", 0)))
    return table, requests.traced, requests.incomplete, requests.dropped


def _guest_latency(meta: dict) -> tuple[float, float, float]:
    """p50, p99 and mean (µs) the guest measured in the traced run."""
    lat = (meta.get("result") or {}).get("lat_ns") or {}
    return (float(lat.get("p50", math.nan)) / 1000, float(lat.get("p99", math.nan)) / 1000,
            float(lat.get("mean", math.nan)) / 1000)


def _stats(table: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    rows["kick_seen"] = {"median": math.nan, "p99": math.nan,
                         "seen_share": table["kick"].notna().mean() if len(table) else 0.0}
    for column in SHOWN + (HOST_SPAN,):
        values = table[column].dropna()
        rows[column] = {"median": values.median() if len(values) else math.nan,
                        "p99": values.quantile(0.99) if len(values) else math.nan,
                        "seen_share": len(values) / len(table) if len(table) else 0.0}
    return pd.DataFrame.from_dict(rows, orient="index")


def breakdowns(run_dir: Path | str, results: pd.DataFrame) -> list[Breakdown]:
    """Every traced workload of a run, its variants in the run's order."""
    run_dir = Path(run_dir)
    metas = [load_point_json(p) for p in sorted((run_dir / TRACES_DIR).glob("*.json"))]
    metas = [m for m in metas if m.get("ok") and int(m.get("iodepth", 1)) == 1]
    if not metas:
        return []
    untraced = {row_key(r): r for r in results.to_dict("records") if r.get("status") == "ok"}
    order = list(dict.fromkeys(results["variant"])) if len(results) else []
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for meta in metas:
        key = tuple(meta[k] for k in WORKLOAD_KEY)
        groups.setdefault(key, {}).setdefault(meta["variant"], []).append(meta)
    out = []
    for key, by_variant in groups.items():
        names = sorted(by_variant, key=lambda v: order.index(v) if v in order else len(order))
        out.append(Breakdown(dict(zip(WORKLOAD_KEY, key)),
                             [_variant(run_dir, v, by_variant[v], untraced) for v in names]))
    return out


def _variant(run_dir: Path, variant: str, metas: list[dict], untraced: dict) -> VariantBreakdown:
    tables, incomplete, dropped, traced = [], 0, 0, ()
    guest_p50, guest_p99, traced_mean, plain_mean, plain_p50 = [], [], [], [], []
    for meta in metas:
        table, traced, bad, lost = _point_spans(run_dir, meta)
        tables.append(table)
        incomplete, dropped = incomplete + bad, dropped + lost
        p50, p99, mean = _guest_latency(meta)
        guest_p50.append(p50)
        guest_p99.append(p99)
        traced_mean.append(mean)
        row = untraced.get(meta["key"])
        plain_mean.append(float(row["lat_mean_us"]) if row else math.nan)
        plain_p50.append(float(row["lat_p50_us"]) if row else math.nan)
    pooled = pd.concat(tables, ignore_index=True)
    return VariantBreakdown(variant, _stats(pooled), seen_stages(pooled, traced), len(pooled),
                            incomplete, dropped, len(metas), _median(guest_p50),
                            _median(guest_p99), _median(traced_mean), _median(plain_mean),
                            _median(plain_p50), _range(plain_p50), _range(guest_p50))


def _range(values: list[float]) -> tuple[float, float]:
    clean = [v for v in values if not math.isnan(v)]
    return (min(clean), max(clean)) if clean else (math.nan, math.nan)


def _median(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return float(np.median(clean)) if clean else math.nan


# --- text ----------------------------------------------------------------------------------


def _us(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cell(v: VariantBreakdown, stage: str, column: str) -> str:
    state = v.state.get(stage, "seen")
    if state == "not traced":
        return "not traced"
    if state == "not seen":
        return f"not seen ({v.stats.loc[stage, 'seen_share']:.0%})"
    return _us(v.stats.loc[stage, column])


def breakdown_table(b: Breakdown) -> str:
    headers = ["stage (µs, host clock)"]
    for v in b.variants:
        headers += [f"{v.variant} median", f"{v.variant} p99"]
    rows = []
    for stage in SHOWN + (HOST_SPAN,):
        label = STAGE_LABELS.get(stage, "host: first → last event, per request")
        rows.append([label] + [c for v in b.variants for c in (_cell(v, stage, "median"),
                                                               _cell(v, stage, "p99"))])
    rows.append(["guest's own latency (its TSC), under tracing"]
                + [c for v in b.variants for c in (_us(v.guest_p50_us), _us(v.guest_p99_us))])
    rows.append(["guest p50 − host p50: what the host does not see (derived)"]
                + [c for v in b.variants for c in (_us(v.guest_p50_us
                                                       - v.stats.loc[HOST_SPAN, "median"]), "")])
    return _md(headers, rows)


def overhead_table(b: Breakdown) -> str:
    headers = ["variant", "traced points", "requests paired", "left out", "records dropped",
               "guest p50 untraced (µs) [range]", "traced (µs) [range]",
               "overhead: share of traced p50", "mean untraced → traced (µs)", "on the mean"]
    rows = []
    for v in b.variants:
        rows.append([v.variant, v.traced_points, v.requests, v.incomplete, v.dropped,
                     f"{_us(v.untraced_p50_us)} [{_us(v.untraced_p50_range[0])}–"
                     f"{_us(v.untraced_p50_range[1])}]",
                     f"{_us(v.guest_p50_us)} [{_us(v.traced_p50_range[0])}–"
                     f"{_us(v.traced_p50_range[1])}]",
                     _share_text(v.overhead, flag=True),
                     f"{_us(v.untraced_mean_us)} → {_us(v.traced_mean_us)}",
                     _share_text(v.overhead_mean)])
    return _md(headers, rows)


def _share_text(value: float, flag: bool = False) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:+.1%}" + (" **≥ 10%**" if flag and value >= 0.10 else "")


def _md(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _stage_median(v: VariantBreakdown, stage: str) -> float:
    """A stage's median, 0 where it is not seen or not traced (its time is in the next)."""
    if v.state.get(stage, "seen") != "seen":
        return 0.0
    value = v.stats.loc[stage, "median"]
    return 0.0 if math.isnan(value) else float(value)


#: what each stage's time is made of on the host, per kind of variant
STAGE_WHY: dict[str, str] = {
    "picked_up": "the hop from the vCPU's kick to the data-plane thread (an eventfd wake-up; "
                 "the baseline has none, its vCPU runs the handler inside the kick)",
    "parsed": "reading the descriptor chain (the virtio core's virtqueue_pop and its mapping "
              "vs vring_pop on guest RAM mapped once)",
    "submitted": "the way to io_submit (the block layer's coroutine, bdrv_aio_readv and "
                 "raw-posix vs an iocb built by the thread)",
    "completed": "the AIO completion reaching QEMU (the baseline's main loop woken by the "
                 "eventfd, taking the global mutex from the vCPU; the data-plane thread "
                 "reaping it itself, poll from the completion ring in user space)",
    "used": "completion callbacks up to the used ring (the block layer's coroutine "
            "re-entry and virtio_blk_rw_complete vs vring_push)",
    "irq": "raising the interrupt (dataplane without an in-kernel irqchip: the guest "
           "notifier, a hop to the main loop and the global mutex; poll raises it "
           "from its own thread; the baseline in the completion callback)",
    "turnaround": "the guest's side: the vCPU noticing the completion (the interrupt's "
                  "delivery, or its own poll of the used ring), its next request and its "
                  "kick; on a host short of CPUs also the vCPU thread waiting for one (a "
                  "polling data-plane thread and a polling guest want a host CPU each)",
}


def comparison(slow: VariantBreakdown, fast: VariantBreakdown) -> str:
    """Where `slow` loses its time against `fast`, stage by stage, from the medians."""
    diffs = []
    for stage in SHOWN:
        d = _stage_median(slow, stage) - _stage_median(fast, stage)
        diffs.append((d, stage))
    diffs.sort(reverse=True)
    total_slow = sum(_stage_median(slow, s) for s in SHOWN)
    total_fast = sum(_stage_median(fast, s) for s in SHOWN)
    parts = [f"{STAGE_LABELS[s]} {d:+.2f} µs" for d, s in diffs if d >= 0.05][:4] or ["none"]
    gained = [f"{STAGE_LABELS[s]} {d:+.2f} µs" for d, s in diffs if d <= -0.05]
    text = (f"**{slow.variant} against {fast.variant}**: the stage medians add up to "
            f"{total_slow:.1f} µs against {total_fast:.1f} µs per request cycle "
            f"({total_slow - total_fast:+.1f} µs). It loses most in: "
            + "; ".join(parts) + ".")
    if gained:
        text += " It gains in: " + "; ".join(gained[::-1]) + "."
    if diffs and diffs[0][0] >= 0.05:
        text += f" The largest loss, `{STAGE_LABELS[diffs[0][1]]}`, is {STAGE_WHY[diffs[0][1]]}."
    notes = [f"`{STAGE_LABELS[s]}` is {slow.state[s]} on {slow.variant} (its time is in the "
             "next stage)" for s in SHOWN[:-1]
             if slow.state.get(s) != "seen" and fast.state.get(s) == "seen"]
    notes += [f"`{STAGE_LABELS[s]}` is {fast.state[s]} on {fast.variant} (its time is in the "
              "next stage)" for s in SHOWN[:-1]
              if fast.state.get(s) != "seen" and slow.state.get(s) == "seen"]
    for v in (slow, fast):
        share = v.stats.loc["kick_seen", "seen_share"] if "kick_seen" in v.stats.index else 1.0
        if share < SEEN_SHARE:
            notes.append(f"on {v.variant} only {share:.0%} of requests were kicked (the thread "
                         "found the others by polling: their pick-up is their origin, the time "
                         "until it is in the last stage)")
    if notes:
        text += " Not comparable stage by stage: " + "; ".join(notes) + "."
    return text


def _heading(workload: dict) -> str:
    return (f"### {workload['guest']}, {workload['disk']}, {workload['rw']} {workload['bs']} "
            f"QD{workload['iodepth']}")


def _comparisons(b: Breakdown) -> list[str]:
    """Every pair, slower (by the sum of stage medians) against faster."""
    out = []
    variants = b.variants
    for i, a in enumerate(variants):
        for c in variants[i + 1:]:
            sa, sc = (sum(_stage_median(v, s) for s in SHOWN) for v in (a, c))
            slow, fast = (a, c) if sa >= sc else (c, a)
            out.append("- " + comparison(slow, fast))
    return out


def section(run_dir: Path, results: pd.DataFrame, plots_dir: Path,
            missing_variants: list[str] | None = None) -> tuple[str, list[Path]]:
    """The report's breakdown section and its plots ("" when the run has no traces)."""
    found = breakdowns(run_dir, results)
    if not found:
        return "", []
    images: list[Path] = []
    table_path = write_table(found, Path(run_dir) / TABLE_CSV)
    parts = ["## Where each microsecond goes (traced points)", _INTRO,
             f"Every number below, per workload, variant and stage: `{table_path.name}`."]
    for b in found:
        base = plots_dir / _plot_name(b.workload)
        images += plot_breakdown(b, base)
        parts += [_heading(b.workload), breakdown_table(b), "Tracing overhead: the same "
                  "points without tracing (normal builds), the guest's latency medians over the "
                  "repetitions:", overhead_table(b),
                  *_comparisons(b), f"![breakdown](plots/{base.name}.png)"]
        over = [v for v in b.variants if v.overhead >= 0.10]
        if over:
            parts.append("Tracing costs 10% or more of the traced latency on "
                         + ", ".join(f"{v.variant} ({v.overhead:.0%})" for v in over)
                         + ": read its stages as an upper bound of the untraced ones.")
    untraced = [v for v in dict.fromkeys(results["variant"])
                if not any(v == x.variant for b in found for x in b.variants)]
    if untraced:
        parts.append("Not traced (no trace flavour, or its traced runs failed): "
                     + ", ".join(untraced) + " — every stage of these is \"not traced\".")
    return "\n\n".join(parts), images


TABLE_CSV = "trace_breakdown.csv"


def breakdown_frame(found: list[Breakdown]) -> pd.DataFrame:
    """One row per workload, variant and stage: median, p99 (µs), state, and the run's overhead."""
    rows = []
    for b in found:
        for v in b.variants:
            for stage in SHOWN + (HOST_SPAN,):
                rows.append({**b.workload, "variant": v.variant, "stage": stage,
                             "state": v.state.get(stage, "seen"),
                             "median_us": v.stats.loc[stage, "median"],
                             "p99_us": v.stats.loc[stage, "p99"],
                             "seen_share": v.stats.loc[stage, "seen_share"],
                             "requests": v.requests, "guest_p50_us": v.guest_p50_us,
                             "untraced_p50_us": v.untraced_p50_us,
                             "overhead_p50": v.overhead})
    return pd.DataFrame(rows)


def write_table(found: list[Breakdown], path: Path) -> Path:
    frame = breakdown_frame(found)
    frame.to_csv(path, index=False, float_format="%.4g")
    return path


_INTRO = """\
Each traced point ran once more on the variant's trace flavour (`<variant>+trace`: our trace
points, `patches/trace*`, and the 2012 tree's simple trace backend). A stage is the time from the
previous stage seen in the same request to its own event, on the host's clock; the medians of
stages do not add up exactly to the median of their sum. *not traced*: the binary has no event
for the stage (the baseline's vCPU runs the request handler inside the kick, so there is no
pick-up); *not seen (n%)*: the event exists but fired in only n% of requests (no kick while the
data plane polls the ring, no interrupt for a polling guest). Such a stage's time is in the next
stage, never guessed. The guest's own latency is measured on its TSC and is shown beside the
stages, not added to them (durations on the two clocks compare, timestamps do not: under TCG
the guest's TSC is the host's plus an offset QEMU sets at start, which no trace records); their
difference of medians is what the host does not see of a request: the guest's kick until QEMU
handles the notify write, and the completion until the guest sees it. The host cannot see the guest take the completion, so the last stage
is the host's view of the guest's side of the loop at QD1 (last host event of a request → first
of the next). Requests are paired by order, which needs QD1."""


# --- plot ----------------------------------------------------------------------------------


def _plot_name(workload: dict) -> str:
    return (f"breakdown_{workload['guest']}_{workload['disk']}_{workload['rw']}-"
            f"{workload['bs']}-qd{workload['iodepth']}")


def plot_breakdown(b: Breakdown, base: Path) -> list[Path]:
    """Stacked bars: one per variant, each stage's median stacked (µs)."""
    from .plots import save_figure
    fig, ax = plt.subplots(figsize=(1.9 + 1.5 * len(b.variants), 4.2))
    x = np.arange(len(b.variants))
    bottom = np.zeros(len(b.variants))
    for stage, color in zip(SHOWN, STAGE_COLORS):
        heights = np.array([_stage_median(v, stage) for v in b.variants])
        hatch = "//" if stage == TURNAROUND else None
        ax.bar(x, heights, 0.6, bottom=bottom, color=color, hatch=hatch, edgecolor="white",
               label=STAGE_LABELS[stage])
        bottom += heights
    guest = [v.guest_p50_us for v in b.variants]
    ax.scatter(x, guest, marker="_", s=900, color="black", zorder=3,
               label="guest's own p50 latency (its TSC)")
    ax.set_xticks(x, [v.variant for v in b.variants])
    ax.set_ylabel("µs per request (stage medians)")
    ax.set_title(f"{b.workload['guest']} {b.workload['rw']} {b.workload['bs']} "
                 f"QD{b.workload['iodepth']} ({b.workload['disk']})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=0.3)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, base)

