"""The scaling figure: total IOPS against devices per guest, one line per variant.

One panel per workload (scaling.SCALING_KEYS: guest, rw, bs, iodepth …), devices
on a log2 x axis, median IOPS with min–max bars; fio on the host with one
job per image on as many images as devices (the storage's ceiling, when the
run has it) dashed;
a vertical dotted line where the devices equal the host's cores.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import plots
from .scaling import SCALING_KEYS, Limits, ceiling_iops

FILE_NAME = "scaling"
CORES_LABEL = "devices = host cores"
CEILING_LABEL = "host fio, one job per image"


def plot_scaling(rows: pd.DataFrame, base: Path, colors: dict, limits: Limits,
                 title: str) -> list[Path]:
    """scaling.scaling_rows drawn to base.png and base.svg ([] when there is nothing)."""
    fig = scaling_figure(rows, colors, limits, title)
    return [] if fig is None else plots.save_figure(fig, base)


def scaling_figure(rows: pd.DataFrame, colors: dict, limits: Limits, title: str):
    if rows.empty:
        return None
    panels = list(rows.groupby(SCALING_KEYS, sort=True))
    fig, axes = plots._grid(len(panels))
    for ax, (key, frame) in zip(axes, panels):
        _panel(ax, dict(zip(SCALING_KEYS, key)), frame, colors, limits)
    return plots._finish(fig, axes, f"IOPS vs devices — {title}")


def _panel(ax, key: dict, frame: pd.DataFrame, colors: dict, limits: Limits) -> None:
    devices = sorted({int(d) for d in frame["devices"]})
    for variant, rows in frame.groupby("variant"):
        rows = rows.sort_values("devices")
        plots._errorbar(ax, rows, "iops_median", "iops_min", "iops_max", rows["devices"],
                        marker="o", label=variant, color=colors.get(variant))
    ceilings = [(d, ceiling_iops(limits.ceiling, {**key, "devices": d})) for d in devices]
    measured = [(d, c) for d, c in ceilings if c]
    if measured:
        ax.plot([d for d, _ in measured], [c for _, c in measured], linestyle="--", marker="x",
                color=plots.HOST_COLOR, label=CEILING_LABEL)
    cores = limits.cores_of(key["host"])
    if cores:
        ax.axvline(cores, linestyle=":", color="grey", label=CORES_LABEL)
    ax.set_xscale("log", base=2)
    shown = sorted(set(devices) | ({cores} if cores else set()))
    ax.set_xticks(shown, [str(d) for d in shown])
    ax.set_xlabel("virtio-blk devices")
    plots._log_y(ax)
    ax.set_ylabel("total IOPS (median; bars min–max; log)")
    ax.set_title(f"{key['guest']} · {key['disk']} · {key['rw']} {key['bs']} · "
                 f"QD{key['iodepth']} per device", fontsize=9)
