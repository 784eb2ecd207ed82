"""Published data-plane figures (harness/data/published.yaml) set beside our own ratios.

Each published figure names which ratio it is (`kind`); ours is computed the
same way where we can (data plane / baseline, QEMU / host ceiling) at the
workload closest to the published one.  Everything the comparison says —
agreement and the reasons it may not carry over — is generated from the data
and the YAML, never written by hand.  The plot of it is plots.plot_published.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import parse_size
from .errors import UserError
from .results import GUEST_BOUND, HOST_VARIANT
from .stats import host_ceiling, is_guest_bound, ok_rows, ratio_ci, summarize

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "published.yaml"
RATIO_KINDS = ("dataplane/baseline", "ownaio/blocklayer", "batched/blocklayer", "qemu/host")
KINDS = RATIO_KINDS + ("absolute",)
SAME_AS_OURS = {"dataplane/baseline": "same comparison as ours",
                "ownaio/blocklayer": "their baseline is the block-layer data plane, ours the "
                                     "block layer under the global mutex",
                "batched/blocklayer": "a later optimisation of the block-layer data plane; "
                                      "ours has no equivalent",
                "qemu/host": "same comparison as ours"}


@dataclass(frozen=True)
class Published:
    id: str
    source: str
    date: str
    reference: str
    claim: str
    workload: str
    match: dict
    hardware: str
    storage: str
    host_cpus: str
    guest_vcpus: str
    accel: str
    compared: str
    kind: str
    iops: float | None
    base_iops: float | None
    ratio: float | None


def load_published(path: Path | str | None = None) -> list[Published]:
    """The figures of harness/data/published.yaml; a malformed entry is a UserError."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read published figures {path}: {exc}") from exc
    return [_figure(entry, path) for entry in (data or {}).get("figures", [])]


def _figure(entry: dict, path: Path) -> Published:
    names = [f.name for f in fields(Published)]
    missing = [n for n in names if n not in entry]
    if missing:
        raise UserError(f"{path}: figure {entry.get('id', '?')!r} lacks {missing}")
    if entry["kind"] not in KINDS:
        raise UserError(f"{path}: figure {entry['id']!r}: kind must be one of {KINDS}")
    values = {n: entry[n] for n in names}
    for name in ("iops", "base_iops", "ratio"):
        values[name] = None if values[name] is None else float(values[name])
    text = {n: str(values[n]) for n in names if n not in ("match", "iops", "base_iops", "ratio")}
    return Published(**{**values, **text})


# --- choosing our side ----------------------------------------------------------------------

def _workloads(df: pd.DataFrame) -> pd.DataFrame:
    return df[["rw", "bs", "iodepth", "numjobs"]].drop_duplicates()


def closest_workload(df: pd.DataFrame, match: dict) -> tuple | None:
    """Our workload nearest the published one; unstated fields prefer 4k randread at our
    deepest queue and most jobs (published figures are peaks)."""
    candidates = _workloads(df)
    if candidates.empty:
        return None
    target = {"rw": match.get("rw") or "randread", "bs": parse_size(match.get("bs") or "4k"),
              "iodepth": match.get("iodepth") or candidates["iodepth"].max(),
              "numjobs": match.get("numjobs") or candidates["numjobs"].max()}

    def distance(row) -> float:
        return ((row.rw != target["rw"]) * 1000 + (parse_size(row.bs) != target["bs"]) * 100
                + abs(math.log2(row.iodepth / target["iodepth"])) * 10
                + abs(math.log2(row.numjobs / target["numjobs"])))

    best = min(candidates.itertuples(index=False), key=distance)
    return (best.rw, best.bs, int(best.iodepth), int(best.numjobs))


def _label(workload: tuple) -> str:
    rw, bs, qd, jobs = workload
    return f"{rw} {bs} qd{qd} j{jobs}"


def _at(df: pd.DataFrame, workload: tuple) -> pd.DataFrame:
    rw, bs, qd, jobs = workload
    return df[(df["rw"] == rw) & (df["bs"] == bs) & (df["iodepth"] == qd) & (df["numjobs"] == jobs)]


def dataplane_variants(df: pd.DataFrame, baseline: str) -> list[str]:
    """Variants named like 'dataplane', else every variant but the baseline."""
    names = sorted(set(df["variant"]) - {baseline, HOST_VARIANT})
    named = [n for n in names if "dataplane" in n]
    return named or names


def preferred_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Ok rows of the run, on KVM only when the run has KVM rows (published figures are KVM)."""
    good = ok_rows(df)
    guests = good[good["variant"] != HOST_VARIANT]
    if (guests["accel"] == "kvm").any():
        keep = (good["accel"] == "kvm") | (good["variant"] == HOST_VARIANT)
        good = good[keep]
    return good


# --- the comparison -------------------------------------------------------------------------

@dataclass
class PublishedComparison:
    ratios: pd.DataFrame     # one row per published figure × our guest × disk × variant
    absolute: pd.DataFrame   # our median IOPS per workload and variant beside the host ceiling
    paragraph: str           # markdown: the accelerator, one bullet per published ratio, the setups


def _ours(rows: pd.DataFrame, base: pd.DataFrame) -> dict:
    ci = ratio_ci(rows["iops"], base["iops"])
    return {"our_ratio": ci.ratio, "our_ci_low": ci.low, "our_ci_high": ci.high,
            "our_iops": rows["iops"].median(), "our_n": int(rows["iops"].notna().sum())}


def _verdict(figure: Published, ours: dict) -> str:
    if figure.kind == "absolute":
        return "absolute figure only"
    if figure.ratio is None:
        return "no published number"
    if not np.isfinite(ours.get("our_ratio", np.nan)):
        return "we have no such measurement"
    low, high = ours["our_ci_low"], ours["our_ci_high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no CI (fewer than 3 repetitions)"
    if low <= figure.ratio <= high:
        return "agrees (published within our CI)"
    return "ours lower" if high < figure.ratio else "ours higher"


def _bound(rows: pd.DataFrame, base: pd.DataFrame | None) -> bool:
    """Either side of the ratio is guest-bound (stats.GUEST_BOUND_PCT)."""
    sides = [rows] + ([base] if base is not None else [])
    return any(is_guest_bound(int((side["bound"] == GUEST_BOUND).sum()), len(side))
               for side in sides if len(side))


def _bound_verdict(verdict: str, bound: bool) -> str:
    """A guest-bound ratio is the emulated guest's, never the data plane's effect: the
    verdict says so first."""
    return f"guest-bound, not the data plane's effect ({verdict})" if bound else verdict


def _pairs(figure: Published, mine: pd.DataFrame, host: pd.DataFrame, baseline: str,
           workload: tuple) -> list[tuple[str, str, pd.DataFrame | None]]:
    """(variant, denominator name, denominator rows) for the ratio of ours that matches."""
    here = _at(mine, workload)
    dataplanes = dataplane_variants(mine, baseline)
    if figure.kind == "qemu/host":
        return [(v, HOST_VARIANT, _at(host, workload)) for v in [baseline] + dataplanes]
    if figure.kind == "absolute":
        return [(v, "", None) for v in [baseline] + dataplanes]
    return [(v, baseline, here[here["variant"] == baseline]) for v in dataplanes]


def _figure_rows(figure: Published, good: pd.DataFrame, baseline: str) -> list[dict]:
    guests_df = good[good["variant"] != HOST_VARIANT]
    host = good[good["variant"] == HOST_VARIANT]
    records = []
    for (guest, disk), mine in guests_df.groupby(["guest", "disk"]):  # never pool two disks
        workload = closest_workload(mine, figure.match)
        if workload is None:
            continue
        here = _at(mine, workload)
        same_disk = host[host["disk"] == disk]
        main = (dataplane_variants(mine, baseline) or [baseline])[0]
        for variant, denominator, base in _pairs(figure, mine, same_disk, baseline, workload):
            rows = here[here["variant"] == variant]
            ours = {"our_ratio": np.nan, "our_ci_low": np.nan, "our_ci_high": np.nan,
                    "our_iops": rows["iops"].median() if len(rows) else np.nan, "our_n": len(rows)}
            if base is not None and len(rows) and len(base):
                ours = _ours(rows, base)
            bound = _bound(rows, base)
            records.append({"figure": figure.id, "source": figure.source, "kind": figure.kind,
                            "their_workload": figure.workload, "their_hardware": figure.hardware,
                            "their_storage": figure.storage, "their_cpus": figure.host_cpus,
                            "their_accel": figure.accel, "their_ratio": figure.ratio,
                            "their_iops": figure.iops,
                            "comparable": SAME_AS_OURS.get(figure.kind, "absolute figure"),
                            "guest": guest, "disk": disk,
                            "our_variant": f"{variant}/{denominator}" if denominator else variant,
                            "our_workload": _label(workload),
                            "our_accel": ", ".join(sorted(set(rows["accel"]))) or "none",
                            "main_variant": variant == main, "guest_bound": bound,
                            **ours, "verdict": _bound_verdict(_verdict(figure, ours), bound)})
    return records


def _comparability(row) -> tuple:
    """How far one of our ratios is from the published figure's setup (lower is closer):
    the data plane itself rather than a sibling variant, a ratio at all, the data plane's
    effect rather than the emulated guest's, a Linux guest running fio like theirs rather
    than the micro-guest, an interval; then by name."""
    return (not row["main_variant"], not np.isfinite(row["our_ratio"]), bool(row["guest_bound"]),
            str(row["guest"]).startswith("microguest"),
            not (np.isfinite(row["our_ci_low"]) and np.isfinite(row["our_ci_high"])),
            str(row["guest"]), str(row["disk"]))


def most_comparable(table: pd.DataFrame) -> pd.DataFrame:
    """One row per published figure with a number: the ratio of ours closest to its setup
    (`_comparability`), in the order of the figures; the others stay in the full table."""
    if table.empty:
        return table
    numbered = table[table["their_ratio"].notna()]
    picks = [min((row for _, row in rows.iterrows()), key=_comparability)
             for _, rows in numbered.groupby("figure", sort=False)]
    return pd.DataFrame(picks).reset_index(drop=True) if picks else numbered.iloc[:0]


def absolute_table(df: pd.DataFrame) -> pd.DataFrame:
    """Our median IOPS per guest, variant and workload beside fio on the host (same image)."""
    good = preferred_rows(df)
    keys = ["disk", "devices", "rw", "bs", "iodepth", "numjobs"]
    mine = summarize(good[good["variant"] != HOST_VARIANT])
    if mine.empty:
        return pd.DataFrame()
    table = mine[["guest", "variant", "accel"] + keys + ["iops_median"]]
    table = table.merge(host_ceiling(good), on=keys, how="left")
    table["of_host"] = table["iops_median"] / table["host_iops_median"]
    return table


def compare_with_published(df: pd.DataFrame, baseline: str, facts: dict | None = None,
                           figures: list[Published] | None = None) -> PublishedComparison:
    """Our ratios beside the published ones, our IOPS beside the host ceiling, and a
    generated paragraph.  `facts` (from the run manifest) may give host_cpus and storage."""
    figures = load_published() if figures is None else figures
    good = preferred_rows(df)
    records = [r for f in figures for r in _figure_rows(f, good, baseline)]
    table = pd.DataFrame(records)
    return PublishedComparison(table, absolute_table(df), _paragraph(table, good, facts or {}))


# --- the generated text -----------------------------------------------------------------------

def fmt_ratio(value: float | None, digits: int = 2) -> str:
    """Fixed decimals, but small ratios (ours to a host ceiling) keep two significant digits."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if 0 < abs(value) < 0.1:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def _accel_sentence(accels: set[str], theirs: set[str]) -> str:
    if not accels:
        return "We have no successful measurements to compare."
    stated = sorted(a.upper() for a in theirs - {"unknown"}) or ["none"]
    silent = "; the others do not say" if "unknown" in theirs else ""
    names = ", ".join(sorted(a.upper() for a in accels))
    if accels == {"kvm"}:
        return (f"Our numbers were measured on KVM; the published figures that state an "
                f"accelerator state {', '.join(stated)}{silent}.")
    return (f"Our numbers were measured under {names}, not KVM; the published figures that "
            f"state an accelerator state {', '.join(stated)}{silent}. Under TCG the emulated "
            "guest CPU rather than the I/O path is likely the bottleneck, so only the direction "
            "of a ratio can be compared, not its size, and no absolute IOPS.")


def _interval(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "(no CI)"
    return f"[{fmt_ratio(low)}, {fmt_ratio(high)}]"


def _figure_sentence(rows: pd.DataFrame) -> str:
    """One published ratio and every ratio of ours it is set against (one per guest, disk and
    variant)."""
    first = rows.iloc[0]
    text = (f"{first.source}: published {first.kind} ratio {fmt_ratio(first.their_ratio)} "
            f"(workload: {first.their_workload}; hardware: {first.their_hardware}; accelerator: "
            f"{'not stated' if first.their_accel == 'unknown' else first.their_accel.upper()})")
    if first.comparable != "same comparison as ours":
        text += f"; not the same comparison: {first.comparable}"
    ours = [f"{row.guest} guest, disk {row.disk}, {row.our_variant} {fmt_ratio(row.our_ratio)} "
            f"{_interval(row.our_ci_low, row.our_ci_high)} at {row.our_workload} "
            f"({row.our_accel.upper()}) — {row.verdict}" for row in rows.itertuples(index=False)]
    return text + ". Ours: " + "; ".join(ours) + "."


def _setup_sentence(table: pd.DataFrame, facts: dict) -> str:
    ours_cpus = str(facts.get("host_cpus") or "unknown")
    ours_storage = str(facts.get("storage") or "unknown")
    def known(column: str) -> list[str]:
        return sorted(set(table[column]) - {"unknown"})
    return (f"Setups differ: our host CPUs: {ours_cpus}; our disk: {ours_storage}; "
            f"published host CPUs: {'; '.join(known('their_cpus')) or 'unknown'}; published "
            f"hardware: {'; '.join(known('their_hardware')) or 'unknown'}; published storage: "
            f"{'; '.join(known('their_storage')) or 'unknown'}.")


def _paragraph(table: pd.DataFrame, good: pd.DataFrame, facts: dict) -> str:
    accels = set(good.loc[good["variant"] != HOST_VARIANT, "accel"])
    theirs = set(table["their_accel"]) if len(table) else set()
    parts = [_accel_sentence(accels, theirs)]
    if not table.empty:
        numbered = table[table["their_ratio"].notna()]
        parts.append("\n".join(f"- {_figure_sentence(rows)}"
                                for _, rows in numbered.groupby(["source", "kind"], sort=False)))
        parts.append(_setup_sentence(table, facts))
    return "\n\n".join(p for p in parts if p)
