"""Reports read saved rows and never measure: a terminal table, Markdown and CSV.

The summary puts each cell beside the suite's exact baseline on the same shape, dtype, mode and input:
``speedup`` = baseline time / method time, ``mem_ratio`` = method peak memory / baseline peak memory.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from attnbench.store import load_results, read_meta

CELL_KEYS = ["level", "n", "batch", "heads", "head_dim", "dtype", "mode", "causal", "batching",
             "seed", "layers", "ffn_dim"]


def cell_key_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in CELL_KEYS if c in df.columns] + sorted(
        c for c in df.columns if c.startswith("input."))


def with_baseline(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Add ``speedup`` and ``mem_ratio`` against the baseline's ok row on the same cell."""
    df = df.copy()
    if df.empty or "method" not in df:
        return df
    keys = cell_key_columns(df)
    base = df[(df["method"] == baseline) & (df["status"] == "ok")]
    if base.empty:
        df["speedup"] = math.nan
        df["mem_ratio"] = math.nan
        return df
    key = lambda frame: frame[keys].astype(str).agg("|".join, axis=1)  # noqa: E731
    base = base.assign(_key=key(base)).drop_duplicates("_key")
    time_of = dict(zip(base["_key"], base.get("time_ms", math.nan)))
    mem_of = dict(zip(base["_key"], base.get("peak_mem_mib", math.nan)))
    k = key(df)
    df["speedup"] = [time_of.get(x, math.nan) / t if t and t == t else math.nan
                     for x, t in zip(k, df.get("time_ms", [math.nan] * len(df)))]
    df["mem_ratio"] = [m / mem_of.get(x, math.nan) if mem_of.get(x) else math.nan
                       for x, m in zip(k, df.get("peak_mem_mib", [math.nan] * len(df)))]
    return df


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


def summary(run_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    meta = read_meta(run_dir)
    df = load_results(run_dir)
    df = with_baseline(df, meta.get("baseline", "sdpa"))
    if "label" in df:
        df["method"] = df["label"]
    return df, meta


def table_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    cols = [(c, h) for c, h in COLUMNS if c in df.columns]
    # a column that is constant across the run is said once in the title, not in every row
    shown = [(c, h) for c, h in cols if c in ("method", "n", "status", "time_ms") or
             df[c].astype(str).nunique() > 1 or c in ("rel_err", "peak_mem_mib", "speedup")]
    rows = [[_fmt(r[c]) if c != "reason" else str(r[c] or "")[:90] for c, _ in shown]
            for _, r in df.iterrows()]
    return [h for _, h in shown], rows


def constants_line(df: pd.DataFrame, meta: dict) -> str:
    parts = []
    for c in ("level", "batch", "heads", "head_dim", "dtype", "mode", "causal"):
        if c in df.columns and df[c].astype(str).nunique() == 1:
            parts.append(f"{c}={df[c].iloc[0]}")
    prov = meta.get("provenance", {})
    return (f"suite {meta.get('suite')} on {prov.get('device_name', meta.get('device_type'))} · "
            f"baseline {meta.get('baseline')} · " + " ".join(parts))


def render_terminal(run_dir: str | Path, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    df, meta = summary(run_dir)
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # logs and pipes: don't fold the table into slivers
    headers, rows = table_rows(df)
    table = Table(title=Text(constants_line(df, meta)), show_lines=False, header_style="bold")
    for h in headers:
        table.add_column(h, justify="left" if h in ("method", "status", "reason", "dtype", "mode")
                         else "right", overflow="fold")
    for r in rows:
        style = None if r[headers.index("status")] == "ok" else "yellow"
        table.add_row(*map(Text, r), style=style)
    console.print(table)
    counts = df["status"].value_counts().to_dict() if "status" in df else {}
    console.print(Text("cells: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))))


def escape_md(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;") \
        .replace(">", "&gt;").replace("\n", " ")


def to_markdown(run_dir: str | Path) -> str:
    df, meta = summary(run_dir)
    headers, rows = table_rows(df)
    lines = [f"# {escape_md(meta.get('suite', ''))}", "", escape_md(constants_line(df, meta)), "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape_md(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_reports(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``report.md`` and ``report.csv`` (every column) beside the results, or in ``out_dir``."""
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    df, _ = summary(run_dir)
    md, csv = out / "report.md", out / "report.csv"
    md.write_text(to_markdown(run_dir), encoding="utf-8")
    df.drop(columns=[c for c in ("time_samples_ms",) if c in df.columns]).to_csv(csv, index=False)
    return [md, csv]


def cmd_report(args, console) -> int:
    render_terminal(args.run_dir, console)
    for path in write_reports(args.run_dir, args.out):
        console.print(f"wrote {path}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("report", help="tables from a finished run (never measures)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="where to write report.md / report.csv (default: the run dir)")
    p.set_defaults(func=cmd_report)
