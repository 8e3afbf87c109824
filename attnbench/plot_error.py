"""Approximation error plots: error against each method's budget knob, and against the exact
attention's entropy. Both read only ok rows of approximate methods, forward pass only (the backward pass
does not change the output's error)."""
from __future__ import annotations

import pandas as pd

from attnbench.plotstyle import (Look, NothingToPlot, new_figure, method_label, figure_legend, log_axis, shade, facets,
                                 file_stem, constants, finish, method_palette, panel_legend, style_map,
                                 title_text, value_axis)
from attnbench.frame import fmt_n

DASHES = ["-", "--", ":", "-."]


def _error_rows(df: pd.DataFrame, need: tuple[str, ...]) -> pd.DataFrame:
    for col in need:
        if col not in df:
            raise NothingToPlot(f"no {col} column in this run")
    ok = df[(df["status"] == "ok") & pd.to_numeric(df["rel_err"], errors="coerce").notna()]
    if "exact" in ok:
        ok = ok[ok["exact"].astype(str).str.lower() != "true"]
    if "mode" in ok and (ok["mode"] == "fwd").any():
        ok = ok[ok["mode"] == "fwd"]
    return ok


def _other_params(rows: pd.DataFrame, knob: str) -> list[str]:
    return [c for c in rows if c.startswith("param.") and c != f"param.{knob}"
            and rows[c].astype(str).nunique() > 1]


def _error_panel(ax, rows: pd.DataFrame, rgb, marker: str, seeds: int) -> None:
    """One method: a line per n (darker = longer) and per setting of its other varied params, the
    uniform answer's error and, where measured, the best rank-k approximation's."""
    knob = rows["budget"].iloc[0]
    other = _other_params(rows, knob)
    ns = sorted(rows["n"].unique())
    for si, (sk, srows) in enumerate(rows.groupby(other) if other else [((), rows)]):
        sk = sk if isinstance(sk, tuple) else (sk,)
        tag = ",".join(f"{c[6:]}={v}" for c, v in zip(other, sk))
        for ni, n in enumerate(ns):
            g = srows[srows["n"] == n].groupby("_b")["rel_err"].agg(["mean", "min", "max"])
            if g.empty:
                continue
            col = shade(rgb, ni, len(ns), 0.65)
            ax.plot(g.index, g["mean"], color=col, marker=marker, linestyle=DASHES[si % 4],
                    markersize=5, label=f"n={fmt_n(n)}" + (f" {tag}" if tag else ""))
            if seeds > 1:
                ax.fill_between(g.index, g["min"], g["max"], color=col, alpha=0.2, lw=0)
    if "uniform_rel_err" in rows and rows["uniform_rel_err"].notna().any():
        ax.axhline(rows["uniform_rel_err"].mean(), color="0.3", linestyle=":", lw=1.2,
                   label="uniform answer (mean of V)")
    if "svd_rel_err" in rows:
        labelled = False
        for ni, n in enumerate(ns):
            g = rows[rows["n"] == n].groupby("_b")["svd_rel_err"].mean().dropna()
            if g.empty:
                continue
            ax.plot(g.index, g.values, color=shade((0.2, 0.2, 0.2), ni, len(ns), 0.6),
                    linestyle="--", lw=1, marker="_", markersize=10, mew=1.5,
                    label=None if labelled else "best rank-k (SVD)")
            labelled = True
    value_axis(ax, rows["_b"], f"{knob} (budget knob)")
    log_axis(ax)
    ax.set_ylabel("relative error vs float64 exact")
    ax.grid(True, which="major", alpha=0.3)
    panel_legend(ax)


def plot_error(df: pd.DataFrame, meta: dict, baseline: str | None = None, *,
               look: Look = Look()) -> dict:
    """Relative error against each method's budget knob: mean over seeds, band min..max over seeds,
    one line per n (darker = longer) and per setting of the method's other params."""
    ok = _error_rows(df, ("rel_err", "budget_value"))
    ok = ok.assign(rel_err=pd.to_numeric(ok["rel_err"]), _b=pd.to_numeric(ok["budget_value"],
                                                                         errors="coerce"))
    ok = ok[ok["_b"].notna() & ok["budget"].notna()] if "budget" in ok else ok.iloc[0:0]
    if ok.empty:
        raise NothingToPlot("no ok rows of an approximate method with a budget knob and rel_err")
    palette = method_palette(look.palette_source(df), baseline or meta.get("baseline"))
    seeds = ok["seed"].nunique() if "seed" in ok else 1
    out = {}
    for fixed, part in facets(ok):
        methods = sorted(part["method"].unique())
        fig, axes = new_figure(len(methods), width=5.6, height=3.6, legend_width=0.0)
        for ax, m in zip(axes, methods):
            rgb, marker = palette.get(m, ((0.0, 0.0, 0.0), "o"))
            _error_panel(ax, part[part["method"] == m], rgb, marker, seeds)
            ax.set_title(m, fontsize=10)
        finish(fig, title_text("approximation error vs budget", meta, fixed),
               [" · ".join(constants(part, skip=fixed)), f"mean over {seeds} seeds, band min–max"
                if seeds > 1 else "one seed (no band)"], look, fixed)
        out[file_stem("error", fixed)] = fig
    return out


def _uniform_curves(ax, rows: pd.DataFrame, key: list[str]) -> None:
    """The uniform answer's error across the input settings, one black dashed curve per exact
    reference: a method measured against its own exact attention (LSH's shared-QK attention) has its
    own entropy and uniform answer on the same inputs, so it gets its own curve."""
    curves = []
    for _, g in rows[rows["uniform_rel_err"].notna()].groupby(method_label(rows), sort=True):
        u = g.groupby(key, dropna=False)[["entropy", "uniform_rel_err"]].mean().sort_values("entropy")
        pts = list(zip(u["entropy"].round(9), u["uniform_rel_err"].round(9)))
        if pts not in curves:
            curves.append(pts)
    for i, pts in enumerate(curves):
        ax.plot(*zip(*pts), color="black", linestyle="--", lw=2, marker="_", markersize=12, mew=2,
                label=None if i else "uniform: every query returns mean(V)")


def plot_entropy(df: pd.DataFrame, meta: dict, baseline: str | None = None, *,
                 look: Look = Look()) -> dict:
    """Error against the exact attention's normalised entropy, one line per method label, with the
    error of the uniform answer (every query returns the mean of V) in black."""
    ok = _error_rows(df, ("rel_err", "entropy"))
    ok = ok.assign(rel_err=pd.to_numeric(ok["rel_err"]),
                   entropy=pd.to_numeric(ok["entropy"], errors="coerce"))
    ok = ok[ok["entropy"].notna()]
    if ok.empty:
        raise NothingToPlot("no ok rows with entropy and rel_err")
    styles = style_map(look.palette_source(df), baseline or meta.get("baseline"))
    inputs = sorted(c for c in ok if c.startswith("input."))
    out = {}
    for fixed, part in facets(ok.drop(columns=inputs)):
        part = ok.loc[part.index]
        ns = sorted(part["n"].unique())
        fig, axes = new_figure(len(ns), width=4.8)
        for ax, n in zip(axes, ns):
            rows = part[part["n"] == n]
            key = inputs or ["entropy"]
            for lab, g in rows.groupby(method_label(rows), sort=True):
                g = g.groupby(key, dropna=False)[["entropy", "rel_err"]].mean().sort_values("entropy")
                ax.plot(g["entropy"], g["rel_err"], label=lab, **styles[lab])
            if "uniform_rel_err" in rows:
                _uniform_curves(ax, rows, key)
            log_axis(ax)
            ax.set_xlabel("normalised attention entropy (1 = uniform, 0 = one key)")
            ax.set_ylabel("relative error vs float64 exact")
            ax.set_title(f"n={fmt_n(n)}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
        finish(fig, title_text("approximation error vs attention entropy", meta, fixed),
               [" · ".join(constants(part.drop(columns=inputs), skip=fixed))], look, fixed)
        figure_legend(fig, axes, order=styles)
        out[file_stem("entropy", fixed)] = fig
    return out
