"""Reports of ``train`` rows (read from results.jsonl, never measured): quality against exact attention,
mean ± std over seeds, and paper-style quality grids (``report --grid perplexity`` / ``accuracy`` /
``quality_vs_exact``: rows × a param, e.g. n × k as in Linformer's Figure 3).

``quality_vs_exact`` is recomputed here from all rows of the run: the method's final metric over exact
attention's (the run's baseline) on the same cell key — task, settings, n and seed — oriented so 1 is
as good and below 1 worse (accuracy / exact accuracy; exact perplexity / perplexity). For ListOps the
published LRA accuracy of the method's family stands beside ours (``attnbench/data/lra_listops.csv``),
for orientation only: LRA trains far longer at n = 2000.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench.frame import (baseline_mask, cell_key_columns, escape_md, fmt_n, md_table, row_keys,
                             varying)

QUALITY_GRIDS = ("accuracy", "perplexity", "quality_vs_exact")
METRICS = ("accuracy", "perplexity")
PUBLISHED = Path(__file__).parent / "data" / "lra_listops.csv"
HEADERS = ["task", "n", "method", "metric", "mean ± std", "seeds", "vs exact", "best", "chance",
           "held-out", "vs chance", "step ms", "tok/s", "peak MiB", "attn params", "diverged", "published"]


def train_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of train cells (level "train")."""
    if df.empty or "level" not in df:
        return df.iloc[0:0]
    return df[df["level"] == "train"]


def published_listops() -> dict[str, tuple[str, float]]:
    """method -> (model name, published ListOps accuracy in %)."""
    lines = [ln for ln in PUBLISHED.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    return {r["method"]: (r["model"], float(r["accuracy"])) for r in csv.DictReader(lines)}


def final_metric(df: pd.DataFrame) -> pd.Series:
    """Each train row's final metric (its accuracy or perplexity column, by its ``metric``)."""
    out = pd.Series(math.nan, index=df.index, dtype=float)
    for m in METRICS:
        if m in df:
            pick = df.get("metric", pd.Series(None, index=df.index)) == m
            out = out.where(~pick, pd.to_numeric(df[m], errors="coerce"))
    return out


def add_quality(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """A copy of the train rows with ``_value`` (final metric) and ``quality_vs_exact`` recomputed
    against the baseline's row on the same cell key (same seed)."""
    df = train_rows(df).copy()
    if df.empty:
        return df
    df["_value"] = final_metric(df)
    keys = row_keys(df, cell_key_columns(df))
    base = df[baseline_mask(df, baseline) & (df["status"] == "ok")]
    exact = dict(zip(keys[base.index], base["_value"]))
    ref = keys.map(exact).astype(float)
    higher = df.get("metric", pd.Series("", index=df.index)) == "accuracy"
    ratio = (df["_value"] / ref).where(higher, ref / df["_value"])
    df["quality_vs_exact"] = ratio.where((df["_value"] > 0) & (ref > 0))
    return df


def held_out_items(rows: pd.DataFrame) -> float:
    """How many predictions one evaluation of these rows scores (their median ``eval_items``; for rows
    written before that column, the count their task plans from the settings; NaN if unknown)."""
    if "eval_items" in rows:
        known = pd.to_numeric(rows["eval_items"], errors="coerce").dropna()
        if not known.empty:
            return float(known.median())
    from attnbench.train.tasks import TASKS  # lazily: reading rows needs no task code otherwise

    counts = []
    for _, r in rows.iterrows():
        task = TASKS.get(str(r.get("task", r.get("train.task"))))
        settings = {k.removeprefix("train."): v for k, v in r.items() if str(k).startswith("train.")}
        try:
            counts.append(task[1].planned_eval_items(settings, int(r["batch"])) if task else None)
        except (KeyError, TypeError, ValueError):
            counts.append(None)
    counts = [c for c in counts if c]
    return float(np.median(counts)) if counts else math.nan


def versus_chance(metric: str, mean: float, chance: float, items: float, seeds: int) -> str:
    """Where a mean accuracy over ``seeds`` evaluations of ``items`` predictions each lies against
    chance: "≈ chance" within two standard errors of a model answering right with probability
    ``chance`` (binomial), "above" or "below" beyond them; "—" for other metrics or missing counts."""
    values = (mean, chance, items)
    if metric != "accuracy" or seeds < 1 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                    for v in values) or not 0 < chance < 1 or items < 1:
        return "—"
    se = math.sqrt(chance * (1 - chance) / (items * seeds))
    z = (mean - chance) / se
    return "above" if z >= 2 else "below" if z <= -2 else "≈ chance"


def _setting_columns(df: pd.DataFrame) -> list[str]:
    """train.* settings (other than the task) and axes that vary in the run: part of a group's key."""
    cols = [c for c in df.columns if c.startswith("train.") and c != "train.task"]
    cols += ["causal", "dtype", "layers", "heads", "head_dim", "ffn_dim", "batch"]
    return [c for c in varying(df, cols)]


def _pm(values: pd.Series, digits: int = 3) -> str:
    v = values.dropna()
    if v.empty:
        return "—"
    if len(v) == 1:
        return f"{v.iloc[0]:.{digits}g}"
    return f"{v.mean():.{digits}g} ± {v.std(ddof=1):.2g}"


def _num(v, fmt: str = "{:.3g}") -> str:
    return "—" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else fmt.format(v)


def quality_table(df: pd.DataFrame, baseline: str) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows and the varying settings of the quality table: one row per task, setting, n and
    method label, the metric's mean ± std over seeds (ok rows), diverged seeds counted apart."""
    df = add_quality(df, baseline)
    if df.empty:
        return HEADERS, [], []
    settings = _setting_columns(df)
    label = df["label"] if "label" in df else df["method"]
    df = df.assign(_label=label, _task=df.get("task", df.get("train.task")))
    published = published_listops()
    rows = []
    group_cols = ["_task", *settings, "n", "_label"]
    for key, g in df.groupby(group_cols, sort=True, dropna=False):
        key = dict(zip(group_cols, key))
        ok = g[g["status"] == "ok"]
        metric = str(g["metric"].dropna().iloc[0]) if "metric" in g and g["metric"].notna().any() else "—"
        diverged = int((g["status"] == "diverged").sum())
        other = sorted(set(g["status"]) - {"ok", "diverged"})
        pub = published.get(str(g["method"].iloc[0])) if key["_task"] == "listops" else None
        setting = " ".join(f"{c.removeprefix('train.')}={key[c]}" for c in settings)
        num = lambda col: pd.to_numeric(ok[col], errors="coerce") if col in ok else pd.Series(dtype=float)  # noqa: E731
        items = held_out_items(ok) if len(ok) else math.nan
        chance = num("chance").mean()
        mean = ok["_value"].dropna().mean() if len(ok) else math.nan
        rows.append([str(key["_task"]) + (f" ({setting})" if setting else ""), fmt_n(key["n"]),
                     str(key["_label"]), metric, _pm(ok["_value"]) if len(ok) else
                     ("/".join(other) if other else "—"), str(len(ok)),
                     _pm(num("quality_vs_exact")), _pm(num("eval_best")),
                     _num(chance), _num(items, "{:.0f}"),
                     versus_chance(metric, mean, chance, items, int(ok["_value"].notna().sum())),
                     _num(num("time_ms").median()),
                     _num(num("tokens_per_s").median(), "{:.3g}"),
                     _num(num("peak_mem_mib").median(), "{:.0f}"),
                     _num(num("n_attn_params").median(), "{:.0f}"),
                     str(diverged) if diverged else "",
                     f"{pub[1]:.1f}% ({pub[0]})" if pub else ""])
    if not any(r[-1] for r in rows):
        heads = HEADERS[:-1]
        rows = [r[:-1] for r in rows]
    else:
        heads = HEADERS
    return heads, rows, settings


QUALITY_NOTE = ("mean ± std over seeds (sample std) of the final held-out metric; vs exact: the metric "
                "relative to exact attention's with the same seed, 1 = as good, < 1 worse; held-out: "
                "predictions one evaluation scores (an accuracy's sample size); vs chance: the mean "
                "against a model right with probability = chance over that many predictions and seeds "
                "(≈ chance: within two binomial standard errors); step ms: median time of one "
                "training step")
PUBLISHED_NOTE = ("; published: LRA ListOps accuracy at n = 2000 after 5000 steps (for orientation: "
                  "our budgets are far smaller)")


def quality_markdown(df: pd.DataFrame, baseline: str) -> list[str]:
    """The report.md section for a run with train rows (empty list otherwise)."""
    heads, rows, _ = quality_table(df, baseline)
    if not rows:
        return []
    note = QUALITY_NOTE + (PUBLISHED_NOTE if "published" in heads else "")
    return ["", f"## Quality after training (against {escape_md(baseline)})", "",
            *md_table(heads, rows), "", escape_md(note)]


def render_quality(console, df: pd.DataFrame, baseline: str) -> None:
    """The quality table at the console's width (nothing for a run without train rows)."""
    from attnbench.terminal import fit_tables, print_tables

    heads, rows, _ = quality_table(df, baseline)
    if rows:
        print_tables(console, fit_tables(heads, rows, console.width, 3),
                     f"quality after training, against {baseline}: mean ± std over seeds")


# --- quality grids: rows × a param (n × k), mean ± std over seeds -----------------------------------

def quality_grids(df: pd.DataFrame, kind: str, baseline: str, rows: str = "n",
                  cols: str | None = None, method: str | None = None) -> list[dict]:
    """One grid per task, non-baseline method (other params fixed) and setting: ``values[(r, c)] =
    (mean, std, seeds)`` of ``kind`` over seeds; the baseline's value at each row goes in column
    "exact" (its quality_vs_exact is 1 by definition)."""
    df = add_quality(df, baseline)
    df = df[df["status"] == "ok"]
    if df.empty:
        return []
    value_col = "quality_vs_exact" if kind == "quality_vs_exact" else "_value"
    df = df[(df.get("metric") == kind) | (kind == "quality_vs_exact")]
    df = df.assign(_task=df.get("task", df.get("train.task")))
    base = df[baseline_mask(df, baseline)]
    others = df[~baseline_mask(df, baseline)]
    if method:
        others = others[(others["method"] == method) | (others.get("label") == method)]
    settings = _setting_columns(df)
    out = []
    for name, frame in others.groupby("method", sort=False):
        col = cols or next(iter(frame["budget"].dropna()), None) if "budget" in frame else cols
        ccol = f"param.{col}" if col and f"param.{col}" in frame else col if col in frame else None
        rcol = f"param.{rows}" if f"param.{rows}" in frame else rows if rows in frame else None
        if ccol is None or rcol is None:
            continue
        pcols = [c for c in frame.columns if c.startswith("param.") and c not in (ccol, rcol)
                 and frame[c].astype(str).nunique() > 1]
        for key, g in frame.groupby(["_task", *settings, *pcols], sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            fixed = dict(zip(["task", *settings, *pcols], key))
            series = name + ("(" + ",".join(f"{c[6:]}={fixed[c]}" for c in pcols) + ")" if pcols
                             else "")
            grid = {"kind": kind, "method": series, "baseline": baseline, "rows": rows, "cols": col,
                    "facet": {k.removeprefix("train."): v for k, v in fixed.items() if k not in pcols},
                    "values": {}}
            for (r, c), cell in g.groupby([rcol, ccol], sort=True):
                grid["values"][(_plain(r), _plain(c))] = _mean_std(cell[value_col])
            b = base[(base["_task"] == fixed["task"])]
            for s in settings:
                b = b[b[s].astype(str) == str(fixed[s])]
            if rows in b:
                for r, cell in b.groupby(rows, sort=True):
                    grid["values"][(_plain(r), "exact")] = _mean_std(cell[value_col])
            out.append(grid)
    return out


def _plain(v):
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return (math.nan, math.nan, 0)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))


def grid_table(grid: dict) -> tuple[str, list[str], list[list[str]]]:
    """Title, headers and rows of one quality grid (cells "mean ± std (seeds)")."""
    rows = sorted({r for r, _ in grid["values"]}, key=_order)
    cols = sorted({c for _, c in grid["values"] if c != "exact"}, key=_order)
    has_exact = any(c == "exact" for _, c in grid["values"])
    heads = [f"{grid['rows']} \\ {grid['cols']}"] + [f"{grid['cols']}={c}" for c in cols] + \
        ([f"exact ({grid['baseline']})"] if has_exact else [])

    def text(r, c):
        v = grid["values"].get((r, c))
        if v is None or v[2] == 0:
            return "—"
        mean, std, k = v
        return f"{mean:.3g}" + (f" ± {std:.2g}" if std == std else "") + f" ({k})"

    body = [[fmt_n(r) if grid["rows"] == "n" and isinstance(r, int) else str(r)] +
            [text(r, c) for c in cols] + ([text(r, "exact")] if has_exact else []) for r in rows]
    fixed = " ".join(f"{k}={v}" for k, v in grid["facet"].items())
    title = f"{grid['method']}: {grid['kind']} (mean ± std over seeds)" + (f" · {fixed}" if fixed else "")
    return title, heads, body


def _order(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
