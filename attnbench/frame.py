"""DataFrame helpers every report, plot and comparison shares: which columns identify a cell, how rows
are matched to the baseline's, speed-up with its noise range, and how numbers and text are formatted
and escaped for terminal, Markdown and LaTeX tables. Reads nothing from disk and prints nothing.

Noise: each speed-up carries a range from the timing samples the rows keep, ``speedup_lo`` = baseline
q1 / method q3 to ``speedup_hi`` = baseline q3 / method q1 (quartiles; ``time_ms_iqr`` around the
median where a row has no samples). A range spanning more than ``NOISY_SPREAD`` (1.5×) is marked "~".
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from attnbench.errors import BadInput

CELL_KEYS = ["level", "n", "batch", "heads", "head_dim", "dtype", "mode", "causal", "batching",
             "seed", "layers", "ffn_dim", "total_tokens"]


NOISY_IQR = 0.10    # a cell whose IQR exceeds this share of its median is noisy (as the runner flags it)


NOISY_SPREAD = 1.5  # a ratio whose quartile range (hi / lo) spans more than this factor is marked "~"


FAILED_RUN = ("error", "crashed", "timeout")  # a time such a row carries is not a measurement to show


def cell_key_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in CELL_KEYS if c in df.columns] + sorted(
        c for c in df.columns if c.startswith(("input.", "train.")))


def family_columns(df: pd.DataFrame) -> list[str]:
    """Cell keys but n (and seed): what a line along n shares. In a constant-token sweep (every row
    has ``total_tokens``) the batch follows n, so it is left out."""
    keys = [c for c in cell_key_columns(df) if c not in ("n", "seed")]
    if "total_tokens" in df and len(df) and df["total_tokens"].notna().all() and "batch" in keys:
        keys.remove("batch")
    return keys


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


def fmt_value(v, digits=3) -> str:
    """A number as tables show it: 3 significant digits, scientific outside [1e-3, 1e5), — for none."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return str(v)


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
