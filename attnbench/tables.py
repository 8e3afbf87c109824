"""A run's tables as headers and rows of strings, the same for every output (terminal, Markdown,
LaTeX, HTML): the full results table, the line of constants, the crossover table. ``summary`` loads a
run with the baseline's speed-up and memory ratio beside each row."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnbench.crossover import crossover_table
from attnbench.errors import BadInput
from attnbench.frame import (FAILED_RUN, NOISY_SPREAD, add_baseline_columns, check_baseline,
                             fmt_value, noisy_range)
from attnbench.store import load_results, read_meta

TABLES = ("summary", "full", "none")
COLUMNS = [
    ("method", "method"), ("level", "level"), ("n", "n"), ("batch", "B"), ("heads", "H"),
    ("head_dim", "D"), ("dtype", "dtype"), ("mode", "mode"), ("causal", "causal"),
    ("time_ms", "time_ms"), ("time_ms_iqr", "±iqr"), ("speedup", "speedup"),
    ("peak_mem_mib", "peak_MiB"), ("extra_mem_mib", "extra_MiB"), ("mem_ratio", "mem×"),
    ("rel_err", "rel_err"), ("baseline_rel_err", "base_err"), ("ref_rel_err", "ref_err"),
    ("grad_rel_err", "grad_err"), ("baseline_grad_rel_err", "base_grad_err"),
    ("tokens_per_s", "tok/s"), ("tflops_per_s", "TFLOP/s"), ("tb_per_s", "TB/s"),
    ("status", "status"), ("reason", "reason"),
]
KEY_HEADERS = ("method", "level", "n", "B", "H", "D", "dtype", "mode", "causal")
# blank on error/crashed/timeout rows
TIMED = ("time_ms", "time_ms_iqr", "speedup", "tokens_per_s", "tflops_per_s", "tb_per_s")


def summary(run_dir: str | Path, baseline: str | None = None) -> tuple[pd.DataFrame, dict]:
    meta = read_meta(run_dir)
    df = load_results(run_dir)
    if baseline:
        check_baseline(df, baseline)  # one asked for by name must exist; the suite's may be absent
    baseline = baseline or meta.get("baseline", "sdpa")
    return add_baseline_columns(df, baseline), {**meta, "report_baseline": baseline}


def parse_columns(text: str | list[str] | None) -> list[str] | None:
    """``--columns time_ms,speedup`` -> the full table's columns by their headers (or data names,
    e.g. ``peak_mem_mib`` for ``peak_MiB``); an unknown one is bad input naming the allowed ones."""
    if text is None:
        return None
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    by_name = {c: h for c, h in COLUMNS} | {h: h for _, h in COLUMNS}
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        what = f"unknown column {unknown[0]!r}" if unknown else "name at least one column"
        raise BadInput(f"--columns: {what}; allowed: " + ", ".join(h for _, h in COLUMNS))
    return list(dict.fromkeys(by_name[n] for n in names))


def speedup_text(r) -> str:
    text = fmt_value(r["speedup"])
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
                row.append(speedup_text(r))
            elif c == "reason":
                row.append(str(r[c] if r[c] == r[c] and r[c] else "")[:90])
            else:
                row.append(fmt_value(r[c]))
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
    ct = crossover_table(df, baseline)
    speed = [fmt_value(v) + ("~" if noisy_range(lo, hi) else "") for v, lo, hi in
             zip(ct["speedup_at_max_n"], ct["speedup_at_max_n_lo"], ct["speedup_at_max_n_hi"])]
    ct = ct.drop(columns=["time_crossover_n", "mem_crossover_n", "speedup_at_max_n_lo",
                          "speedup_at_max_n_hi"]).assign(speedup_at_max_n=speed)
    heads = {"time_crossover": "beats in time from n", "mem_crossover": "beats in memory from n",
             "measured_n": "measured n", "speedup_at_max_n": "speedup at max n"}
    return [heads.get(c, c) for c in ct.columns], [[fmt_value(v) for v in r] for r in ct.itertuples(False)]


NOISE_NOTE = (f"~ the speed-up's range from the two cells' timing quartiles (baseline q1 / method q3 to "
              f"baseline q3 / method q1) spans more than {NOISY_SPREAD}×; ? a crossing whose "
              "bracketing cells are noisy (see its note)")
