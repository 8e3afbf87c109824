"""Paper-style grids: speed-up or memory saving of a method over an exact baseline, rows × a param.

The layout follows Table 3 of Linformer (Wang et al., 2020, https://arxiv.org/abs/2006.04768): rows are
sequence lengths n, columns the projected length k, each cell baseline time / method time ("speedup") or,
with batches filled to capacity, method max batch / baseline max batch ("memory saved"; outside
capacity mode, baseline peak memory / method peak memory). A cell the baseline could not run reads
"base OOM" and is never extrapolated. For the ``linformer_table3`` suite the paper's number stands beside
each measured one (``attnbench/data/linformer_table3.csv``).
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from attnbench.frame import (baseline_mask, cell_key_columns, escape_md, fmt_n, md_table, row_keys,
                             time_cost)

DATA = Path(__file__).parent / "data"
PAPER_TABLES = {"linformer_table3": DATA / "linformer_table3.csv"}
OOM = ("oom", "oom-pruned")


@dataclass
class Grid:
    kind: str                 # speedup | memory
    method: str               # the series: method label without the column param
    baseline: str
    row_name: str             # e.g. "n"
    col_name: str             # e.g. "k"
    facet: dict               # the other axes, fixed in this grid (mode, dtype, batch, ...)
    rows: list = field(default_factory=list)
    cols: list = field(default_factory=list)
    values: dict = field(default_factory=dict)  # (row, col) -> measured ratio
    notes: dict = field(default_factory=dict)   # (row, col) -> "base OOM", "OOM", "—", ...
    paper: dict = field(default_factory=dict)   # (row, col) -> the paper's value

    def cell_text(self, r, c, with_paper: bool = True) -> str:
        v = self.values.get((r, c))
        text = self.notes.get((r, c), "") if v is None else f"{v:.2g}×" if v < 10 else f"{v:.0f}×"
        p = self.paper.get((r, c))
        if with_paper and p is not None:
            text = f"{text or '—'} (paper {p:g}×)"
        return text or "—"

    @property
    def title(self) -> str:
        what = "speed-up" if self.kind == "speedup" else "memory saved"
        fixed = " ".join(f"{k.removeprefix('input.')}={v}" for k, v in self.facet.items())
        return f"{self.method}: {what} over {self.baseline}" + (f" · {fixed}" if fixed else "")

    @property
    def slug(self) -> str:
        text = "-".join([self.kind, self.method, "vs", self.baseline,
                         *(f"{k}{v}" for k, v in self.facet.items())])
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:120]


def paper_values(suite: str | None, row_name: str, col_name: str) -> dict[str, dict]:
    """``{"speedup": {(n, k): x}, "memory": {...}}`` from the paper's table, for suites that have one."""
    path = PAPER_TABLES.get(suite or "")
    if path is None or (row_name, col_name) != ("n", "k") or not path.is_file():
        return {}
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    out: dict[str, dict] = {"speedup": {}, "memory": {}}
    for rec in csv.DictReader(lines):
        for kind in out:
            if rec.get(kind):
                out[kind][(int(rec["n"]), int(rec["k"]))] = float(rec[kind])
    return out


def _column(df: pd.DataFrame, name: str) -> str | None:
    return f"param.{name}" if f"param.{name}" in df else name if name in df else None


def _norm(v):
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def grids(df: pd.DataFrame, meta: dict, kind: str, baseline: str, rows: str = "n",
          cols: str | None = None, method: str | None = None) -> list[Grid]:
    """One grid per approximate method (series of params) and setting of the axes not on the grid."""
    base = df[baseline_mask(df, baseline)]
    others = df[~baseline_mask(df, baseline)]
    if method:
        others = others[(others["method"] == method) | (others.get("label") == method)]
    keys = cell_key_columns(df)
    key = lambda frame: row_keys(frame, keys)  # noqa: E731
    base = base.assign(_key=key(base), _ok=base["status"] == "ok").sort_values("_ok", ascending=False)
    base_of = {}
    for k, r in zip(base["_key"], base.to_dict("records")):
        base_of.setdefault(k, r)  # ok rows first
    b_time = dict(zip(base["_key"], time_cost(base)))
    out: dict[tuple, Grid] = {}
    for name, frame in others.groupby("method", sort=False):
        col_name = cols or next((b for b in frame.get("budget", pd.Series(dtype=object)).dropna()), None)
        ccol, rcol = (_column(frame, col_name) if col_name else None), _column(frame, rows)
        if ccol is None or rcol is None or frame[ccol].isna().all():
            continue
        pcols = [c for c in frame.columns if c.startswith("param.") and c not in (ccol, rcol)
                 and frame[c].astype(str).nunique() > 1]
        facet_cols = [c for c in keys if c not in (rcol, "seed") and df[c].astype(str).nunique() > 1]
        paper = paper_values(meta.get("suite"), rows, col_name).get(kind, {})
        frame = frame.assign(_key=key(frame), _t=time_cost(frame))
        for rec in frame.to_dict("records"):
            series = name + ("(" + ",".join(f"{c[6:]}={rec[c]}" for c in pcols) + ")" if pcols else "")
            facet = {c: rec[c] for c in facet_cols}
            gkey = (series, tuple(facet.items()))
            g = out.setdefault(gkey, Grid(kind, series, baseline, rows, col_name, facet))
            r, c = _norm(rec[rcol]), _norm(rec[ccol])
            if r not in g.rows:
                g.rows.append(r)
            if c not in g.cols:
                g.cols.append(c)
            if (r, c) in paper:
                g.paper[(r, c)] = paper[(r, c)]
            b = base_of.get(rec["_key"])
            if rec["status"] != "ok":
                g.notes.setdefault((r, c), {"unsupported": "—", "oom": "OOM", "oom-pruned": "OOM"}
                                   .get(rec["status"], str(rec["status"])))
            elif b is None:
                g.notes.setdefault((r, c), "no base")
            elif b["status"] in OOM:
                g.notes.setdefault((r, c), "base OOM")
            elif b["status"] != "ok":
                g.notes.setdefault((r, c), f"base {b['status']}")
            else:
                v = _ratio(kind, rec, b, b_time[rec["_key"]])
                if v is not None and math.isfinite(v):
                    g.values.setdefault((r, c), []).append(v)
    for g in out.values():
        g.values = {rc: float(pd.Series(v).median()) for rc, v in g.values.items()}
        for rc in g.values:
            g.notes.pop(rc, None)
        g.rows.sort()
        g.cols.sort()
    return list(out.values())


def _ratio(kind: str, m: dict, b: dict, b_time: float) -> float | None:
    def num(rec, col):
        v = rec.get(col)
        return float(v) if v is not None and v == v else math.nan

    capacity = m.get("batching") == "capacity"
    if kind == "speedup":
        return b_time / m["_t"] if m["_t"] else None
    if capacity:
        return num(m, "max_batch") / num(b, "max_batch")
    peak = num(m, "peak_mem_mib")
    return num(b, "peak_mem_mib") / peak if peak else None


def to_rows(g: Grid) -> tuple[list[str], list[list[str]]]:
    rlabel = lambda r: fmt_n(r) if g.row_name == "n" else str(r)  # noqa: E731
    heads = [f"{g.row_name} \\ {g.col_name}"] + [f"{g.col_name}={c}" for c in g.cols]
    return heads, [[rlabel(r)] + [g.cell_text(r, c) for c in g.cols] for r in g.rows]


def to_markdown(g: Grid) -> str:
    return "\n".join([f"### {escape_md(g.title)}", "", *md_table(*to_rows(g))]) + "\n"


def to_csv(g: Grid) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "method", "baseline", *g.facet, g.row_name, g.col_name, "measured", "note",
                "paper"])
    for r in g.rows:
        for c in g.cols:
            v = g.values.get((r, c))
            w.writerow([g.kind, g.method, g.baseline, *g.facet.values(), r, c,
                        "" if v is None else f"{v:.6g}", g.notes.get((r, c), ""),
                        g.paper.get((r, c), "")])
    return buf.getvalue()


def drawable(g: Grid) -> bool:
    """A heatmap needs two rows and two columns; anything thinner reads better as the table."""
    return len(g.rows) >= 2 and len(g.cols) >= 2


def grid_figure(g, meta: dict, df: pd.DataFrame | None = None, look=None):
    """Heatmap of one ``grid.Grid``: colour = log2 of the ratio (blue: the method wins), the measured
    value in each cell and the paper's in brackets. The title names the grid, suite and device; the
    parameters its rows share go to the caption line."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    from attnbench.plotstyle import Look, constants, finish, title_text

    vals = np.array([[math.log2(g.values[(r, c)]) if (r, c) in g.values else np.nan for c in g.cols]
                     for r in g.rows], dtype=float)
    fig = Figure(figsize=(max(6.4, 1.3 * len(g.cols) + 3), 0.55 * len(g.rows) + 1.8),
                 layout="constrained")
    ax = fig.subplots()
    span = max(1.0, float(np.nanmax(np.abs(vals)))) if np.isfinite(vals).any() else 1.0
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.88")
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, aspect="auto",
                   norm=TwoSlopeNorm(0.0, -span, span))
    for i, r in enumerate(g.rows):
        for j, c in enumerate(g.cols):
            text = g.cell_text(r, c, with_paper=False)
            if (r, c) in g.paper:
                text += f"\n({g.paper[(r, c)]:g}×)"
            dark = np.isfinite(vals[i, j]) and abs(vals[i, j]) > 0.6 * span
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(g.cols)), [str(c) for c in g.cols])
    ax.set_yticks(range(len(g.rows)), [fmt_n(r) if g.row_name == "n" else str(r) for r in g.rows])
    ax.set_xlabel(g.col_name)
    ax.set_ylabel(g.row_name + (" (tokens)" if g.row_name == "n" else ""))
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("log2 ratio (>0: method better)")
    rows = df[df["method"] == g.method.split("(")[0]] if df is not None else pd.DataFrame()
    for col, v in g.facet.items():
        rows = rows[rows[col] == v] if col in rows else rows
    note = "cells: measured ratio" + (", the paper's in brackets" if g.paper else "") + \
        "; grey: no ratio (— unsupported, OOM, base OOM: the baseline ran out of memory)"
    finish(fig, title_text(g.title, meta), [" · ".join(constants(rows, skip=g.facet)), note],
           look or Look(), g.facet)
    return fig
