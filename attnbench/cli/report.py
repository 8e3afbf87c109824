"""``attnbench report``: tables, grids and pair tables of a finished run, and the report files."""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from attnbench.errors import BadInput
from attnbench.frame import check_baseline, escape_md, md_table
from attnbench.grid import drawable, grid_figure, grids, to_csv, to_markdown, to_rows
from attnbench.plotstyle import save_figure
from attnbench.report import (check_out_dir, find_runs, fitted_table, render_terminal,
                              write_reports)
from attnbench.store import load_results, read_meta
from attnbench.tables import COLUMNS, TABLES
from attnbench.train_report import QUALITY_GRIDS, _order, grid_table, quality_grids

FORMATS = ("table", "md", "csv", "latex", "html")


def cmd_report(args, console) -> int:
    if args.all:
        if args.run_dir or args.grid:
            raise BadInput("report --all DIR takes no RUN_DIR and no --grid")
        formats = ("md", "csv") + (("html",) if args.format == "html" else ()) + \
            (("latex",) if args.format == "latex" else ())
        runs = find_runs(args.all)
        if not runs:
            raise BadInput(f"report --all: no run directories (meta.json) under {args.all}")
        for run in runs:
            for path in write_reports(run, None, args.baseline, formats):
                console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        return 0
    if not args.run_dir:
        raise BadInput("report: name a RUN_DIR (or --all DIR)")
    check_out_dir(args.out)
    if (args.table or args.columns) and (args.grid or args.pairs or args.format not in (None, "table")):
        raise BadInput("--table and --columns shape the terminal table; report.md, .csv and .html "
                       "keep every row and column")
    table = args.table or ("full" if args.columns else "summary")
    if args.grid in QUALITY_GRIDS:  # train rows: mean ± std over seeds (attnbench.train_report)
        return cmd_quality_grid(args, console)
    if args.grid:
        return cmd_grid(args, console)
    if args.pairs:
        from attnbench.pairs import render_pairs

        for path in render_pairs(args.run_dir, args.pairs, console, args.out):
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        return 0
    if args.format is None:
        render_terminal(args.run_dir, console, args.baseline, table, args.columns)
        for path in write_reports(args.run_dir, args.out, args.baseline):
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        return 0
    if args.format == "table":
        render_terminal(args.run_dir, console, args.baseline, table, args.columns)
        return 0
    (path,) = write_reports(args.run_dir, args.out, args.baseline, (args.format,))
    if args.format != "html":
        console.out(path.read_text(encoding="utf-8"), end="", highlight=False)
    console.print(f"wrote {path}", highlight=False, style="dim", soft_wrap=True)
    return 0


EXAMPLES = """examples:
  attnbench report results/quick/RUN                       # summary; writes report.md, report.csv
  attnbench report results/quick/RUN --table full --columns n,mode,time_ms,speedup,rel_err
  attnbench report results/quick/RUN --format html         # one self-contained report.html
  attnbench report results/quick/RUN --format latex --baseline naive
  attnbench report results/linformer_table3/RUN --grid speedup --baseline naive --rows n --cols k
  attnbench report --all results/ --format html            # regenerate every committed report
  attnbench report results/peers/RUN --pairs linformer=peer_linformer,performer=peer_performer
"""


def add_cli(sub) -> None:
    p = sub.add_parser("report", help="tables, crossovers and grids from a finished run (never "
                       "measures)", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a run directory (results/<suite>/<run-id>)")
    p.add_argument("--out", metavar="DIR", help="directory for the report files (default: the run "
                   "dir; created if missing)")
    p.add_argument("--table", choices=TABLES, help="terminal output: summary (per mode a method × n "
                   "grid of time and speed-up, errors, failures in one line each, crossovers; the "
                   "default), full (every row) or none (cell counts only); tables fit the console "
                   "width (COLUMNS)")
    p.add_argument("--columns", metavar="A,B,...", help="the full table's columns by header, e.g. "
                   "n,mode,time_ms,speedup,rel_err (method and n always; implies --table full); "
                   "allowed: " + ", ".join(h for _, h in COLUMNS).replace("%", "%%"))
    p.add_argument("--format", choices=FORMATS, help="one format (default: the terminal table "
                   "plus report.md and report.csv)")
    p.add_argument("--baseline", help="exact method (name or label) to compare against "
                   "(default: the suite's baseline)")
    p.add_argument("--all", metavar="DIR", help="regenerate the reports of every run under DIR")
    p.add_argument("--grid", choices=("speedup", "memory", *QUALITY_GRIDS),
                   help="paper-style grid: speedup or memory (with a heatmap); for train rows the "
                        "held-out accuracy, perplexity or quality_vs_exact, mean ± std over seeds")
    p.add_argument("--rows", default="n", help="grid rows: a column or param (default n)")
    p.add_argument("--cols", default=None, help="grid columns: a param (default: each method's "
                   "budget knob, e.g. k)")
    p.add_argument("--method", help="grid: only this method (name or label)")
    p.add_argument("--pairs", metavar="OURS=PEER,...", help="our time over a peer's, cell by cell, "
                   "eager and CUDA-graph (e.g. linformer=peer_linformer,lsh=peer_reformer)")
    p.set_defaults(func=cmd_report)


def cmd_grid(args, console) -> int:
    meta, df = read_meta(args.run_dir), load_results(args.run_dir)
    if args.baseline:
        check_baseline(df, args.baseline)
    baseline = args.baseline or meta.get("baseline", "sdpa")
    found = grids(df, meta, args.grid, baseline, args.rows, args.cols, args.method)
    if not found:
        raise BadInput(f"report --grid: no method in this run has a param {args.cols or '(budget)'} "
                       f"with rows {args.rows!r}" + (f" (method {args.method})" if args.method else ""))
    out = Path(args.out or args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    for g in found:
        stem = out / f"grid-{g.slug}"
        stem.with_suffix(".md").write_text(to_markdown(g), encoding="utf-8")
        stem.with_suffix(".csv").write_text(to_csv(g), encoding="utf-8")
        written = save_figure(grid_figure(g, meta, df), stem, ("png",)) if drawable(g) else []
        if args.format in (None, "table", "html", "latex"):
            console.print(fitted_table(g.title, *to_rows(g)))
        else:
            console.out(to_markdown(g) if args.format == "md" else to_csv(g), highlight=False)
        for p in [stem.with_suffix(".md"), stem.with_suffix(".csv"), *written]:
            console.print(f"wrote {p}", highlight=False, style="dim", soft_wrap=True)
    return 0


def cmd_quality_grid(args, console) -> int:
    """``report RUN --grid accuracy|perplexity|quality_vs_exact``: tables (terminal, .md, .csv)."""
    meta, df = read_meta(args.run_dir), load_results(args.run_dir)
    if args.baseline:
        check_baseline(df, args.baseline)
    baseline = args.baseline or meta.get("baseline", "sdpa")
    found = quality_grids(df, args.grid, baseline, args.rows, args.cols, args.method)
    if not found:
        raise BadInput(f"report --grid {args.grid}: no ok train rows with that metric and a param "
                       f"{args.cols or '(budget)'} with rows {args.rows!r} in this run")
    out = Path(args.out or args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    for g in found:
        title, heads, rows = grid_table(g)
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(
            ["grid", g["kind"], g["method"], *(f"{k}{v}" for k, v in g["facet"].items())]))[:120]
        md = "\n".join([f"### {escape_md(title)}", "", *md_table(heads, rows)]) + "\n"
        (out / f"{slug}.md").write_text(md, encoding="utf-8")
        with open(out / f"{slug}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["kind", "method", *g["facet"], g["rows"], g["cols"], "mean", "std", "seeds"])
            for (r, c), (mean, std, k) in sorted(g["values"].items(), key=lambda kv: (
                    _order(kv[0][0]), _order(kv[0][1]))):
                w.writerow([g["kind"], g["method"], *g["facet"].values(), r, c, f"{mean:.6g}",
                            "" if std != std else f"{std:.6g}", k])
        console.print(fitted_table(title, heads, rows))
        for p in (out / f"{slug}.md", out / f"{slug}.csv"):
            console.print(f"wrote {p}", highlight=False, style="dim", soft_wrap=True)
    return 0
