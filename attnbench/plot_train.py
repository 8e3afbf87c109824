"""Plots of train rows: learning curves (``--kind curves``) and quality against cost (``--kind quality``).

- curves: per task and n, the held-out metric against the training step, one colour per method label
  (the same colours as every other plot of the run): the mean over seeds as a line, the band from the
  lowest to the highest seed. Read from ``curves.jsonl`` (each cell's points of the attempt its row
  names).
- quality: a Pareto plot from the rows alone, per task and n: the final metric (mean over seeds, a bar
  from the lowest to the highest seed) against the median time per training step, and against peak
  memory. A hollow marker is dominated: another method is both cheaper and better there.
"""
from __future__ import annotations

import pandas as pd

from attnbench.plotstyle import (Look, NothingToPlot, new_figure, method_label, figure_legend, log_axis, file_stem, finish,
                                 style_map, title_text)
from attnbench.frame import fmt_n
from attnbench.train.curves import read_curves
from attnbench.train_report import _setting_columns, add_quality, train_rows


def _groups(df: pd.DataFrame):
    """(task, n, {setting: value}, rows): one figure per task, length and setting that varies in the
    run (causal, lr, ...), so that seeds of one setting make a band and settings never mix."""
    task = df.get("task", df.get("train.task"))
    settings = _setting_columns(df)
    for key, part in df.assign(_task=task).groupby(["_task", "n", *settings], sort=True,
                                                    dropna=False):
        fixed = {c.removeprefix("train."): v for c, v in zip(settings, key[2:])}
        yield key[0], key[1], fixed, part


def plot_curves(df: pd.DataFrame, meta: dict, baseline: str | None = None, *,
                look: Look = Look()) -> dict:
    rows = train_rows(df)
    if rows.empty:
        raise NothingToPlot("no train rows (level \"train\") in this run")
    run_dir = meta.get("run_dir")
    points = read_curves(run_dir) if run_dir else pd.DataFrame()
    if points.empty:
        raise NothingToPlot("no learning curves (curves.jsonl) beside this run's rows")
    if "curve_attempt" in rows:  # the attempt each row names; older attempts are left out
        keep = set(zip(rows["cell_id"], rows["curve_attempt"]))
        points = points[[(c, a) in keep for c, a in zip(points["cell_id"], points["attempt"])]]
    styles = style_map(look.palette_source(df), baseline or meta.get("baseline"))
    labels = dict(zip(rows["cell_id"], method_label(rows)))
    out = {}
    for task, n, fixed, part in _groups(rows):
        pts = points[points["cell_id"].isin(part["cell_id"])]
        metric = str(part["metric"].dropna().iloc[0]) if part["metric"].notna().any() else None
        if pts.empty or metric is None or metric not in pts:
            continue
        fig, axes = new_figure(2)
        for ax, col, name in ((axes[0], metric, f"held-out {metric}"),
                              (axes[1], "train_loss", "training loss (mean since last evaluation)")):
            for lab, g in pts.assign(_lab=pts["cell_id"].map(labels)).groupby("_lab", sort=True):
                table = g.pivot_table(index="step", columns="cell_id", values=col, aggfunc="last")
                st = styles.get(lab, {})
                ax.plot(table.index, table.mean(axis=1), label=lab, color=st.get("color"),
                        linewidth=st.get("linewidth", 1.5), zorder=st.get("zorder", 3))
                if table.shape[1] > 1:
                    ax.fill_between(table.index, table.min(axis=1), table.max(axis=1),
                                    color=st.get("color"), alpha=0.15, linewidth=0)
            ax.set_xlabel("training step")
            ax.set_ylabel(name)
            if col == "perplexity" or col == "train_loss":
                log_axis(ax)
            ax.grid(True, alpha=0.3)
        chance = pd.to_numeric(part.get("chance"), errors="coerce").mean()
        if chance == chance:
            axes[0].axhline(chance, color="0.5", linestyle=":", linewidth=1, label="chance")
        seeds = part["seed"].nunique() if "seed" in part else 1
        finish(fig, title_text(f"learning curves · {task} · n={fmt_n(n)}", meta, fixed),
               [f"line: mean over {seeds} seed(s); band: lowest to highest seed · dotted: chance "
                "(what a model without content-based attention reaches)"], look, fixed)
        figure_legend(fig, axes, order=styles)
        out[file_stem(f"curves-{task}-n{n}", fixed)] = fig
    if not out:
        raise NothingToPlot("no learning-curve points match this run's train rows")
    return out


def _dominated(points: list[tuple[float, float]], higher: bool) -> list[bool]:
    sign = 1 if higher else -1
    return [any(c2 <= c and sign * q2 >= sign * q and (c2, q2) != (c, q) for c2, q2 in points)
            for c, q in points]


def plot_quality(df: pd.DataFrame, meta: dict, baseline: str | None = None, *,
                 look: Look = Look()) -> dict:
    baseline = baseline or meta.get("baseline")
    rows = add_quality(df, baseline or "")
    rows = rows[(rows.get("status") == "ok")] if not rows.empty else rows
    if rows.empty:
        raise NothingToPlot("no ok train rows (level \"train\") in this run")
    rows = rows.assign(time_ms=pd.to_numeric(rows.get("time_ms"), errors="coerce"),
                       peak_mem_mib=pd.to_numeric(rows.get("peak_mem_mib"), errors="coerce"))
    styles = style_map(look.palette_source(df), baseline)
    out = {}
    for task, n, fixed, part in _groups(rows):
        metric = str(part["metric"].dropna().iloc[0])
        higher = metric == "accuracy"
        fig, axes = new_figure(2)
        agg = part.groupby(method_label(part)).agg(q=("_value", "mean"), lo=("_value", "min"),
                                             hi=("_value", "max"), t=("time_ms", "median"),
                                             m=("peak_mem_mib", "median"))
        for ax, cost, xlabel in ((axes[0], "t", "time per training step (ms, median)"),
                                 (axes[1], "m", "peak memory (MiB)")):
            pts = agg.dropna(subset=[cost, "q"])
            dom = _dominated(list(zip(pts[cost], pts["q"])), higher)
            for (lab, r), d in zip(pts.iterrows(), dom):
                st = styles.get(lab, {"color": "0.3", "marker": "o", "zorder": 3})
                ax.errorbar([r[cost]], [r["q"]], yerr=[[r["q"] - r["lo"]], [r["hi"] - r["q"]]],
                            fmt=st["marker"], markersize=8, color=st["color"],
                            markerfacecolor="none" if d else st["color"], alpha=0.6 if d else 1.0,
                            label=lab, zorder=st["zorder"], elinewidth=1, capsize=2)
            front = pts[[not d for d in dom]].sort_values(cost)
            if len(front) > 1:
                ax.step(front[cost], front["q"], where="post", color="0.5", lw=1, zorder=1)
            log_axis(ax, "x")
            if metric == "perplexity":
                log_axis(ax)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"held-out {metric} ({'higher' if higher else 'lower'} is better)")
            ax.grid(True, alpha=0.3)
        chance = pd.to_numeric(part.get("chance"), errors="coerce").mean()
        for ax in axes:
            if chance == chance:
                ax.axhline(chance, color="0.5", linestyle=":", linewidth=1)
        seeds = part["seed"].nunique() if "seed" in part else 1
        finish(fig, title_text(f"quality vs cost · {task} · n={fmt_n(n)}", meta, fixed),
               [f"marker: mean over {seeds} seed(s), bar: lowest to highest · hollow = dominated "
                "(another is cheaper and better) · grey: frontier · dotted: chance"], look, fixed)
        figure_legend(fig, axes, order=styles)
        out[file_stem(f"quality-{task}-n{n}", fixed)] = fig
    return out

