"""Plots of a finished run (matplotlib; PNG, SVG or PDF): scaling, memory, error, pareto, grid, entropy.

Each ``plot_<kind>(df, meta, ...)`` returns ``{file stem: Figure}`` so tests can inspect the figures.
A method label keeps one colour and marker in every plot of a run (colour by method, darker shade for
a larger budget); the exact baseline is drawn in black. Runs that mix dtypes, levels, batch sizes or
inputs get one figure per combination; forward and forward+backward sit side by side as panels. The
title says what is shown, on which suite and device; the parameters every row shares go to a caption
line below the axes. Legends sit outside the panels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from attnbench.decode_report import DECODE_KINDS, has_decode, plot_decode, plot_state
from attnbench.plot_error import plot_entropy, plot_error
from attnbench.plot_roofline import plot_roofline
from attnbench.plot_train import plot_curves, plot_quality
from attnbench.plotstyle import (FAILED, save_figure, FORMATS, KINDS, MODE_NAMES, Look, NothingToPlot, new_figure,
                                 method_label, figure_legend, log_axis, n_axis, facets, file_stem, constants, finish,
                                 mark_failed, method_palette, never_ran, select_methods, style_map,
                                 title_text, usable_rows)
from attnbench.frame import fmt_n, time_cost

__all__ = ["KINDS", "FORMATS", "Look", "NothingToPlot", "make_figures", "method_palette", "plot_entropy",
           "plot_error", "plot_grid", "plot_memory", "plot_pareto", "plot_scaling", "save_figure",
           "style_map"]


def _quartiles(rows: pd.DataFrame) -> tuple[float, float] | None:
    """First and third quartile of the rows' timing samples (pooled), on the plotted scale (per
    sequence in capacity mode); without samples, the median ± half the recorded IQR."""
    t = pd.to_numeric(rows.get("time_ms"), errors="coerce")
    scale = (rows["_y"] / t).where(t > 0)
    samples = rows.get("time_samples_ms", pd.Series(None, index=rows.index))
    pooled = [float(v) * f for s, f in zip(samples, scale) if isinstance(s, (list, tuple)) and
              f == f for v in s if isinstance(v, (int, float))]
    if pooled:
        q1, q3 = np.percentile(pooled, [25, 75])
        return float(q1), float(q3)
    iqr = (pd.to_numeric(rows.get("time_ms_iqr"), errors="coerce") * scale).dropna()
    if iqr.empty:
        return None
    mid, half = float(rows["_y"].median()), float(iqr.median()) / 2
    return mid - half, mid + half


def _draw_times(ax, ok: pd.DataFrame, styles: dict, bars: bool) -> int:
    """A line per label (median over rows at each n) and, with ``bars``, a vertical bar from the first
    to the third quartile of the timing samples. Returns how many bars were drawn."""
    drawn = 0
    for lab, g in ok.groupby(method_label(ok), sort=True):
        med = g.groupby("n")["_y"].median()
        ax.plot(med.index, med.values, label=lab, **styles[lab])
        if not bars:
            continue
        spread = {n: _quartiles(gg) for n, gg in g.groupby("n")}
        xs = [n for n in med.index if spread[n] is not None]
        if xs:
            lo = [max(med[n] - spread[n][0], 0.0) for n in xs]
            hi = [max(spread[n][1] - med[n], 0.0) for n in xs]
            ax.errorbar(xs, med[xs].values, yerr=[lo, hi], fmt="none", capsize=0, elinewidth=1.2,
                        ecolor=styles[lab]["color"], zorder=styles[lab]["zorder"], label="_iqr")
            drawn += len(xs)
    return drawn


def plot_scaling(df: pd.DataFrame, meta: dict, baseline: str | None = None,
                 metric: str = "time", *, look: Look = Look()) -> dict:
    """Time (or peak memory) against n, log-log, one line per method label; fwd and fwd_bwd panels.
    Time points carry IQR bars. Cells that did not run are marked along the top edge of the panel at
    their n; a label that never ran anywhere in a figure is left out and named in the caption."""
    baseline = baseline or meta.get("baseline")
    df = df.assign(_y=time_cost(df) if metric == "time"
                   else pd.to_numeric(df.get("peak_mem_mib"), errors="coerce"))
    if not (df["status"].eq("ok") & df["_y"].notna()).any():
        raise NothingToPlot(f"no ok rows with {'time_ms' if metric == 'time' else 'peak_mem_mib'}")
    styles = style_map(look.palette_source(df), baseline)
    capacity = "batching" in df and (df["batching"] == "capacity").any()
    ylabel = ("time per sequence (ms)" if capacity else "time per call (ms, median)") \
        if metric == "time" else "peak memory (MiB)"
    what = "time vs n" if metric == "time" else "peak memory vs n"
    out = {}
    for fixed, part in facets(df):
        part, gone = never_ran(part)
        if part.empty:
            continue
        modes = sorted(part["mode"].unique(), key=lambda m: (m != "fwd", m))
        fig, axes = new_figure(len(modes))
        markers: set[str] = set()
        bars = 0
        for ax, mode in zip(axes, modes):
            rows = part[part["mode"] == mode]
            ok = rows[(rows["status"] == "ok") & rows["_y"].notna()]
            bad = rows[rows["status"].isin(FAILED)]
            bars += _draw_times(ax, ok, styles, metric == "time")
            log_axis(ax)
            n_axis(ax, rows["n"])
            ax.set_ylabel(ylabel)
            ax.set_title(f"mode: {MODE_NAMES.get(mode, mode)}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            if not bad.empty:
                if ok.empty:
                    ax.set_ylim(1, 10)
                markers |= mark_failed(ax, bad, styles, set(method_label(ok)))
        spread = ("bars: IQR of the timing samples" if bars else "no timing spread recorded") \
            if metric == "time" else "one memory measurement per cell (no spread bars)"
        finish(fig, title_text(what, meta, fixed),
               [" · ".join(constants(part, skip=fixed)),
                f"black: exact baseline {baseline} · {spread}", gone], look, fixed)
        figure_legend(fig, axes, markers, order=styles)
        out[file_stem("scaling" if metric == "time" else "memory", fixed)] = fig
    if not out:
        raise NothingToPlot("no method ran in this run")
    return out


def plot_memory(df: pd.DataFrame, meta: dict, baseline: str | None = None, *,
                look: Look = Look()) -> dict:
    return plot_scaling(df, meta, baseline, metric="memory", look=look)


def _dominated(points: list[tuple[float, float]]) -> list[bool]:
    return [any(t2 <= t and e2 <= e and (t2, e2) != (t, e) for t2, e2 in points) for t, e in points]


def plot_pareto(df: pd.DataFrame, meta: dict, baseline: str | None = None, n: int | None = None, *,
                look: Look = Look()) -> dict:
    """Error against time at one n: a hollow marker is dominated (another method is both faster and
    more accurate there), so that method at that setting is never worth it."""
    if "rel_err" not in df:
        raise NothingToPlot("no rel_err column in this run")
    ok = df.assign(rel_err=pd.to_numeric(df["rel_err"], errors="coerce"), _t=time_cost)
    ok = ok[(ok["status"] == "ok") & ok["rel_err"].notna() & ok["_t"].notna()]
    if ok.empty:
        raise NothingToPlot("no ok rows with both time and rel_err")
    avail = sorted(ok["n"].unique())
    n = n if n is not None else int(avail[-1])
    if n not in avail:
        raise NothingToPlot(f"no rows with error and time at n={n}; measured n: "
                            f"{', '.join(str(int(x)) for x in avail)}")
    styles = style_map(look.palette_source(df), baseline or meta.get("baseline"))
    out = {}
    for fixed, part in facets(ok[ok["n"] == n]):
        modes = sorted(part["mode"].unique(), key=lambda m: (m != "fwd", m))
        fig, axes = new_figure(len(modes))
        for ax, mode in zip(axes, modes):
            pts = part[part["mode"] == mode].groupby(method_label(part[part["mode"] == mode])) \
                .agg(t=("_t", "median"), e=("rel_err", "mean"))
            dom = _dominated(list(zip(pts["t"], pts["e"])))
            for (lab, r), d in zip(pts.iterrows(), dom):
                st = styles[lab]
                ax.plot([r["t"]], [r["e"]], linestyle="none", marker=st["marker"], markersize=8,
                        color=st["color"], markerfacecolor="none" if d else st["color"],
                        alpha=0.6 if d else 1.0, label=lab, zorder=st["zorder"])
            front = pts[[not d for d in dom]].sort_values("t")
            if len(front) > 1:
                ax.step(front["t"], front["e"], where="post", color="0.5", lw=1, zorder=1)
            log_axis(ax, "x")
            log_axis(ax)
            ax.set_xlabel("time per call (ms, median)" if "batching" not in part or
                          (part["batching"] != "capacity").all() else "time per sequence (ms)")
            ax.set_ylabel("relative error vs float64 exact")
            ax.set_title(f"mode: {MODE_NAMES.get(mode, mode)}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
        finish(fig, title_text(f"error vs time at n={fmt_n(n)}", meta, fixed),
               [" · ".join(constants(part, skip=fixed)),
                "hollow = dominated (another is faster and more accurate) · grey: frontier"],
               look, fixed)
        figure_legend(fig, axes, order=styles)
        out[file_stem(f"pareto-n{n}", fixed)] = fig
    return out


def plot_grid(df: pd.DataFrame, meta: dict, baseline: str | None = None, rows: str = "n",
              cols: str | None = None, *, look: Look = Look()) -> dict:
    """Heatmaps of speed-up and memory saved against the baseline, for every grid with at least two
    rows and two columns (a single column or row is a table, not a heatmap: ``report --grid``)."""
    from attnbench.grid import drawable, grid_figure, grids

    baseline = baseline or meta.get("baseline")
    found = [g for kind in ("speedup", "memory") for g in grids(df, meta, kind, baseline, rows, cols)]
    if not found:
        raise NothingToPlot(f"no approximate method with a param {cols or '(budget knob)'} and a "
                            f"baseline {baseline} row on the same cells")
    shown = [g for g in found if drawable(g)]
    if not shown:
        shapes = sorted({f"{g.method} {len(g.rows)}×{len(g.cols)}" for g in found})
        raise NothingToPlot(f"a heatmap needs at least 2 values of {rows} and 2 of the column param; "
                            f"this run's grids are {', '.join(shapes[:6])}"
                            + (", ..." if len(shapes) > 6 else "") + " (see them as tables with "
                            "attnbench report RUN_DIR --grid speedup)")
    return {f"grid-{g.slug}": grid_figure(g, meta, df, look) for g in shown}


PLOTTERS = {"scaling": plot_scaling, "memory": plot_memory, "error": plot_error,
            "pareto": plot_pareto, "grid": plot_grid, "entropy": plot_entropy,
            "decode": plot_decode, "state": plot_state, "roofline": plot_roofline,
            "curves": plot_curves, "quality": plot_quality}


def make_figures(df: pd.DataFrame, meta: dict, kinds=KINDS, *, baseline: str | None = None,
                 n: int | None = None, rows: str = "n", cols: str | None = None,
                 strict: bool = False, methods: list[str] | None = None,
                 look: Look = Look()) -> tuple[dict, dict]:
    """Figures of every kind asked for, and ``{kind: why}`` for kinds with nothing to plot (raised
    instead when ``strict``). Rows lacking a method, status, mode or numeric n are left out and
    ``{"rows": why}`` says so. ``methods`` (shell patterns) keeps those methods and the baseline;
    colours stay those of the whole run."""
    from attnbench.grid import PAPER_TABLES

    df, dropped = usable_rows(df)
    skipped = {"rows": dropped} if dropped else {}
    if df.empty:
        raise NothingToPlot("no usable rows" + (f" ({dropped})" if dropped else ""))
    baseline = baseline or meta.get("baseline")
    look = Look(look.title, look.caption, df if look.palette_rows is None else look.palette_rows)
    if methods:
        df, unmatched = select_methods(df, methods, baseline)
        if unmatched:
            raise NothingToPlot(f"--methods {','.join(unmatched)} matches no method or label")
    figs = {}
    for kind in kinds:
        if kind == "grid" and not strict and meta.get("suite") not in PAPER_TABLES and cols is None:
            skipped[kind] = "grids are drawn for paper suites or when asked (--kind grid)"
            continue
        if kind in DECODE_KINDS and not strict and not has_decode(df):
            continue  # a run without decode cells: nothing to say
        extra = {"n": n} if kind == "pareto" else {"rows": rows, "cols": cols} if kind == "grid" else {}
        try:
            figs.update(PLOTTERS[kind](df, meta, baseline, look=look, **extra))
        except NothingToPlot as exc:
            if strict:
                raise
            skipped[kind] = str(exc)
    return figs, skipped
