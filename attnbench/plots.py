"""Plots of a finished run (matplotlib; PNG and SVG): scaling, memory, error, pareto, grid, entropy.

Each ``plot_<kind>(df, meta, ...)`` returns ``{file stem: Figure}`` so tests can inspect the figures.
A method label keeps one colour and marker in every plot of a run (colour by method, darker shade for
a larger budget); the exact baseline is drawn in black. Runs that mix dtypes, levels, batch sizes or
inputs get one figure per combination; forward and forward+backward sit side by side as panels.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnbench.plotstyle import (KINDS, FAILED, MODE_NAMES, NothingToPlot, _label, method_palette,
                                  style_map, _shade, _split, _stem, _title, _figure, _n_axis,
                                  _log_y, _legend)
from attnbench.report import fmt_n, time_cost


def plot_scaling(df: pd.DataFrame, meta: dict, baseline: str | None = None,
                 metric: str = "time") -> dict:
    """Time (or peak memory) against n, log-log, one line per method label; fwd and fwd_bwd panels.
    Cells that did not run are marked along the top edge of the panel at their n."""
    baseline = baseline or meta.get("baseline")
    df = df.assign(_y=time_cost(df) if metric == "time"
                   else pd.to_numeric(df.get("peak_mem_mib"), errors="coerce"))
    if not (df["status"].eq("ok") & df["_y"].notna()).any():
        raise NothingToPlot(f"no ok rows with {'time_ms' if metric == 'time' else 'peak_mem_mib'}")
    styles = style_map(df, baseline)
    capacity = "batching" in df and (df["batching"] == "capacity").any()
    ylabel = ("time per sequence (ms)" if capacity else "time per call (ms, median)") \
        if metric == "time" else "peak memory (MiB)"
    what = "time vs n" if metric == "time" else "peak memory vs n"
    out = {}
    for fixed, part in _split(df):
        modes = sorted(part["mode"].unique(), key=lambda m: (m != "fwd", m))
        fig, axes = _figure(len(modes))
        notes: dict[str, str] = {}
        for ax, mode in zip(axes, modes):
            rows = part[part["mode"] == mode]
            ok = rows[(rows["status"] == "ok") & rows["_y"].notna()]
            bad = rows[rows["status"].isin(FAILED)]
            for lab, g in ok.groupby(_label(ok), sort=True):
                g = g.groupby("n")["_y"].median()
                ax.plot(g.index, g.values, label=lab, **styles[lab])
            _log_y(ax)
            _n_axis(ax, rows["n"])
            ax.set_ylabel(ylabel)
            ax.set_title(f"mode: {MODE_NAMES.get(mode, mode)}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            if not bad.empty:
                lo, hi = ax.get_ylim() if not ok.empty else (1, 10)
                order = sorted(set(_label(bad)))
                span = 0.06 * len(order) + 0.04  # a band above the data for the markers
                ax.set_ylim(lo, hi * (hi / lo) ** (span / (1 - span)))
                trans = ax.get_xaxis_transform()
                for i, lab in enumerate(order):
                    g = bad[_label(bad) == lab]
                    for status, gg in g.groupby("status"):
                        ax.scatter(gg["n"], [0.97 - 0.06 * i] * len(gg), transform=trans,
                                   marker=FAILED[status], s=70, linewidths=2,
                                   color=styles[lab]["color"],
                                   clip_on=False, zorder=6,
                                   label=lab if lab not in set(_label(ok)) else None)
                        notes[FAILED[status]] = {"x": "OOM (top edge)", "|": "unsupported (top edge)"} \
                            .get(FAILED[status], "error / NaN (top edge)")
        fig.suptitle(_title(what, part, meta, f"black: exact baseline {baseline}"), fontsize=10)
        _legend(fig, axes, sorted(notes.items()), order=styles)
        out[_stem("scaling" if metric == "time" else "memory", fixed)] = fig
    return out


def plot_memory(df: pd.DataFrame, meta: dict, baseline: str | None = None) -> dict:
    return plot_scaling(df, meta, baseline, metric="memory")


def _error_rows(df: pd.DataFrame, need: tuple[str, ...]) -> pd.DataFrame:
    for col in need:
        if col not in df:
            raise NothingToPlot(f"no {col} column in this run")
    ok = df[(df["status"] == "ok") & df["rel_err"].notna()]
    if "exact" in ok:
        ok = ok[ok["exact"].astype(str).str.lower() != "true"]
    if "mode" in ok and (ok["mode"] == "fwd").any():
        ok = ok[ok["mode"] == "fwd"]  # the backward pass does not change the output's error
    return ok


def plot_error(df: pd.DataFrame, meta: dict, baseline: str | None = None) -> dict:
    """Relative error against each method's budget knob: mean over seeds, band min..max over seeds,
    one line per n (darker = longer) and per setting of the method's other params."""
    ok = _error_rows(df, ("rel_err", "budget_value"))
    ok = ok[pd.to_numeric(ok["budget_value"], errors="coerce").notna()]
    if ok.empty:
        raise NothingToPlot("no ok rows of an approximate method with a budget knob and rel_err")
    palette = method_palette(df, baseline or meta.get("baseline"))
    seeds = ok["seed"].nunique() if "seed" in ok else 1
    out = {}
    for fixed, part in _split(ok):
        methods = sorted(part["method"].unique())
        fig, axes = _figure(len(methods), width=4.6, legend_width=0.3)
        for ax, m in zip(axes, methods):
            rows = part[part["method"] == m].assign(_b=lambda f: pd.to_numeric(f["budget_value"]))
            knob = rows["budget"].iloc[0]
            other = [c for c in rows if c.startswith("param.") and c != f"param.{knob}"
                     and rows[c].astype(str).nunique() > 1]
            rgb, marker = palette.get(m, ((0.0, 0.0, 0.0), "o"))
            ns = sorted(rows["n"].unique())
            dashes = ["-", "--", ":", "-."]
            for si, (sk, srows) in enumerate(rows.groupby(other) if other else [((), rows)]):
                sk = sk if isinstance(sk, tuple) else (sk,)
                tag = ",".join(f"{c[6:]}={v}" for c, v in zip(other, sk))
                for ni, n in enumerate(ns):
                    g = srows[srows["n"] == n].groupby("_b")["rel_err"].agg(["mean", "min", "max"])
                    if g.empty:
                        continue
                    col = _shade(rgb, ni, len(ns), 0.65)
                    ax.plot(g.index, g["mean"], color=col, marker=marker, linestyle=dashes[si % 4],
                            markersize=4, label=f"n={fmt_n(n)}" + (f" {tag}" if tag else ""))
                    if seeds > 1:
                        ax.fill_between(g.index, g["min"], g["max"], color=col, alpha=0.2, lw=0)
            if "uniform_rel_err" in rows and rows["uniform_rel_err"].notna().any():
                ax.axhline(rows["uniform_rel_err"].mean(), color="0.3", linestyle=":", lw=1.2,
                           label="uniform answer (mean of V)")
            if "svd_rel_err" in rows and rows["svd_rel_err"].notna().any():
                for ni, n in enumerate(ns):
                    g = rows[rows["n"] == n].groupby("_b")["svd_rel_err"].mean().dropna()
                    ax.plot(g.index, g.values, color=_shade((0.2, 0.2, 0.2), ni, len(ns), 0.6),
                            linestyle="--", lw=1, label="best rank-k (SVD)" if ni == len(ns) - 1
                            else None)
            b = rows["_b"]
            if b.max() / max(b.min(), 1e-12) >= 4:
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted(b.unique()), [f"{v:g}" for v in sorted(b.unique())])
                ax.minorticks_off()
            _log_y(ax)
            ax.set_xlabel(f"{knob} (budget knob)")
            ax.set_ylabel("relative error vs float64 exact")
            ax.set_title(m, fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, frameon=False)
        band = f"mean over {seeds} seeds, band min–max" if seeds > 1 else "one seed (no band)"
        fig.suptitle(_title("approximation error vs budget", part, meta, band), fontsize=10)
        out[_stem("error", fixed)] = fig
    return out


def _dominated(points: list[tuple[float, float]]) -> list[bool]:
    return [any(t2 <= t and e2 <= e and (t2, e2) != (t, e) for t2, e2 in points) for t, e in points]


def plot_pareto(df: pd.DataFrame, meta: dict, baseline: str | None = None, n: int | None = None) -> dict:
    """Error against time at one n: a hollow marker is dominated (another method is both faster and
    more accurate there), so that method at that setting is never worth it."""
    if "rel_err" not in df:
        raise NothingToPlot("no rel_err column in this run")
    ok = df[(df["status"] == "ok") & df["rel_err"].notna()].assign(_t=time_cost)
    ok = ok[ok["_t"].notna()]
    if ok.empty:
        raise NothingToPlot("no ok rows with both time and rel_err")
    avail = sorted(ok["n"].unique())
    n = n if n is not None else int(avail[-1])
    if n not in avail:
        raise NothingToPlot(f"no rows with error and time at n={n}; measured n: "
                            f"{', '.join(str(int(x)) for x in avail)}")
    styles = style_map(df, baseline or meta.get("baseline"))
    out = {}
    for fixed, part in _split(ok[ok["n"] == n]):
        modes = sorted(part["mode"].unique(), key=lambda m: (m != "fwd", m))
        fig, axes = _figure(len(modes))
        for ax, mode in zip(axes, modes):
            pts = part[part["mode"] == mode].groupby(_label(part[part["mode"] == mode])) \
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
            _log_y(ax, "x")
            _log_y(ax)
            ax.set_xlabel("time per call (ms, median)" if "batching" not in part or
                          (part["batching"] != "capacity").all() else "time per sequence (ms)")
            ax.set_ylabel("relative error vs float64 exact")
            ax.set_title(f"mode: {MODE_NAMES.get(mode, mode)}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
        fig.suptitle(_title(f"error vs time at n={fmt_n(n)}", part, meta,
                            "hollow = dominated (another is faster and more accurate); grey: frontier"),
                     fontsize=10)
        _legend(fig, axes, order=styles)
        out[_stem(f"pareto-n{n}", fixed)] = fig
    return out


def plot_entropy(df: pd.DataFrame, meta: dict, baseline: str | None = None) -> dict:
    """Error against the exact attention's normalised entropy, one line per method label, with the
    error of the uniform answer (every query returns the mean of V) in black."""
    ok = _error_rows(df, ("rel_err", "entropy"))
    ok = ok[pd.to_numeric(ok["entropy"], errors="coerce").notna()]
    if ok.empty:
        raise NothingToPlot("no ok rows with entropy and rel_err")
    styles = style_map(df, baseline or meta.get("baseline"))
    inputs = sorted(c for c in ok if c.startswith("input."))
    split = [(f, p) for f, p in _split(ok.drop(columns=inputs))]
    out = {}
    for fixed, part in split:
        part = ok.loc[part.index]
        ns = sorted(part["n"].unique())
        fig, axes = _figure(len(ns), width=4.8)
        for ax, n in zip(axes, ns):
            rows = part[part["n"] == n]
            key = inputs or ["entropy"]
            for lab, g in rows.groupby(_label(rows), sort=True):
                g = g.groupby(key, dropna=False)[["entropy", "rel_err"]].mean().sort_values("entropy")
                ax.plot(g["entropy"], g["rel_err"], label=lab, **styles[lab])
            if "uniform_rel_err" in rows and rows["uniform_rel_err"].notna().any():
                u = rows.groupby(key, dropna=False)[["entropy", "uniform_rel_err"]].mean() \
                    .sort_values("entropy")
                ax.plot(u["entropy"], u["uniform_rel_err"], color="black", linestyle="--", lw=2,
                        label="uniform: every query returns mean(V)")
            ax.set_yscale("log")
            ax.set_xlabel("normalised attention entropy (1 = uniform, 0 = one key)")
            ax.set_ylabel("relative error vs float64 exact")
            ax.set_title(f"n={fmt_n(n)}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
        fig.suptitle(_title("approximation error vs attention entropy", part, meta), fontsize=10)
        _legend(fig, axes, order=styles)
        out[_stem("entropy", fixed)] = fig
    return out


def plot_grid(df: pd.DataFrame, meta: dict, baseline: str | None = None, rows: str = "n",
              cols: str | None = None) -> dict:
    from attnbench.grid import grid_figure, grids

    baseline = baseline or meta.get("baseline")
    found = [g for kind in ("speedup", "memory") for g in grids(df, meta, kind, baseline, rows, cols)]
    if not found:
        raise NothingToPlot(f"no approximate method with a param {cols or '(budget knob)'} and a "
                            f"baseline {baseline} row on the same cells")
    return {f"grid-{g.slug}": grid_figure(g, meta, df) for g in found}


PLOTTERS = {"scaling": plot_scaling, "memory": plot_memory, "error": plot_error,
            "pareto": plot_pareto, "grid": plot_grid, "entropy": plot_entropy}


def make_figures(df: pd.DataFrame, meta: dict, kinds=KINDS, *, baseline: str | None = None,
                 n: int | None = None, rows: str = "n", cols: str | None = None,
                 strict: bool = False) -> tuple[dict, dict]:
    """Figures of every kind asked for, and ``{kind: why}`` for kinds with nothing to plot (raised
    instead when ``strict``)."""
    from attnbench.grid import PAPER_TABLES

    figs, skipped = {}, {}
    for kind in kinds:
        if kind == "grid" and not strict and meta.get("suite") not in PAPER_TABLES and cols is None:
            skipped[kind] = "grids are drawn for paper suites or when asked (--kind grid)"
            continue
        extra = {"n": n} if kind == "pareto" else {"rows": rows, "cols": cols} if kind == "grid" else {}
        try:
            figs.update(PLOTTERS[kind](df, meta, baseline, **extra))
        except NothingToPlot as exc:
            if strict:
                raise
            skipped[kind] = str(exc)
    return figs, skipped


def save_figure(fig, stem: Path, formats=("png", "svg")) -> list[Path]:
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        fig.savefig(path, dpi=130 if fmt == "png" else None, metadata={"Date": None} if fmt == "svg"
                    else None)
        paths.append(path)
    return paths


def cmd_plot(args, console) -> int:
    from attnbench.cli import BadInput
    from attnbench.report import check_baseline
    from attnbench.store import load_results, read_meta

    meta, df = read_meta(args.run_dir), load_results(args.run_dir)
    if df.empty:
        raise BadInput(f"{args.run_dir}: no result rows to plot")
    kinds = [k.strip() for k in args.kind.split(",")] if args.kind != "all" else list(KINDS)
    for k in kinds:
        if k not in KINDS:
            raise BadInput(f"plot --kind {k!r}: choose from {', '.join(KINDS)} or all")
    if args.baseline:
        check_baseline(df, args.baseline)
    baseline = args.baseline or meta.get("baseline")
    try:
        figs, skipped = make_figures(df, meta, kinds, baseline=baseline, n=args.n, rows=args.rows,
                                     cols=args.cols, strict=args.kind != "all")
    except NothingToPlot as exc:
        raise BadInput(f"plot: nothing to plot: {exc}") from None
    out = Path(args.out or Path(args.run_dir) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    for stem, fig in figs.items():
        for path in save_figure(fig, out / stem, tuple(args.format.split(","))):
            console.print(f"wrote {path}", highlight=False)
    for kind, why in skipped.items():
        console.print(f"skipped {kind}: {why}", highlight=False, style="dim")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("plot", help="plots of a finished run (PNG and SVG)")
    p.add_argument("run_dir")
    p.add_argument("--kind", default="all", help=f"comma-separated: {', '.join(KINDS)} (default all "
                   "that apply)")
    p.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    p.add_argument("--n", type=int, help="pareto: the sequence length (default the largest measured)")
    p.add_argument("--baseline", help="exact baseline drawn in black (default: the suite's)")
    p.add_argument("--rows", default="n", help="grid: rows (default n)")
    p.add_argument("--cols", help="grid: a param for the columns (default each method's budget knob)")
    p.add_argument("--format", default="png,svg", help="png, svg or both (default png,svg)")
    p.set_defaults(func=cmd_plot)
