"""Compare two runs cell by cell: time and memory ratios B/A with a verdict that respects noise.

Cells match on method, params, shape, dtype, mode, level, batching and input (not seed). A time change
counts only when the two runs' timing samples do not overlap at all: every sample of B lies above
every sample of A ("slower") or below ("faster"); when the full ranges [min, max] overlap, or the
change is within ``--threshold``, the verdict is "same". The interquartile ranges used before were
too narrow: with the 3-5 samples a quick cell keeps, quartiles interpolate between the middle two or
three samples, and a sample range that overlaps is no evidence of a change. Where a row kept fewer
than two samples, its median ± one IQR stands in for the range.

Cells timed differently in the two runs (CUDA-graph replays in one, eager calls in the other) are
compared on their eager times, which graph rows keep beside the replays (``timing`` says "eager").

The samples of one cell are taken within a fraction of a second, so they cannot show a machine whose
load changes between (or during) the runs: two runs of the same code on a loaded host still differ
beyond their samples in many cells. The summary measures that from the runs themselves: the scatter
of the per-cell log ratios (three robust standard deviations, from the median absolute deviation
over the matched cells, at least 8) is the run-to-run noise floor; ``--threshold auto`` calls
everything within it "same". It assumes most cells did not change; when most did, give a fixed
percentage instead. Memory is measured without repeats, so it is "same" within ``--mem-tolerance``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from attnbench.frame import CELL_KEYS, fmt_value, row_keys, time_cost, varying
from attnbench.store import load_results

SHOWN = ["n", "level", "batch", "heads", "head_dim", "dtype", "mode", "causal", "batching"]
MIN_CELLS_FOR_FLOOR = 8


def load_run(run_dir) -> pd.DataFrame:
    """``load_results``: one row per cell, each with its list of timing samples (``time_samples_ms``)."""
    return load_results(run_dir)


def _range(samples, t: float, scale: float, iqr) -> tuple[float, float]:
    if isinstance(samples, (list, tuple)):
        a = np.asarray([x for x in samples if isinstance(x, (int, float))], dtype=float)
        a = a[np.isfinite(a)] * scale
        if len(a) >= 2:
            return float(a.min()), float(a.max())
    spread = iqr * scale if iqr is not None and iqr == iqr else 0.0
    return t - spread, t + spread


def _spread(row: pd.Series) -> tuple[float, float, float, float, float]:
    """(lo, hi) of the row's timing samples, per sequence in capacity mode, then the eager time and
    its (lo, hi) (the same as the first for an eager row)."""
    t, med = row["_t"], row.get("time_ms")
    scale = t / med if med and med == med and t == t else 1.0
    lo, hi = _range(row.get("time_samples_ms"), t, scale, row.get("time_ms_iqr"))
    eager = row.get("eager_time_ms")
    if row.get("timing_mode") == "cuda-graph" and eager is not None and eager == eager:
        elo, ehi = _range(row.get("eager_samples_ms"), eager * scale, scale,
                          row.get("eager_time_ms_iqr"))
        return lo, hi, eager * scale, elo, ehi
    return lo, hi, t, lo, hi


def _prepare(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    df = df.assign(_t=time_cost(df), _key=row_keys(df, keys),
                   status=df["status"].fillna("unknown") if "status" in df else "unknown")
    if "timing_mode" not in df:
        df = df.assign(timing_mode="eager")
    q = df.apply(_spread, axis=1, result_type="expand") if not df.empty else \
        pd.DataFrame(columns=range(5))
    df = df.assign(**{c: q[i] if not df.empty else [] for i, c in
                      enumerate(("_lo", "_hi", "_te", "_elo", "_ehi"))})
    agg = {"_t": "median", "_lo": "min", "_hi": "max", "_te": "median", "_elo": "min", "_ehi": "max",
           "peak_mem_mib": "median", "status": "first", "timing_mode": "first"}
    agg = {c: f for c, f in agg.items() if c in df}
    ok = df[df["status"] == "ok"]
    out = ok.groupby("_key").agg(agg)
    bad = df[~df["_key"].isin(out.index)].groupby("_key").agg({"status": "first"})
    first = df.drop_duplicates("_key").set_index("_key")[[c for c in [*keys, "label"] if c in df]]
    return pd.concat([out, bad]).join(first)


def noise_floor(ratios) -> float:
    """The run-to-run noise of a comparison as a fraction (0.25: ±25%): three robust standard
    deviations (1.4826 × the median absolute deviation) of the per-cell log ratios B/A around their
    median; nan with fewer than ``MIN_CELLS_FOR_FLOOR`` ratios."""
    r = np.asarray([x for x in ratios if x == x and x > 0], dtype=float)
    if len(r) < MIN_CELLS_FOR_FLOOR:
        return math.nan
    logs = np.log(r)
    return float(math.exp(3 * 1.4826 * np.median(np.abs(logs - np.median(logs)))) - 1)


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, threshold: float | str = 0.0,
                   mem_tolerance: float = 0.02) -> tuple[pd.DataFrame, dict]:
    """One row per cell present in both runs (the comparison's ``noise_floor`` in
    ``attrs["noise_floor"]``), and counts of cells only in A or only in B. ``threshold``: a fraction
    (0.05: changes within 5% are "same"), or "auto" for the noise floor."""
    params = sorted(c for c in set(a.columns) & set(b.columns) if c.startswith("param."))
    inputs = sorted(c for c in set(a.columns) & set(b.columns) if c.startswith("input."))
    keys = ["method", *params, *[c for c in CELL_KEYS if c != "seed" and c in a and c in b], *inputs]
    pa, pb = _prepare(a, keys), _prepare(b, keys)
    both = pa.join(pb[[c for c in ("_t", "_lo", "_hi", "_te", "_elo", "_ehi", "peak_mem_mib", "status",
                                   "timing_mode") if c in pb]], how="inner", suffixes=("_a", "_b"))
    rows = []
    for _, r in both.iterrows():
        label = r.get("label")
        rec = {"method": label if isinstance(label, str) else r["method"],
               **{c: r[c] for c in SHOWN if c in r}}
        sa, sb = r["status_a"], r["status_b"]
        rec.update(status_a=sa, status_b=sb, time_a=r["_t_a"], time_b=r["_t_b"],
                   mem_a=r.get("peak_mem_mib_a", math.nan), mem_b=r.get("peak_mem_mib_b", math.nan))
        if sa == "ok" and sb == "ok":
            t = "" if r["timing_mode_a"] == r["timing_mode_b"] else "_e"
            rec["timing"] = r["timing_mode_a"] if not t else "eager"
            if t:  # graph replays in one run, eager calls in the other: compare the eager times
                rec.update(time_a=r["_te_a"], time_b=r["_te_b"])
            ratio = rec["time_b"] / rec["time_a"] if rec["time_a"] else math.nan
            lo_a, hi_a, lo_b, hi_b = (r[f"{x}_{y}"] for y in "ab" for x in
                                      (("_elo", "_ehi") if t else ("_lo", "_hi")))
            rec["_overlap"] = lo_b <= hi_a and lo_a <= hi_b
            rec["time_ratio"] = ratio
            mr = rec["mem_b"] / rec["mem_a"] if rec["mem_a"] and rec["mem_a"] == rec["mem_a"] \
                else math.nan
            rec["mem_ratio"] = mr
            rec["mem_verdict"] = "same" if mr != mr or abs(mr - 1) <= mem_tolerance else \
                "more" if mr > 1 else "less"
        else:
            rec.update(time_ratio=math.nan, mem_ratio=math.nan, mem_verdict="", timing="",
                       verdict="broke" if sa == "ok" else "fixed" if sb == "ok" else f"both {sb}")
        rows.append(rec)
    cmp = pd.DataFrame(rows)
    floor = noise_floor(cmp["time_ratio"]) if not cmp.empty else math.nan
    extra = {"only_a": len(pa.index.difference(pb.index)), "only_b": len(pb.index.difference(pa.index))}
    if cmp.empty:
        return cmp, extra
    band = math.log1p(floor) if threshold == "auto" and floor == floor else None
    limit = 0.0 if threshold == "auto" else float(threshold)

    def verdict(r):
        ratio = r["time_ratio"]
        if not (r["status_a"] == "ok" and r["status_b"] == "ok"):
            return r["verdict"]
        if ratio != ratio or r["_overlap"]:
            return "same"
        within = abs(math.log(ratio)) <= band if band is not None and ratio > 0 else \
            abs(ratio - 1) <= limit
        return "same" if within else "slower" if ratio > 1 else "faster"

    if "verdict" not in cmp:
        cmp["verdict"] = None
    cmp["verdict"] = cmp.apply(verdict, axis=1)
    cmp = cmp.drop(columns="_overlap", errors="ignore")
    cmp = cmp.sort_values([c for c in ("method", "level", "dtype", "mode", "batch", "n") if c in cmp],
                          kind="stable").reset_index(drop=True)
    cmp.attrs["noise_floor"] = floor
    return cmp, extra


def summary_line(cmp: pd.DataFrame, extra: dict) -> str:
    v = cmp["verdict"].value_counts().to_dict() if not cmp.empty else {}
    mv = cmp["mem_verdict"].value_counts().to_dict() if not cmp.empty else {}
    ratios = cmp["time_ratio"].dropna() if not cmp.empty else pd.Series(dtype=float)
    geo = f"{math.exp(np.log(ratios).mean()):.3g}×" if len(ratios) else "—"
    floor = cmp.attrs.get("noise_floor", math.nan)
    scatter = f", per-cell scatter ±{floor:.0%}" if floor == floor else ""
    parts = [f"{len(cmp)} matching cells: time {v.get('slower', 0)} slower, {v.get('faster', 0)} "
             f"faster, {v.get('same', 0)} same (geomean B/A {geo}{scatter})",
             f"memory {mv.get('more', 0)} more, {mv.get('less', 0)} less",
             f"{v.get('broke', 0)} broke, {v.get('fixed', 0)} fixed",
             f"{extra['only_a']} only in A, {extra['only_b']} only in B"]
    return "; ".join(parts)


def _rows(cmp: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    shown = ["method", *varying(cmp, SHOWN), "time_a", "time_b", "time_ratio", "verdict", "mem_a",
             "mem_b", "mem_ratio", "mem_verdict"]
    heads = {"time_a": "A ms", "time_b": "B ms", "time_ratio": "time B/A", "mem_a": "A MiB",
             "mem_b": "B MiB", "mem_ratio": "mem B/A", "mem_verdict": "memory"}
    cols = [c for c in shown if c in cmp]
    return [heads.get(c, c) for c in cols], [[fmt_value(r[c]) for c in cols] for _, r in cmp.iterrows()]
