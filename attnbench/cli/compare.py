"""``attnbench compare``."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from attnbench.compare import SHOWN, _rows, compare_frames, load_run, summary_line
from attnbench.errors import BadInput
from attnbench.frame import escape_md, md_table
from attnbench.store import read_meta

def percent(name: str, text, auto: bool = False):
    """A ``--name PCT`` value: a finite number >= 0 (or "auto" where allowed), else bad input."""
    if text is None:
        return None
    if auto and str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        allowed = "a percentage >= 0" + (" or auto" if auto else "")
        raise BadInput(f"--{name} {text}: give {allowed}")
    return value


def _check_run(df: pd.DataFrame, run) -> None:
    if df.empty:
        raise BadInput(f"compare: {run} has no result rows yet (results.jsonl is empty or missing)")
    missing = [c for c in ("method", "status") if c not in df]
    if missing:
        raise BadInput(f"compare: the rows of {run} have no {' or '.join(missing)!r} column; compare "
                       "reads results.jsonl as attnbench run writes it")


def cmd_compare(args, console) -> int:
    from rich.text import Text

    from attnbench.terminal import display_label, fit_tables

    fail_if_slower = percent("fail-if-slower", args.fail_if_slower)
    threshold = percent("threshold", args.threshold, auto=True)
    mem_tolerance = percent("mem-tolerance", args.mem_tolerance)
    metas = [read_meta(args.run_a), read_meta(args.run_b)]
    runs = [load_run(args.run_a), load_run(args.run_b)]
    for df, run in zip(runs, (args.run_a, args.run_b)):
        _check_run(df, run)
    cmp, extra = compare_frames(*runs, threshold=threshold if threshold == "auto" else threshold / 100,
                                mem_tolerance=mem_tolerance / 100)
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
        colour = {"slower": "red", "broke": "red", "faster": "green", "fixed": "green"}
        styles = [colour.get(r[heads.index("verdict")]) for r in rows]
        console.print(Text(title, style="bold"))
        keys = 1 + sum(h in SHOWN for h in heads)
        rows = [[display_label(r[0]), *r[1:]] for r in rows]
        for table in fit_tables(heads, rows, console.width, keys, styles):
            console.print(table)
    if args.csv:
        try:
            Path(args.csv).write_text(cmp.to_csv(index=False), encoding="utf-8")
        except OSError as exc:
            raise BadInput(f"--csv {args.csv}: cannot write: {exc.strerror or exc}") from None
    if devs[0] != devs[1]:
        console.print(Text(f"note: the runs are on different devices ({devs[0]} vs {devs[1]})",
                           style="yellow"))
    console.print(Text(summary_line(cmp, extra)))
    floor = cmp.attrs.get("noise_floor", math.nan)
    if threshold != "auto" and floor == floor and floor > 0.1 and \
            cmp["verdict"].isin(["slower", "faster"]).any():
        console.print(Text(f"note: the per-cell ratios scatter ±{floor:.0%} (3 robust σ over "
                           f"{cmp['time_ratio'].notna().sum()} cells), more than the samples of one "
                           "cell show: the machine's load changed between or during the runs. "
                           "--threshold auto calls changes within that scatter same; --rounds or "
                           "an idle machine narrows it.", style="yellow"))
    if fail_if_slower is not None:
        limit = 1 + fail_if_slower / 100
        slow = cmp[(cmp["verdict"] == "slower") & (cmp["time_ratio"] > limit)]
        if not slow.empty:
            console.print(Text(f"FAIL: {len(slow)} cells slower by more than {fail_if_slower:g}% "
                               f"(worst {slow['time_ratio'].max():.3g}× for "
                               f"{slow.loc[slow['time_ratio'].idxmax(), 'method']})", style="bold red"))
            return 1
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("compare", help="per-cell time and memory ratios between two runs (B/A)")
    p.add_argument("run_a", help="the reference run directory (A)")
    p.add_argument("run_b", help="the run directory compared with it (B); ratios are B/A")
    p.add_argument("--fail-if-slower", metavar="PCT", help="exit 1 when a cell is slower beyond "
                   "its noise by more than PCT percent (for CI; a number >= 0)")
    p.add_argument("--threshold", default="0", metavar="PCT|auto", help="also call changes within "
                   "PCT percent 'same' (default 0: only the samples decide); auto: within the "
                   "run-to-run scatter of the per-cell ratios")
    p.add_argument("--mem-tolerance", default="2", metavar="PCT",
                   help="memory within PCT percent is 'same' (default 2)")
    p.add_argument("--changed", action="store_true", help="list only cells whose verdict is not same")
    p.add_argument("--format", choices=("table", "md", "csv"), default="table",
                   help="table (fits the console), md or csv")
    p.add_argument("--csv", metavar="FILE", help="also write every matched cell to FILE")
    p.set_defaults(func=cmd_compare)
