"""The roofline plot: achieved TFLOP/s against arithmetic intensity, under the run's measured roofs.

A cell sits at x = FLOPs / least bytes moved (``flops`` / ``min_bytes``, FLOP per byte) and y =
``tflops_per_s``; the roofs are the device's measured copy bandwidth (the slanted line, y = x · TB/s)
and its measured dense-matmul rate in the cell's dtype (the flat line), both recorded in the rows
(``copy_gbs``, ``matmul_tflops``). A point's distance below its roof is the share of the hardware the
method leaves unused; FLOPs are useful work (masked pairs discounted, :mod:`attnbench.flops`). One
figure per dtype (and level, batch, ... when they vary), forward and forward+backward as panels,
one marker per cell, labels keep their colours.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from attnbench.plotstyle import (MODE_NAMES, Look, NothingToPlot, new_figure, method_label, figure_legend, log_axis,
                                 facets, file_stem, constants, finish, style_map, title_text)

NEEDED = ("flops", "min_bytes", "tflops_per_s", "copy_gbs", "matmul_tflops")


def roofline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows that carry everything the plot needs, with ``_x`` (FLOP/byte) and ``_y``."""
    missing = [c for c in NEEDED if c not in df]
    if missing:
        raise NothingToPlot(f"no {', '.join(missing)} columns (roofline columns are measured on CUDA "
                            "for methods that count their FLOPs)")
    num = {c: pd.to_numeric(df[c], errors="coerce") for c in NEEDED}
    ok = df.assign(_x=num["flops"] / num["min_bytes"], _y=num["tflops_per_s"],
                   _bw=num["copy_gbs"] / 1e3, _peak=num["matmul_tflops"])
    ok = ok[(ok["status"] == "ok") & (ok["_x"] > 0) & (ok["_y"] > 0) & (ok["_bw"] > 0) &
            (ok["_peak"] > 0)]
    if ok.empty:
        raise NothingToPlot("no ok rows with flops, min_bytes and the measured peaks")
    return ok


def plot_roofline(df: pd.DataFrame, meta: dict, baseline: str | None = None, *,
                  look: Look = Look()) -> dict:
    ok = roofline_rows(df)
    styles = style_map(look.palette_source(df), baseline or meta.get("baseline"))
    out = {}
    for fixed, part in facets(ok):
        modes = sorted(part["mode"].unique(), key=lambda m: (m != "fwd", m))
        fig, axes = new_figure(len(modes))
        for ax, mode in zip(axes, modes):
            rows = part[part["mode"] == mode]
            bw, peak = float(rows["_bw"].median()), float(rows["_peak"].median())
            lo = min(float(rows["_x"].min()), peak / bw) / 4
            hi = max(float(rows["_x"].max()), peak / bw) * 4
            xs = np.geomspace(lo, hi, 200)
            ax.plot(xs, np.minimum(xs * bw, peak), color="0.35", lw=1.5, label="_roof", gid="roof")
            ax.annotate(f"matmul {peak:.0f} TFLOP/s", (hi, peak), ha="right", va="bottom",
                        fontsize=7, color="0.35")
            ax.annotate(f"copy {bw:.2f} TB/s", (lo, lo * bw), ha="left", va="bottom", fontsize=7,
                        color="0.35", rotation=25)
            for lab, g in rows.groupby(method_label(rows), sort=True):
                st = styles[lab]
                ax.plot(g["_x"], g["_y"], linestyle="none", marker=st["marker"], markersize=7,
                        color=st["color"], label=lab, zorder=st["zorder"])
            log_axis(ax, "x")
            log_axis(ax)
            ax.set_xlabel("arithmetic intensity (FLOP per byte moved, at least)")
            ax.set_ylabel("achieved TFLOP/s (useful FLOPs)")
            ax.set_title(f"mode: {MODE_NAMES.get(mode, mode)}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
        finish(fig, title_text("roofline", meta, fixed),
               [" · ".join(constants(part, skip=fixed)),
                "roofs measured in the run: device copy bandwidth and dense matmul rate; one marker "
                "per cell (n grows with intensity for quadratic methods)"], look, fixed)
        figure_legend(fig, axes, order=styles)
        out[file_stem("roofline", fixed)] = fig
    return out
