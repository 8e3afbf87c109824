"""Reports read saved rows and never measure: a terminal table, Markdown, CSV, LaTeX and one
self-contained HTML file, with the crossover table (``crossover.py``) and paper-style grids (``grid.py``).

The summary puts each cell beside the exact baseline on the same shape, dtype, mode and input:
``speedup`` = baseline time / method time (per sequence in capacity mode), ``mem_ratio`` = method peak
memory / baseline peak memory (in capacity mode baseline max batch / method max batch). Every string
that goes into Markdown, LaTeX or HTML passes through that format's escape function.

Noise: each speed-up carries a range from the timing samples the rows keep, ``speedup_lo`` = baseline
q1 / method q3 to ``speedup_hi`` = baseline q3 / method q1 (quartiles; ``time_ms_iqr`` around the
median where a row has no samples). Tables mark a speed-up whose range spans more than
``NOISY_SPREAD`` (1.5×) with "~": on a loaded host such a ratio moves between runs. The terminal
layout (summary grids, tables that fit the console) is ``terminal.py``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench.store import META, RunDirError, load_results, read_meta

CELL_KEYS = ["level", "n", "batch", "heads", "head_dim", "dtype", "mode", "causal", "batching",
             "seed", "layers", "ffn_dim"]
FORMATS = ("table", "md", "csv", "latex", "html")
TABLES = ("summary", "full", "none")
NOISY_IQR = 0.10    # a cell whose IQR exceeds this share of its median is noisy (as the runner flags it)
NOISY_SPREAD = 1.5  # a ratio whose quartile range (hi / lo) spans more than this factor is marked "~"
FAILED_RUN = ("error", "crashed", "timeout")  # a time such a row carries is not a measurement to show


def cell_key_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in CELL_KEYS if c in df.columns] + sorted(
        c for c in df.columns if c.startswith(("input.", "train.")))


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


def time_quartiles(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(q1, q3) of each row's timing samples, in the units of ``time_cost`` (per sequence in capacity
    mode); a row without two samples gets its median ± half its ``time_ms_iqr``, or nan."""
    t = time_cost(df)
    med = pd.to_numeric(df["time_ms"], errors="coerce") if "time_ms" in df else t
    scale = (t / med).where(med > 0).fillna(1.0)
    half = 0.5 * pd.to_numeric(df["time_ms_iqr"], errors="coerce") * scale if "time_ms_iqr" in df \
        else pd.Series(math.nan, index=df.index, dtype=float)
    q1, q3 = (t - half).astype(float), (t + half).astype(float)
    if "time_samples_ms" in df:
        for i, samples in df["time_samples_ms"].items():
            if isinstance(samples, (list, tuple)):
                a = np.asarray([x for x in samples if isinstance(x, (int, float))], dtype=float)
                a = a[np.isfinite(a)]
                if len(a) >= 2:
                    q1[i], q3[i] = np.percentile(a, [25, 75]) * scale[i]
    return q1, q3


def noisy_range(lo, hi) -> bool:
    """True when a ratio's range spans more than ``NOISY_SPREAD`` (unknown ranges are not marked)."""
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        return False
    return math.isfinite(lo) and math.isfinite(hi) and lo > 0 and hi / lo > NOISY_SPREAD


def add_baseline_columns(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """A copy of ``df`` with ``speedup`` (baseline time / this row's, per sequence in capacity mode),
    its range ``speedup_lo`` (baseline q1 / this q3) to ``speedup_hi`` (baseline q3 / this q1), and
    ``mem_ratio`` (peak memory / the baseline's; in capacity mode baseline max batch / this one),
    against the baseline's ok row on the same cell. Rows that failed with ``error``, ``crashed`` or
    ``timeout`` get no speed-up, whatever time they carry."""
    df = df.copy()
    for c in ("speedup", "speedup_lo", "speedup_hi", "mem_ratio"):
        df[c] = math.nan
    if df.empty or "method" not in df or "status" not in df:
        return df
    keys = cell_key_columns(df)
    base = df[baseline_mask(df, baseline) & (df["status"] == "ok")]
    if base.empty:
        return df
    k = row_keys(df, keys)
    base_key = k[base.index]
    t = time_cost(df)
    q1, q3 = time_quartiles(df)
    peak = pd.to_numeric(df.get("peak_mem_mib", pd.Series(math.nan, index=df.index)), errors="coerce")
    mb = pd.to_numeric(df.get("max_batch", pd.Series(math.nan, index=df.index)), errors="coerce")
    cap = df["batching"] == "capacity" if "batching" in df else pd.Series(False, index=df.index)
    first = ~base_key.duplicated()

    def of(values: pd.Series) -> pd.Series:
        return k.map(dict(zip(base_key[first], values[base.index][first]))).astype(float)

    measured = ~df["status"].isin(FAILED_RUN)
    df["speedup"] = (of(t) / t).where(measured)
    df["speedup_lo"] = (of(q1) / q3).where(measured)
    df["speedup_hi"] = (of(q3) / q1).where(measured)
    df["mem_ratio"] = (peak / of(peak)).where(~cap, of(mb) / mb)
    return df


with_baseline = add_baseline_columns  # the name the report modules have used


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


KEY_HEADERS = ("method", "level", "n", "B", "H", "D", "dtype", "mode", "causal")
TIMED = ("time_ms", "time_ms_iqr", "speedup", "tokens_per_s")  # blank on error/crashed/timeout rows


def parse_columns(text: str | list[str] | None) -> list[str] | None:
    """``--columns time_ms,speedup`` -> the full table's columns by their headers (or data names,
    e.g. ``peak_mem_mib`` for ``peak_MiB``); an unknown one is bad input naming the allowed ones."""
    if text is None:
        return None
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    by_name = {c: h for c, h in COLUMNS} | {h: h for _, h in COLUMNS}
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        from attnbench.cli import BadInput

        what = f"unknown column {unknown[0]!r}" if unknown else "name at least one column"
        raise BadInput(f"--columns: {what}; allowed: " + ", ".join(h for _, h in COLUMNS))
    return list(dict.fromkeys(by_name[n] for n in names))


def _speedup_text(r) -> str:
    text = _fmt(r["speedup"])
    return text + "~" if noisy_range(r.get("speedup_lo"), r.get("speedup_hi")) else text


def table_rows(df: pd.DataFrame, columns: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the full table. Without ``columns`` a column that is constant
    across the run is left out (the title says it once); with them, those columns (headers as in
    ``COLUMNS``) after ``method`` and ``n``. A speed-up with a wide range ends in "~"."""
    if "label" in df:
        df = df.assign(method=df["label"])
    cols = [(c, h) for c, h in COLUMNS if c in df.columns]
    if columns is None:
        shown = [(c, h) for c, h in cols if c in ("method", "n", "status", "time_ms") or
                 df[c].astype(str).nunique() > 1 or c in ("rel_err", "peak_mem_mib", "speedup")]
    else:
        want = list(dict.fromkeys(["method", "n", *columns]))
        shown = sorted([(c, h) for c, h in cols if h in want], key=lambda ch: want.index(ch[1]))
    failed = df["status"].isin(FAILED_RUN) if "status" in df else pd.Series(False, index=df.index)
    rows = []
    for i, r in df.iterrows():
        row = []
        for c, _ in shown:
            if c in TIMED and failed[i]:
                row.append("—")
            elif c == "speedup":
                row.append(_speedup_text(r))
            elif c == "reason":
                row.append(str(r[c] if r[c] == r[c] and r[c] else "")[:90])
            else:
                row.append(_fmt(r[c]))
        rows.append(row)
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

    ct = crossover_table(df, baseline)
    speed = [_fmt(v) + ("~" if noisy_range(lo, hi) else "") for v, lo, hi in
             zip(ct["speedup_at_max_n"], ct["speedup_at_max_n_lo"], ct["speedup_at_max_n_hi"])]
    ct = ct.drop(columns=["time_crossover_n", "mem_crossover_n", "speedup_at_max_n_lo",
                          "speedup_at_max_n_hi"]).assign(speedup_at_max_n=speed)
    heads = {"time_crossover": "beats in time from n", "mem_crossover": "beats in memory from n",
             "measured_n": "measured n", "speedup_at_max_n": "speedup at max n"}
    return [heads.get(c, c) for c in ct.columns], [[_fmt(v) for v in r] for r in ct.itertuples(False)]


NOISE_NOTE = (f"~ the speed-up's range from the two cells' timing quartiles (baseline q1 / method q3 to "
              f"baseline q3 / method q1) spans more than {NOISY_SPREAD}×; ? a crossing whose "
              "bracketing cells are noisy (see its note)")


def _rich_table(title: str, headers: list[str], rows: list[list[str]]):
    """A renderable table whose numbers are never folded: split into blocks of columns (each with
    the first column) where the console is too narrow for it (``terminal.Fitted``)."""
    from attnbench.terminal import Fitted, display_label

    styles = None
    if "status" in headers:
        si = headers.index("status")
        styles = [None if r[si] == "ok" else "yellow" for r in rows]
    if headers and headers[0] == "method":
        rows = [[display_label(r[0]), *r[1:]] for r in rows]
    return Fitted(headers, rows, 1, styles, title)


def render_terminal(run_dir: str | Path, console=None, baseline: str | None = None,
                    table: str = "summary", columns: list[str] | str | None = None) -> None:
    """Print a run's results at the console's width (``COLUMNS`` in pipes and logs, else 80 there).

    ``table="summary"`` (the default after a run): per setting of the varying axes (mode, dtype,
    level, ...) a method × n grid of time and speed-up, each error at the largest n that has one, the
    cells that did not run collapsed to one line per (method, status, reason), and the crossover
    table. ``"full"``: every row (``columns`` picks the columns, by header), unsupported rows
    collapsed the same way. ``"none"``: only the cell counts. Numbers are never split across lines:
    tables too wide for the console are split into blocks of columns."""
    from rich.console import Console

    from attnbench.terminal import render

    if table not in TABLES:
        from attnbench.cli import BadInput

        raise BadInput(f"table {table!r}: use one of {', '.join(TABLES)}")
    columns = parse_columns(columns)
    if columns and table != "full":
        from attnbench.cli import BadInput

        raise BadInput("--columns picks the full table's columns: use it with --table full")
    from attnbench.train_report import render_quality

    console = console or Console()
    df, meta = summary(run_dir, baseline)
    render(console, df, meta, table, columns)
    if table != "none":
        render_quality(console, df, meta["report_baseline"])


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
    from attnbench.train_report import quality_markdown

    lines = [f"# {escape_md(meta.get('suite', ''))}", "", escape_md(constants_line(df, meta)), "",
             *md_table(*table_rows(df)), "", escape_md(NOISE_NOTE),
             *quality_markdown(df, meta["report_baseline"])]
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
    beside the results, or in ``out_dir``. A directory that can't be written is bad input that
    suggests ``--out DIR``."""
    out = Path(out_dir or run_dir)
    check_out_dir(out_dir)
    texts = []
    for fmt in formats:
        if fmt == "html":
            from attnbench.html import render_html

            texts.append((render_html(run_dir, baseline=baseline), "report.html"))
        else:
            render = {"md": to_markdown, "csv": to_csv, "latex": to_latex}[fmt]
            texts.append((render(run_dir, baseline), {"md": "report.md", "csv": "report.csv",
                                                      "latex": "report.tex"}[fmt]))
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for text, name in texts:
            (out / name).write_text(text, encoding="utf-8")
            written.append(out / name)
    except OSError as exc:
        from attnbench.cli import BadInput

        hint = "; write them elsewhere with --out DIR" if out_dir is None else ""
        raise BadInput(f"could not write the report files to {out}: {exc.strerror or exc}{hint}") \
            from None
    return written


def check_out_dir(out_dir) -> None:
    """``--out`` must be a directory or a path that can become one."""
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        from attnbench.cli import BadInput

        raise BadInput(f"--out {out_dir}: is a file; give a directory (it is created if missing)")


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
                console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        return 0
    if not args.run_dir:
        raise BadInput("report: name a RUN_DIR (or --all DIR)")
    check_out_dir(args.out)
    if (args.table or args.columns) and (args.grid or args.pairs or args.format not in (None, "table")):
        raise BadInput("--table and --columns shape the terminal table; report.md, .csv and .html "
                       "keep every row and column")
    table = args.table or ("full" if args.columns else "summary")
    if args.grid in ("accuracy", "perplexity", "quality_vs_exact"):  # train rows: train_report
        from attnbench.train_report import cmd_quality_grid

        return cmd_quality_grid(args, console)
    if args.grid:
        from attnbench.grid import cmd_grid

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
    import argparse

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
    p.add_argument("--grid", choices=("speedup", "memory", "accuracy", "perplexity",
                                      "quality_vs_exact"),
                   help="paper-style grid: speedup or memory (with a heatmap); for train rows the "
                        "held-out accuracy, perplexity or quality_vs_exact, mean ± std over seeds")
    p.add_argument("--rows", default="n", help="grid rows: a column or param (default n)")
    p.add_argument("--cols", default=None, help="grid columns: a param (default: each method's "
                   "budget knob, e.g. k)")
    p.add_argument("--method", help="grid: only this method (name or label)")
    p.add_argument("--pairs", metavar="OURS=PEER,...", help="our time over a peer's, cell by cell, "
                   "eager and CUDA-graph (e.g. linformer=peer_linformer,lsh=peer_reformer)")
    p.set_defaults(func=cmd_report)
