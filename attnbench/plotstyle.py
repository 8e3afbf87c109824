"""Shared look of attnbench's plots: one colour and marker per method (darker for a larger budget),
the baseline in black, failed cells marked at the panel edge, titles that carry the fixed axes, and the
figure, axis and legend helpers every plot kind uses."""
from __future__ import annotations

import math
import re
import textwrap

import pandas as pd

from attnbench.report import baseline_mask, fmt_n

KINDS = ("scaling", "memory", "error", "pareto", "grid", "entropy")
SPLIT = ["level", "dtype", "batch", "heads", "head_dim", "causal", "batching", "layers", "ffn_dim"]
FAILED = {"oom": "x", "oom-pruned": "x", "unsupported": "|", "error": "X", "nan": "X",
          "timeout": "X", "crashed": "X"}
MARKERS = "osD^vP*h<>pX"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
MODE_NAMES = {"fwd": "forward", "fwd_bwd": "forward + backward"}


class NothingToPlot(Exception):
    """The run has no rows this kind of plot can use (the message says which columns are missing)."""


def _label(df: pd.DataFrame) -> pd.Series:
    return df["label"] if "label" in df else df["method"]


def method_palette(df: pd.DataFrame, baseline: str | None) -> dict[str, tuple]:
    """method name -> (rgb, marker), in name order, leaving out the baseline's method."""
    base = set(df.loc[baseline_mask(df, baseline), "method"]) if baseline else set()
    methods = sorted(set(df["method"].astype(str)) - base)
    return {m: (_hex(PALETTE[i % len(PALETTE)]), MARKERS[i % len(MARKERS)])
            for i, m in enumerate(methods)}


def style_map(df: pd.DataFrame, baseline: str | None) -> dict[str, dict]:
    """label -> matplotlib style, fixed for the whole run so every plot agrees: a colour and marker
    per method, lighter for a smaller budget; the baseline in thick black."""
    labels = _label(df).astype(str)
    base = sorted(set(labels[baseline_mask(df, baseline)])) if baseline else []
    budget = pd.to_numeric(df.get("budget_value", pd.Series(math.nan, index=df.index)),
                           errors="coerce")
    order = pd.DataFrame({"m": df["method"].astype(str), "l": labels, "b": budget})
    styles = {lab: dict(color="black", marker="o", linestyle="-", linewidth=2.8, markersize=6,
                        zorder=5) for lab in base}  # the baseline leads every legend
    for m, (rgb, marker) in method_palette(df, baseline).items():
        variants = order[order["m"] == m].groupby("l")["b"].max().reset_index() \
            .sort_values(["b", "l"], na_position="first")["l"].tolist()
        for j, lab in enumerate(v for v in variants if v not in styles):
            styles[lab] = dict(color=_shade(rgb, j, len(variants), 0.55), marker=marker,
                               linestyle="-", linewidth=1.5, markersize=5, zorder=3)
    return styles


def _shade(rgb, j: int, count: int, most: float) -> tuple:
    """The j-th of ``count`` shades of ``rgb``: the first lightest, the last the colour itself."""
    light = most * (1 - j / (count - 1)) if count > 1 else 0.0
    return tuple(c + (1 - c) * light for c in rgb)


def _hex(h: str) -> tuple[float, float, float]:
    return tuple(int(h[i:i + 2], 16) / 255 for i in (1, 3, 5))


def _split(df: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    cols = [c for c in SPLIT + sorted(c for c in df if c.startswith("input."))
            if c in df and df[c].astype(str).nunique() > 1]
    if not cols:
        return [({}, df)]
    return [(dict(zip(cols, k if isinstance(k, tuple) else (k,))), g)
            for k, g in df.groupby(cols, dropna=False, sort=True)]


def _stem(kind: str, fixed: dict) -> str:
    parts = [kind, *(f"{k.removeprefix('input.')}={v}" for k, v in fixed.items())]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))


def _title(what: str, df: pd.DataFrame, meta: dict, extra: str = "") -> str:
    prov = meta.get("provenance") or {}
    device = prov.get("device_name") or meta.get("device_type") or "?"
    dev_type = meta.get("device_type") or (df["device"].iloc[0] if "device" in df and len(df) else "")
    fixed = [f"{c}={df[c].iloc[0]}" for c in ("dtype", "level", "batch", "heads", "head_dim",
                                             "causal", "batching") if c in df and len(df)
             and df[c].astype(str).nunique() == 1]
    inputs = [f"{c[6:]}={df[c].iloc[0]}" for c in sorted(df) if c.startswith("input.") and len(df)
              and df[c].astype(str).nunique() == 1 and c != "input.regime"]
    head = f"{what} · {meta.get('suite', '')} on {device} ({dev_type})"
    lines = textwrap.wrap(head, 90) + textwrap.wrap(" · ".join(fixed + inputs), 90)
    return "\n".join(lines) + (f"\n{extra}" if extra else "")


def _figure(npanels: int, width: float = 5.2, height: float = 4.2, max_cols: int = 3,
            legend_width: float = 2.6):
    from matplotlib.figure import Figure

    cols = min(npanels, max_cols)
    nrows = -(-npanels // cols)
    fig = Figure(figsize=(width * cols + legend_width, height * nrows + 0.9), layout="constrained")
    axes = list(fig.subplots(nrows, cols, squeeze=False).ravel())
    for ax in axes[npanels:]:
        ax.set_visible(False)
    return fig, axes[:npanels]


def _n_axis(ax, ns) -> None:
    ax.set_xscale("log", base=2)
    ns = sorted(set(int(n) for n in ns))
    ax.set_xticks(ns, [fmt_n(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("sequence length n (tokens)")


def _log_y(ax, which: str = "y") -> None:
    """Log axis labelled with plain numbers, at 1-2-5 steps when it spans under three decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-300) < 1e3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend(fig, axes, notes: list[tuple[str, str]] = (), order=()) -> None:
    from matplotlib.lines import Line2D

    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    rank = {lab: i for i, lab in enumerate(order)}
    labels.sort(key=lambda lab: rank.get(lab, len(rank)))
    proxies = [Line2D([], [], color="0.3", marker=m, linestyle="none", markersize=7, label=t)
               for m, t in notes]
    if handles or proxies:
        fig.legend([handles[lab] for lab in labels] + proxies, labels + [p.get_label() for p in proxies],
                   loc="outside right upper", fontsize=8, frameon=False)
