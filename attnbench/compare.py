"""Compare two runs cell by cell: time and memory ratios B/A with a verdict that respects noise.

Cells match on method, params, shape, dtype, mode, level, batching and input (not seed). A time change
counts only when the two runs' interquartile ranges of the timing samples do not overlap (and, with
``--threshold``, when it is larger than that); otherwise the verdict is "same". Memory is measured
without repeats, so it is "same" within ``--mem-tolerance``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench.report import CELL_KEYS, _fmt, escape_md, md_table, row_keys, time_cost, varying
from attnbench.store import iter_rows, load_results, read_meta

SHOWN = ["n", "level", "batch", "heads", "head_dim", "dtype", "mode", "causal", "batching"]


def load_run(run_dir) -> pd.DataFrame:
    """``load_results`` with each row's list of timing samples kept (``time_samples_ms``)."""
    df = load_results(run_dir)
    samples = {r.get("cell_id"): r.get("time_samples_ms") for r in iter_rows(Path(run_dir))}
    if "cell_id" in df:
        df["time_samples_ms"] = [samples.get(c) for c in df["cell_id"]]
    return df


def _spread(row: pd.Series) -> tuple[float, float]:
    """(q1, q3) of the row's timing samples, per sequence in capacity mode."""
    t, med = row["_t"], row.get("time_ms")
    scale = t / med if med and med == med and t == t else 1.0
    samples = row.get("time_samples_ms")
    if isinstance(samples, (list, tuple)) and len(samples) >= 2:
        q1, q3 = np.percentile(np.asarray(samples, dtype=float) * scale, [25, 75])
        return float(q1), float(q3)
    iqr = row.get("time_ms_iqr")
    half = 0.5 * iqr * scale if iqr is not None and iqr == iqr else 0.0
    return t - half, t + half


def _prepare(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    df = df.assign(_t=time_cost(df), _key=row_keys(df, keys))
    q = df.apply(_spread, axis=1, result_type="expand") if not df.empty else \
        pd.DataFrame(columns=[0, 1])
    df = df.assign(_q1=q[0] if not df.empty else [], _q3=q[1] if not df.empty else [])
    agg = {"_t": "median", "_q1": "min", "_q3": "max", "peak_mem_mib": "median", "status": "first"}
    agg = {c: f for c, f in agg.items() if c in df}
    ok = df[df["status"] == "ok"]
    out = ok.groupby("_key").agg(agg)
    bad = df[~df["_key"].isin(out.index)].groupby("_key").agg({"status": "first"})
    first = df.drop_duplicates("_key").set_index("_key")[[c for c in [*keys, "label"] if c in df]]
    return pd.concat([out, bad]).join(first)


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, threshold: float = 0.0,
                   mem_tolerance: float = 0.02) -> tuple[pd.DataFrame, dict]:
    """One row per cell present in both runs, and counts of cells only in A or only in B."""
    params = sorted(c for c in set(a.columns) & set(b.columns) if c.startswith("param."))
    inputs = sorted(c for c in set(a.columns) & set(b.columns) if c.startswith("input."))
    keys = ["method", *params, *[c for c in CELL_KEYS if c != "seed" and c in a and c in b], *inputs]
    pa, pb = _prepare(a, keys), _prepare(b, keys)
    both = pa.join(pb[["_t", "_q1", "_q3", "peak_mem_mib", "status"]
                      if "peak_mem_mib" in pb else ["_t", "_q1", "_q3", "status"]],
                   how="inner", suffixes=("_a", "_b"))
    rows = []
    for _, r in both.iterrows():
        label = r.get("label")
        rec = {"method": label if isinstance(label, str) else r["method"],
               **{c: r[c] for c in SHOWN if c in r}}
        sa, sb = r["status_a"], r["status_b"]
        rec.update(status_a=sa, status_b=sb, time_a=r["_t_a"], time_b=r["_t_b"],
                   mem_a=r.get("peak_mem_mib_a", math.nan), mem_b=r.get("peak_mem_mib_b", math.nan))
        if sa == "ok" and sb == "ok":
            ratio = rec["time_b"] / rec["time_a"] if rec["time_a"] else math.nan
            overlap = r["_q1_b"] <= r["_q3_a"] and r["_q1_a"] <= r["_q3_b"]
            rec["time_ratio"] = ratio
            rec["verdict"] = "same" if overlap or abs(ratio - 1) <= threshold or ratio != ratio \
                else "slower" if ratio > 1 else "faster"
            mr = rec["mem_b"] / rec["mem_a"] if rec["mem_a"] and rec["mem_a"] == rec["mem_a"] \
                else math.nan
            rec["mem_ratio"] = mr
            rec["mem_verdict"] = "same" if mr != mr or abs(mr - 1) <= mem_tolerance else \
                "more" if mr > 1 else "less"
        else:
            rec.update(time_ratio=math.nan, mem_ratio=math.nan, mem_verdict="",
                       verdict="broke" if sa == "ok" else "fixed" if sb == "ok" else f"both {sb}")
        rows.append(rec)
    extra = {"only_a": len(pa.index.difference(pb.index)), "only_b": len(pb.index.difference(pa.index))}
    cmp = pd.DataFrame(rows)
    if not cmp.empty:
        cmp = cmp.sort_values([c for c in ("method", "level", "dtype", "mode", "batch", "n") if c in cmp],
                              kind="stable").reset_index(drop=True)
    return cmp, extra


def summary_line(cmp: pd.DataFrame, extra: dict) -> str:
    v = cmp["verdict"].value_counts().to_dict() if not cmp.empty else {}
    mv = cmp["mem_verdict"].value_counts().to_dict() if not cmp.empty else {}
    ratios = cmp["time_ratio"].dropna() if not cmp.empty else pd.Series(dtype=float)
    geo = f"{math.exp(np.log(ratios).mean()):.3g}×" if len(ratios) else "—"
    parts = [f"{len(cmp)} matching cells: time {v.get('slower', 0)} slower, {v.get('faster', 0)} "
             f"faster, {v.get('same', 0)} same (geomean B/A {geo})",
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
    return [heads.get(c, c) for c in cols], [[_fmt(r[c]) for c in cols] for _, r in cmp.iterrows()]


def cmd_compare(args, console) -> int:
    from rich.table import Table
    from rich.text import Text

    from attnbench.cli import BadInput

    metas = [read_meta(args.run_a), read_meta(args.run_b)]
    cmp, extra = compare_frames(load_run(args.run_a), load_run(args.run_b),
                                threshold=args.threshold / 100, mem_tolerance=args.mem_tolerance / 100)
    if cmp.empty:
        raise BadInput(f"compare: no cell of {args.run_a} matches one of {args.run_b}")
    shown = cmp if not args.changed else cmp[~cmp["verdict"].isin(["same"])
                                              | cmp["mem_verdict"].isin(["more", "less"])]
    heads, rows = _rows(shown)
    devs = [(m.get("provenance") or {}).get("device_name") or m.get("device_type") for m in metas]
    title = f"B/A: A = {args.run_a} ({devs[0]}), B = {args.run_b} ({devs[1]})"
    if args.format == "md":
        console.out("\n".join([escape_md(title), "", *md_table(heads, rows)]), highlight=False)
    elif args.format == "csv":
        console.out(cmp.to_csv(index=False), highlight=False, end="")
    else:
        table = Table(title=Text(title), header_style="bold")
        for h in heads:
            table.add_column(h, justify="left" if h in ("method", "verdict", "memory", "dtype", "mode")
                             else "right")
        colour = {"slower": "red", "broke": "red", "faster": "green", "fixed": "green"}
        for r in rows:
            table.add_row(*map(Text, r), style=colour.get(r[heads.index("verdict")]))
        console.print(table)
    if args.csv:
        Path(args.csv).write_text(cmp.to_csv(index=False), encoding="utf-8")
    if devs[0] != devs[1]:
        console.print(Text(f"note: the runs are on different devices ({devs[0]} vs {devs[1]})",
                           style="yellow"))
    console.print(Text(summary_line(cmp, extra)))
    if args.fail_if_slower is not None:
        limit = 1 + args.fail_if_slower / 100
        slow = cmp[(cmp["verdict"] == "slower") & (cmp["time_ratio"] > limit)]
        if not slow.empty:
            console.print(Text(f"FAIL: {len(slow)} cells slower by more than {args.fail_if_slower:g}% "
                               f"(worst {slow['time_ratio'].max():.3g}× for "
                               f"{slow.loc[slow['time_ratio'].idxmax(), 'method']})", style="bold red"))
            return 1
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("compare", help="per-cell time and memory ratios between two runs (B/A)")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--fail-if-slower", type=float, metavar="PCT", help="exit 1 when a cell is "
                   "slower beyond its noise by more than PCT percent (for CI)")
    p.add_argument("--threshold", type=float, default=0.0, metavar="PCT", help="also call changes "
                   "smaller than PCT percent 'same' (default 0: only the IQR decides)")
    p.add_argument("--mem-tolerance", type=float, default=2.0, metavar="PCT",
                   help="memory within PCT percent is 'same' (default 2)")
    p.add_argument("--changed", action="store_true", help="list only cells whose verdict is not same")
    p.add_argument("--format", choices=("table", "md", "csv"), default="table")
    p.add_argument("--csv", metavar="FILE", help="also write every matched cell to FILE")
    p.set_defaults(func=cmd_compare)
