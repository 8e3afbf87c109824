"""Reports read saved rows and never measure: the terminal output (:mod:`attnbench.terminal` lays it
out), Markdown, CSV, LaTeX and one self-contained HTML file (:mod:`attnbench.html`), with the crossover
table (:mod:`attnbench.crossover`); paper-style grids are :mod:`attnbench.grid`.

The summary puts each cell beside the exact baseline on the same shape, dtype, mode and input:
``speedup`` = baseline time / method time (per sequence in capacity mode), ``mem_ratio`` = method peak
memory / baseline peak memory (in capacity mode baseline max batch / method max batch), with the noise
range of :mod:`attnbench.frame`. Every string that goes into Markdown, LaTeX or HTML passes through that
format's escape function.
"""
from __future__ import annotations

from pathlib import Path

from attnbench.accounting import mixed_devices_note
from attnbench.errors import BadInput
from attnbench.frame import (add_baseline_columns, check_baseline, escape_latex, escape_md,  # noqa: F401
                             latex_table, md_table, with_baseline)
from attnbench.store import META, RunDirError, check_out_dir
from attnbench.tables import (NOISE_NOTE, TABLES, constants_line, crossover_rows, parse_columns,
                              summary, table_rows)
from attnbench.terminal import Fitted, display_label, render
from attnbench.train_report import quality_markdown, render_quality

FORMATS = ("table", "md", "csv", "latex", "html")


def fitted_table(title: str, headers: list[str], rows: list[list[str]]):
    """A renderable table whose numbers are never folded: split into blocks of columns (each with
    the first column) where the console is too narrow for it (``terminal.Fitted``)."""
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

    if table not in TABLES:
        raise BadInput(f"table {table!r}: use one of {', '.join(TABLES)}")
    columns = parse_columns(columns)
    if columns and table != "full":
        raise BadInput("--columns picks the full table's columns: use it with --table full")
    console = console or Console()
    df, meta = summary(run_dir, baseline)
    render(console, df, meta, table, columns)
    if table != "none":
        render_quality(console, df, meta["report_baseline"])


def to_markdown(run_dir: str | Path, baseline: str | None = None) -> str:
    df, meta = summary(run_dir, baseline)
    lines = [f"# {escape_md(meta.get('suite', ''))}", "", escape_md(constants_line(df, meta)), ""]
    if (mixed := mixed_devices_note(meta)) is not None:  # scale-out: rows from several GPU models
        lines += [f"**{escape_md(mixed)}**", ""]
    lines += [*md_table(*table_rows(df)), "", escape_md(NOISE_NOTE),
              *quality_markdown(df, meta["report_baseline"])]
    heads, rows = crossover_rows(df, meta["report_baseline"])
    if rows:
        lines += ["", f"## Crossover against {escape_md(meta['report_baseline'])}", "",
                  "Smallest n at which each approximate method beats the baseline, interpolated "
                  "between measured n (log scale) and never extrapolated.", "", *md_table(heads, rows)]
    from attnbench.decode_report import sections

    for title, note, heads, rows in sections(df, meta["report_baseline"]):
        lines += ["", f"## {escape_md(title)}", "", escape_md(note) + ".", "", *md_table(heads, rows)]
    return "\n".join(lines) + "\n"


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
        hint = "; write them elsewhere with --out DIR" if out_dir is None else ""
        raise BadInput(f"could not write the report files to {out}: {exc.strerror or exc}{hint}") \
            from None
    return written




def find_runs(root: str | Path) -> list[Path]:
    """Every run directory (one holding ``meta.json``) under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such directory")
    return sorted(p.parent for p in root.rglob(META))
