"""Reports read saved rows and never measure: a terminal table, Markdown, CSV, LaTeX and one
self-contained HTML file, with the crossover table (``crossover.py``) and paper-style grids (``grid.py``).

The summary puts each cell beside the exact baseline on the same shape, dtype, mode and input:
``speedup`` = baseline time / method time (per sequence in capacity mode), ``mem_ratio`` = method peak
memory / baseline peak memory (in capacity mode baseline max batch / method max batch). Every string
that goes into Markdown, LaTeX or HTML passes through that format's escape function.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from attnbench.store import META, RunDirError, load_results, read_meta

CELL_KEYS = ["level", "n", "batch", "heads", "head_dim", "dtype", "mode", "causal", "batching",
             "seed", "layers", "ffn_dim"]
FORMATS = ("table", "md", "csv", "latex", "html")


def cell_key_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in CELL_KEYS if c in df.columns] + sorted(
        c for c in df.columns if c.startswith("input."))


def row_keys(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    """One string per row joining ``cols`` (missing values included), for matching cells."""
    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    return pd.Series(["|".join(map(str, t)) for t in df[cols].itertuples(index=False, name=None)],
                     index=df.index, dtype=object)


def varying(df: pd.DataFrame, cols) -> list[str]:
    """The columns of ``cols`` that take more than one value in ``df``."""
    return [c for c in cols if c in df.columns and df[c].astype(str).nunique() > 1]


def time_cost(df: pd.DataFrame) -> pd.Series:
    """Milliseconds per call, or per sequence for capacity-mode rows (their batch differs by method)."""
    t = pd.to_numeric(df["time_ms"], errors="coerce") if "time_ms" in df else \
        pd.Series(math.nan, index=df.index, dtype=float)
    if "batching" in df and "time_per_seq_ms" in df:
        t = t.where(df["batching"] != "capacity", pd.to_numeric(df["time_per_seq_ms"], errors="coerce"))
    return t


def baseline_mask(df: pd.DataFrame, name: str) -> pd.Series:
    """Rows of the baseline ``name``: its label if some row carries it (``sdpa(backend=math)``), else
    every row of that method name."""
    if "label" in df and (df["label"] == name).any():
        return df["label"] == name
    if "method" in df:
        return df["method"] == name
    return pd.Series(False, index=df.index)


def check_baseline(df: pd.DataFrame, name: str) -> None:
    if not df.empty and not baseline_mask(df, name).any():
        from attnbench.cli import BadInput

        names = sorted(set(df.get("label", df.get("method", pd.Series(dtype=str))).astype(str)))
        raise BadInput(f"baseline {name!r} has no rows in this run; methods here: {', '.join(names)}")


def with_baseline(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Add ``speedup`` and ``mem_ratio`` against the baseline's ok row on the same cell."""
    df = df.copy()
    if df.empty or "method" not in df:
        return df
    keys = cell_key_columns(df)
    df["speedup"] = math.nan
    df["mem_ratio"] = math.nan
    base = df[baseline_mask(df, baseline) & (df["status"] == "ok")]
    if base.empty:
        return df
    k = row_keys(df, keys)
    base_key = k[base.index]
    t = time_cost(df)
    peak = pd.to_numeric(df.get("peak_mem_mib", pd.Series(math.nan, index=df.index)), errors="coerce")
    mb = pd.to_numeric(df.get("max_batch", pd.Series(math.nan, index=df.index)), errors="coerce")
    cap = df["batching"] == "capacity" if "batching" in df else pd.Series(False, index=df.index)
    first = ~base_key.duplicated()
    time_of = dict(zip(base_key[first], t[base.index][first]))
    peak_of = dict(zip(base_key[first], peak[base.index][first]))
    mb_of = dict(zip(base_key[first], mb[base.index][first]))
    b_t = k.map(time_of).astype(float)
    df["speedup"] = b_t / t
    df["mem_ratio"] = (peak / k.map(peak_of).astype(float)).where(~cap, k.map(mb_of).astype(float) / mb)
    return df


def fmt_n(n: float) -> str:
    """Sequence lengths as people say them: 512, 4k, 1.5k, 12.3k."""
    if n is None or n != n:
        return "—"
    if n < 1000:
        return f"{n:.0f}"
    k = n / 1024
    return f"{k:.0f}k" if abs(k - round(k)) < 1e-9 else (f"{k:.1f}k" if k < 100 else f"{k:.0f}k")


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return str(v)


COLUMNS = [
    ("method", "method"), ("level", "level"), ("n", "n"), ("batch", "B"), ("heads", "H"),
    ("head_dim", "D"), ("dtype", "dtype"), ("mode", "mode"), ("causal", "causal"),
    ("time_ms", "time_ms"), ("time_ms_iqr", "±iqr"), ("speedup", "speedup"),
    ("peak_mem_mib", "peak_MiB"), ("extra_mem_mib", "extra_MiB"), ("mem_ratio", "mem×"),
    ("rel_err", "rel_err"), ("baseline_rel_err", "base_err"), ("tokens_per_s", "tok/s"),
    ("status", "status"), ("reason", "reason"),
]


def summary(run_dir: str | Path, baseline: str | None = None) -> tuple[pd.DataFrame, dict]:
    meta = read_meta(run_dir)
    df = load_results(run_dir)
    if baseline:
        check_baseline(df, baseline)  # one asked for by name must exist; the suite's may be absent
    baseline = baseline or meta.get("baseline", "sdpa")
    return with_baseline(df, baseline), {**meta, "report_baseline": baseline}


def table_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    if "label" in df:
        df = df.assign(method=df["label"])
    cols = [(c, h) for c, h in COLUMNS if c in df.columns]
    # a column that is constant across the run is said once in the title, not in every row
    shown = [(c, h) for c, h in cols if c in ("method", "n", "status", "time_ms") or
             df[c].astype(str).nunique() > 1 or c in ("rel_err", "peak_mem_mib", "speedup")]
    rows = [[_fmt(r[c]) if c != "reason" else str(r[c] if r[c] == r[c] and r[c] else "")[:90]
             for c, _ in shown] for _, r in df.iterrows()]
    return [h for _, h in shown], rows


def constants_line(df: pd.DataFrame, meta: dict) -> str:
    parts = []
    for c in ("level", "batch", "heads", "head_dim", "dtype", "mode", "causal"):
        if c in df.columns and df[c].astype(str).nunique() == 1:
            parts.append(f"{c}={df[c].iloc[0]}")
    prov = meta.get("provenance", {})
    return (f"suite {meta.get('suite')} on {prov.get('device_name', meta.get('device_type'))} · "
            f"baseline {meta.get('report_baseline', meta.get('baseline'))} · " + " ".join(parts))


def crossover_rows(df: pd.DataFrame, baseline: str) -> tuple[list[str], list[list[str]]]:
    from attnbench.crossover import crossover_table

    ct = crossover_table(df, baseline).drop(columns=["time_crossover_n", "mem_crossover_n"])
    heads = {"time_crossover": "beats in time from n", "mem_crossover": "beats in memory from n",
             "measured_n": "measured n", "speedup_at_max_n": "speedup at max n"}
    return [heads.get(c, c) for c in ct.columns], [[_fmt(v) for v in r] for r in ct.itertuples(False)]


def _rich_table(title: str, headers: list[str], rows: list[list[str]]):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), header_style="bold")
    for h in headers:
        table.add_column(h, justify="left" if h in ("method", "status", "reason", "dtype", "mode",
                                                     "note") else "right", overflow="fold")
    for r in rows:
        bad = "status" in headers and r[headers.index("status")] != "ok"
        table.add_row(*map(Text, r), style="yellow" if bad else None)
    return table


def render_terminal(run_dir: str | Path, console=None, baseline: str | None = None) -> None:
    from rich.console import Console
    from rich.text import Text

    df, meta = summary(run_dir, baseline)
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # logs and pipes: don't fold the table into slivers
    console.print(_rich_table(constants_line(df, meta), *table_rows(df)))
    counts = df["status"].value_counts().to_dict() if "status" in df else {}
    console.print(Text("cells: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))))
    heads, rows = crossover_rows(df, meta["report_baseline"])
    if rows:
        console.print(_rich_table(f"crossover against {meta['report_baseline']} (interpolated "
                                  "between measured n, never extrapolated)", heads, rows))


def escape_md(text) -> str:
    """Text for a Markdown table cell: no markup, no raw HTML, no column breaks."""
    out = str(text).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;") \
        .replace(">", "&gt;").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    for ch in "*`[]":
        out = out.replace(ch, "\\" + ch)
    # an underscore inside a word (time_ms) is literal in CommonMark; one at a word edge may be emphasis
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", out)


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(escape_md(h) for h in headers) + " |", "|" + "---|" * len(headers)] +
            ["| " + " | ".join(escape_md(x) for x in r) + " |" for r in rows])


def to_markdown(run_dir: str | Path, baseline: str | None = None) -> str:
    df, meta = summary(run_dir, baseline)
    lines = [f"# {escape_md(meta.get('suite', ''))}", "", escape_md(constants_line(df, meta)), "",
             *md_table(*table_rows(df))]
    heads, rows = crossover_rows(df, meta["report_baseline"])
    if rows:
        lines += ["", f"## Crossover against {escape_md(meta['report_baseline'])}", "",
                  "Smallest n at which each approximate method beats the baseline, interpolated "
                  "between measured n (log scale) and never extrapolated.", "", *md_table(heads, rows)]
    return "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "<": r"\textless{}", ">": r"\textgreater{}", "—": "---", "–": "--", "±": r"\textpm{}",
          "×": r"\texttimes{}", "·": r"\textperiodcentered{}", "\n": " ", "\r": " "}


def escape_latex(text) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def latex_table(caption: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    align = "".join("l" if h in ("method", "status", "reason", "dtype", "mode", "note") else "r"
                    for h in headers)
    return [r"\begin{table}[ht]", r"\centering\small", f"\\caption{{{escape_latex(caption)}}}",
            f"\\begin{{tabular}}{{{align}}}", r"\toprule",
            " & ".join(escape_latex(h) for h in headers) + r" \\", r"\midrule",
            *(" & ".join(escape_latex(x) for x in r) + r" \\" for r in rows),
            r"\bottomrule", r"\end{tabular}", r"\end{table}"]


def to_latex(run_dir: str | Path, baseline: str | None = None) -> str:
    """Table environments for a paper (``\\usepackage{booktabs}``)."""
    df, meta = summary(run_dir, baseline)
    lines = ["% attnbench report; needs \\usepackage{booktabs}",
             *latex_table(constants_line(df, meta), *table_rows(df))]
    heads, rows = crossover_rows(df, meta["report_baseline"])
    if rows:
        lines += ["", *latex_table(f"Smallest n at which each method beats "
                                   f"{meta['report_baseline']} (interpolated, not extrapolated)",
                                   heads, rows)]
    return "\n".join(lines) + "\n"


def to_csv(run_dir: str | Path, baseline: str | None = None) -> str:
    df, _ = summary(run_dir, baseline)
    return df.drop(columns=[c for c in ("time_samples_ms", "eager_samples_ms") if c in df.columns]).to_csv(index=False)


def write_reports(run_dir: str | Path, out_dir: str | Path | None = None,
                  baseline: str | None = None, formats=("md", "csv")) -> list[Path]:
    """Write ``report.md``, ``report.csv`` (every column), ``report.tex`` and/or ``report.html``
    beside the results, or in ``out_dir``."""
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        if fmt == "html":
            from attnbench.html import render_html

            text, name = render_html(run_dir, baseline=baseline), "report.html"
        else:
            render = {"md": to_markdown, "csv": to_csv, "latex": to_latex}[fmt]
            text, name = render(run_dir, baseline), {"md": "report.md", "csv": "report.csv",
                                                     "latex": "report.tex"}[fmt]
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory (one holding ``meta.json``) under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such directory")
    return sorted(p.parent for p in root.rglob(META))


def cmd_report(args, console) -> int:
    from attnbench.cli import BadInput

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
                console.print(f"wrote {path}", highlight=False)
        return 0
    if not args.run_dir:
        raise BadInput("report: name a RUN_DIR (or --all DIR)")
    if args.grid:
        from attnbench.grid import cmd_grid

        return cmd_grid(args, console)
    if args.pairs:
        from attnbench.pairs import render_pairs

        for path in render_pairs(args.run_dir, args.pairs, console, args.out):
            console.print(f"wrote {path}", highlight=False)
        return 0
    if args.format is None:
        render_terminal(args.run_dir, console, args.baseline)
        for path in write_reports(args.run_dir, args.out, args.baseline):
            console.print(f"wrote {path}", highlight=False)
        return 0
    if args.format == "table":
        render_terminal(args.run_dir, console, args.baseline)
        return 0
    (path,) = write_reports(args.run_dir, args.out, args.baseline, (args.format,))
    if args.format != "html":
        console.out(path.read_text(encoding="utf-8"), end="", highlight=False)
    console.print(f"wrote {path}", highlight=False, style="dim")
    return 0


EXAMPLES = """examples:
  attnbench report results/quick/RUN                       # table; writes report.md, report.csv
  attnbench report results/quick/RUN --format html         # one self-contained report.html
  attnbench report results/quick/RUN --format latex --baseline naive
  attnbench report results/linformer_table3/RUN --grid speedup --baseline naive --rows n --cols k
  attnbench report --all results/ --format html            # regenerate every committed report
  attnbench report results/peers/RUN --pairs linformer=peer_linformer,performer=peer_performer
"""


def add_cli(sub) -> None:
    import argparse

    p = sub.add_parser("report", help="tables, crossovers and grids from a finished run (never "
                       "measures)", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--out", help="where to write the report files (default: the run dir)")
    p.add_argument("--format", choices=FORMATS, help="one format (default: the terminal table "
                   "plus report.md and report.csv)")
    p.add_argument("--baseline", help="exact method (name or label) to compare against "
                   "(default: the suite's baseline)")
    p.add_argument("--all", metavar="DIR", help="regenerate the reports of every run under DIR")
    p.add_argument("--grid", choices=("speedup", "memory"), help="paper-style grid (with a heatmap)")
    p.add_argument("--rows", default="n", help="grid rows: a column or param (default n)")
    p.add_argument("--cols", default=None, help="grid columns: a param (default: each method's "
                   "budget knob, e.g. k)")
    p.add_argument("--method", help="grid: only this method (name or label)")
    p.add_argument("--pairs", metavar="OURS=PEER,...", help="our time over a peer's, cell by cell, "
                   "eager and CUDA-graph (e.g. linformer=peer_linformer,lsh=peer_reformer)")
    p.set_defaults(func=cmd_report)
