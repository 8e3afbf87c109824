"""Shared look of attnbench's plots: one colour and marker per method (darker for a larger budget),
the baseline in black, failed cells marked at the panel edge, a short title (what, suite, device) and
a caption line below the axes with the parameters every row shares, legends outside the data, and the
row checks every plot kind starts from."""
from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import pandas as pd

from attnbench.frame import baseline_mask, fmt_n

KINDS = ("scaling", "memory", "error", "pareto", "grid", "entropy", "decode", "state",
         "roofline", "curves", "quality")
FORMATS = ("png", "svg", "pdf")
SPLIT = ["level", "dtype", "batch", "heads", "head_dim", "causal", "batching", "layers", "ffn_dim"]
CONSTANTS = ("dtype", "mode", "level", "batch", "heads", "head_dim", "causal", "batching")
FAILED = {"oom": "x", "oom-pruned": "x", "unsupported": "|", "error": "X", "nan": "X",
          "timeout": "X", "crashed": "X"}
FAILED_NOTES = {"x": "OOM (top edge)", "|": "unsupported (top edge)", "X": "error / NaN (top edge)"}
MARKERS = "osD^vP*h<>pX"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
MODE_NAMES = {"fwd": "forward", "fwd_bwd": "forward + backward", "prefill": "prefill (causal forward)",
              "decode": "decode (one step)"}
TITLE_PT, CAPTION_PT = 11, 8
REQUIRED = ("method", "status", "n", "mode")


class NothingToPlot(Exception):
    """The run has no rows this kind of plot can use (the message says which columns are missing)."""


@dataclass(frozen=True)
class Look:
    """How figures are dressed: the title and the caption line can each be left out; colours come from
    ``palette_rows`` (the whole run) so that a filtered plot keeps every method's colour."""
    title: bool = True
    caption: bool = True
    palette_rows: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    def palette_source(self, df: pd.DataFrame) -> pd.DataFrame:
        return df if self.palette_rows is None else self.palette_rows


def usable_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The rows every plot can read (a method, a status, a mode and a numeric n) and, when some rows
    lack them, a one-line note saying how many were skipped and why."""
    keep = pd.Series(True, index=df.index)
    missing = [c for c in REQUIRED if c not in df]
    for c in REQUIRED:
        keep &= df[c].notna() if c in df else False
    n = pd.to_numeric(df["n"], errors="coerce") if "n" in df else pd.Series(math.nan, index=df.index)
    keep &= n.gt(0)
    out = df[keep].assign(n=n[keep].astype("int64")) if keep.any() else df.iloc[0:0]
    if "label" in out:
        out = out.assign(label=out["label"].where(out["label"].notna(), out["method"]))
    dropped = int((~keep).sum())
    note = None
    if dropped:
        note = (f"skipped {dropped} of {len(df)} rows lacking a method, status, mode or numeric n"
                + (f" (no {', '.join(missing)} column)" if missing else ""))
    return out, note


def select_methods(df: pd.DataFrame, patterns: list[str], baseline: str | None
                   ) -> tuple[pd.DataFrame, list[str]]:
    """Rows whose method name or label matches one of the shell-style ``patterns`` (case-insensitive),
    plus the baseline's rows; and the patterns that matched nothing."""
    names = df["method"].astype(str).str.lower()
    labels = method_label(df).astype(str).str.lower()
    keep = baseline_mask(df, baseline) if baseline else pd.Series(False, index=df.index)
    unmatched = []
    for pat in patterns:
        hit = names.map(lambda s: fnmatchcase(s, pat.lower())) | \
            labels.map(lambda s: fnmatchcase(s, pat.lower()))
        if not hit.any():
            unmatched.append(pat)
        keep |= hit
    return df[keep], unmatched


def method_label(df: pd.DataFrame) -> pd.Series:
    return df["label"] if "label" in df else df["method"]


def method_palette(df: pd.DataFrame, baseline: str | None) -> dict[str, tuple]:
    """method name -> (rgb, marker), in name order, leaving out the baseline's method."""
    base = set(df.loc[baseline_mask(df, baseline), "method"]) if baseline else set()
    methods = sorted(set(df["method"].astype(str)) - base)
    return {m: (hex_rgb(PALETTE[i % len(PALETTE)]), MARKERS[i % len(MARKERS)])
            for i, m in enumerate(methods)}


def style_map(df: pd.DataFrame, baseline: str | None) -> dict[str, dict]:
    """label -> matplotlib style, fixed for the whole run so every plot agrees: a colour and marker
    per method, lighter for a smaller budget; the baseline in thick black."""
    labels = method_label(df).astype(str)
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
            styles[lab] = dict(color=shade(rgb, j, len(variants), 0.55), marker=marker,
                               linestyle="-", linewidth=1.5, markersize=5, zorder=3)
    return styles


def shade(rgb, j: int, count: int, most: float) -> tuple:
    """The j-th of ``count`` shades of ``rgb``: the first lightest, the last the colour itself."""
    light = most * (1 - j / (count - 1)) if count > 1 else 0.0
    return tuple(c + (1 - c) * light for c in rgb)


def hex_rgb(h: str) -> tuple[float, float, float]:
    return tuple(int(h[i:i + 2], 16) / 255 for i in (1, 3, 5))


def facets(df: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    split = SPLIT
    if "total_tokens" in df and len(df) and df["total_tokens"].notna().all():
        split = [c if c != "batch" else "total_tokens" for c in SPLIT]  # batch follows n there
    cols = [c for c in split + sorted(c for c in df if c.startswith("input."))
            if c in df and df[c].astype(str).nunique() > 1]
    if not cols:
        return [({}, df)]
    return [(dict(zip(cols, k if isinstance(k, tuple) else (k,))), g)
            for k, g in df.groupby(cols, dropna=False, sort=True)]


def is_present(v) -> bool:
    return not (v is None or (isinstance(v, float) and math.isnan(v)))


def file_stem(kind: str, fixed: dict) -> str:
    parts = [kind, *(f"{k.removeprefix('input.')}={v}" for k, v in fixed.items() if is_present(v))]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))


def never_ran(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Leave out labels that could not run anywhere because something is missing (every row
    ``unsupported`` with an ``unavailable: ...`` reason, e.g. a library not installed): they have
    nothing to draw. Returns the other rows and a caption note naming the ones left out."""
    reasons = df.get("reason", pd.Series("", index=df.index)).fillna("").astype(str)
    missing = df["status"].eq("unsupported") & reasons.str.startswith("unavailable")
    gone = sorted(lab for lab, m in missing.groupby(method_label(df)).all().items() if m)
    if not gone:
        return df, ""
    why = [f"{lab} ({reasons[method_label(df) == lab].iloc[0].removeprefix('unavailable: ').split(' (')[0]})"
           for lab in gone]
    return df[~method_label(df).isin(gone)], "not drawn, unavailable: " + "; ".join(why)


def constants(df: pd.DataFrame, skip=()) -> list[str]:
    """``name=value`` for each sweep axis and input parameter that has one value in every row."""
    cols = [c for c in CONSTANTS if c in df] + sorted(c for c in df if c.startswith("input."))
    out = []
    for c in cols:
        vals = df[c].astype(str).unique()
        if c not in skip and len(df) and df[c].notna().all() and len(vals) == 1:
            out.append(f"{c.removeprefix('input.')}={vals[0]}")
    return out


def facet_text(facet: dict | None) -> list[str]:
    return [f"{k.removeprefix('input.')}={v}" for k, v in (facet or {}).items() if is_present(v)]


def title_text(what: str, meta: dict, facet: dict | None = None) -> str:
    """What the plot shows, the values that set this figure apart from its siblings, suite and device."""
    prov = meta.get("provenance") or {}
    dev_type = meta.get("device_type") or ""
    device = prov.get("device_name") or dev_type or "?"
    where = device + (f" ({dev_type})" if dev_type and dev_type != device else "")
    return " · ".join([what, *facet_text(facet), f"{meta.get('suite') or 'run'} on {where}"])


def finish(fig, title: str, caption: list[str], look: Look, facet: dict | None = None) -> None:
    """Put the title above and the caption below the axes, each wrapped to the figure's width; the
    figure grows by the caption's height so the axes keep theirs. Without a title, the ``facet`` that
    sets this figure apart from its siblings leads the caption instead."""
    width, height = fig.get_size_inches()
    if look.title and title:
        chars = max(30, int(width * 72 / (TITLE_PT * 0.56)))
        fig.suptitle("\n".join(textwrap.wrap(title, chars)), fontsize=TITLE_PT)
    elif facet:
        caption = [" · ".join(facet_text(facet) + [p for p in caption[:1] if p]), *caption[1:]]
    lines = [ln for part in caption if part for ln in textwrap.wrap(
        part, max(40, int(width * 72 / (CAPTION_PT * 0.55))))]
    if look.caption and lines:
        extra = (len(lines) * CAPTION_PT * 1.35 + 10) / 72
        fig.set_size_inches(width, height + extra)
        fig.text(0.01, 4 / 72 / (height + extra), "\n".join(lines), fontsize=CAPTION_PT,
                 ha="left", va="bottom", color="0.2", gid="caption")
        fig.get_layout_engine().set(rect=(0, extra / (height + extra), 1, 1 - extra / (height + extra)))


def caption_of(fig) -> str:
    """The caption line's text ('' without one)."""
    return next((t.get_text() for t in fig.texts if t.get_gid() == "caption"), "")


def new_figure(npanels: int, width: float = 5.2, height: float = 4.2, max_cols: int = 3,
            legend_width: float = 2.6):
    from matplotlib.figure import Figure

    cols = min(npanels, max_cols)
    nrows = -(-npanels // cols)
    fig = Figure(figsize=(width * cols + legend_width, height * nrows + 0.6), layout="constrained")
    axes = list(fig.subplots(nrows, cols, squeeze=False).ravel())
    for ax in axes[npanels:]:
        ax.set_visible(False)
    return fig, axes[:npanels]


def n_axis(ax, ns) -> None:
    ax.set_xscale("log", base=2)
    ns = sorted(set(int(n) for n in ns))
    ax.set_xticks(ns, [fmt_n(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("sequence length n (tokens)")


def value_axis(ax, values, label: str) -> None:
    """An x axis for a few positive knob values: log2 spacing, one tick at each value, a margin on
    both sides (so a single value sits in the middle of a sensible range)."""
    vals = sorted(set(float(v) for v in values))
    if vals[0] > 0:
        ax.set_xscale("log", base=2)
        pad = 2 ** 0.5 if vals[0] == vals[-1] else (vals[-1] / vals[0]) ** 0.08
        ax.set_xlim(vals[0] / pad, vals[-1] * pad)
    ax.set_xticks(vals, [f"{v:g}" for v in vals])
    ax.minorticks_off()
    ax.set_xlabel(label)


def log_axis(ax, which: str = "y") -> None:
    """Log axis labelled with plain numbers, at 1-2-5 steps when it spans under three decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-300) < 1e3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def mark_failed(ax, bad: pd.DataFrame, styles: dict, lined: set) -> set[str]:
    """Failed cells as markers in a band above the data, one row of markers per label; a label with
    no line in this panel names its markers in the legend. Returns the markers drawn."""
    lo, hi = ax.get_ylim()
    order = sorted(set(method_label(bad)))
    span = 0.06 * len(order) + 0.04
    ax.set_ylim(lo, hi * (hi / lo) ** (span / (1 - span)))
    trans, drawn = ax.get_xaxis_transform(), set()
    for i, lab in enumerate(order):
        g = bad[method_label(bad) == lab]
        for status, gg in g.groupby("status"):
            marker = FAILED[status]
            ax.scatter(gg["n"], [0.97 - 0.06 * i] * len(gg), transform=trans, marker=marker, s=70,
                       linewidths=2, color=styles[lab]["color"], clip_on=False, zorder=6,
                       label=lab if lab not in lined else None, gid=f"failed:{marker}")
            drawn.add(marker)
    return drawn


def figure_legend(fig, axes, markers=(), order=()) -> None:
    """One legend for the figure, outside the panels on the right. A label drawn as a line in one panel
    and only as failed-cell markers in another shows its line; ``markers`` (those of failed cells that
    were drawn) each get an entry saying what they mean."""
    from matplotlib.lines import Line2D

    handles: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles or (isinstance(h, Line2D) and not isinstance(handles[lab], Line2D)):
                handles[lab] = h
    rank = {lab: i for i, lab in enumerate(order)}
    labels = sorted(handles, key=lambda lab: rank.get(lab, len(rank)))
    proxies = [Line2D([], [], color="0.3", marker=m, linestyle="none", markersize=7,
                      label=FAILED_NOTES[m], gid=f"failed:{m}") for m in sorted(markers)]
    if handles or proxies:
        fig.legend([handles[lab] for lab in labels] + proxies, labels + [p.get_label() for p in proxies],
                   loc="outside right", fontsize=8, frameon=False)


def panel_legend(ax) -> None:
    """A panel's own legend, outside it on the right, so it never covers the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0)


def save_figure(fig, stem: Path, formats=("png", "svg"), dpi: int = 130) -> list[Path]:
    """Write ``stem.<fmt>`` for each format; vector files carry no creation date, so they are
    byte-stable."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        meta = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
        fig.savefig(path, dpi=dpi, metadata=meta)
        paths.append(path)
    return paths
