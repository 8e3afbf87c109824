"""Decode reports, read from saved rows: time per token and state bytes per sequence against the
context n (log–log plots, kinds ``decode`` and ``state``), a decode table and the decode crossover.

The decode crossover answers, for each method beside the exact baseline on the same setting (level,
batch, dtype, ...): from which context length does it decode faster ("faster from n": its time per
token drops below the baseline's), and from which does it fit more sequences in memory ("fits more
from n": its state bytes per sequence drop below the baseline's). Both are located as the forward
crossover is (:func:`attnbench.crossover.crossing`: log-log interpolation between measured n, never
extrapolated). Sequences per GPU = the device's memory / state bytes per sequence: what the cache
alone allows (weights, activations and workspace not counted), on CUDA rows that record the device's
memory.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from attnbench.crossover import crossing, pairs
from attnbench.frame import baseline_mask, family_columns, fmt_n, fmt_value, varying
from attnbench.plotstyle import (FAILED, Look, NothingToPlot, new_figure, method_label, figure_legend, log_axis,
                                 n_axis, facets, file_stem, constants, finish, mark_failed, never_ran,
                                 style_map, title_text)

MIB = 2**20
DECODE_KINDS = ("decode", "state")


def decode_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The run's decode rows (every status)."""
    if df.empty or "mode" not in df:
        return df.iloc[0:0]
    return df[df["mode"] == "decode"]


def has_decode(df: pd.DataFrame) -> bool:
    return not decode_rows(df).empty


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df else \
        pd.Series(math.nan, index=df.index, dtype=float)


def seqs_per_device(df: pd.DataFrame) -> pd.Series:
    """Sequences whose state fits in the device's memory (NaN where the row has no device memory)."""
    per_seq = _num(df, "state_bytes_per_seq")
    return np.floor(_num(df, "device_mem_mib") * MIB / per_seq.where(per_seq > 0))


def fmt_bytes(b: float) -> str:
    if b is None or b != b:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", MIB), ("KiB", 1024)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"


def _keys(df: pd.DataFrame) -> list[str]:
    return [c for c in family_columns(df) if c != "mode"]


def decode_crossover(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per method label beside ``baseline`` on each setting of the other axes (module
    docstring): time and state crossovers in n, and at the largest n both measured, the speed-up,
    the state per sequence and the sequences per GPU of both."""
    cols = ["method", "faster_from_n", "fits_more_from_n", "measured_n", "speedup_at_max_n",
            "state_per_seq_at_max_n", "seqs_per_gpu_at_max_n", "baseline_seqs_per_gpu", "note"]
    rows = decode_rows(df)
    if rows.empty or "status" not in rows:
        return pd.DataFrame(columns=cols)
    rows = rows.assign(_t=_num(rows, "time_per_token_ms"), _s=_num(rows, "state_bytes_per_seq"),
                       _g=seqs_per_device(rows))
    label = "label" if "label" in rows else "method"
    keys = _keys(rows)
    rows = rows.assign(**{k: rows[k].astype(str) for k in keys})  # NaN-free keys that group alike
    base = rows[baseline_mask(rows, baseline)]
    others = rows[~rows.index.isin(base.index)]
    if base.empty or others.empty:
        return pd.DataFrame(columns=cols)

    def per_n(frame):
        ok = frame[frame["status"] == "ok"]
        return ok.groupby("n")[["_t", "_s", "_g"]].median()

    out = []
    for pair in pairs(base, others, keys, label, per_n):
        key, bm, mm, ns = pair.key, pair.b, pair.m, pair.ns
        t = crossing(ns, pair.ratios("_t"))
        s = crossing(ns, pair.ratios("_s"))
        notes = [f"time: {t.note}"] if t.note else []
        notes += [f"state: {s.note}"] if s.note else []
        if beyond := pair.oom_beyond("decodes"):
            notes.append(beyond)
        if not ns and not notes:
            continue
        last = pair.common[-1] if ns else None
        row = dict(zip([label, *keys], key))
        row.update(method=key[0], faster_from_n=t.text, fits_more_from_n=s.text,
                   measured_n=f"{fmt_n(ns[0])}–{fmt_n(ns[-1])}" if ns else "—",
                   speedup_at_max_n=bm.at[last, "_t"] / mm.at[last, "_t"] if ns else math.nan,
                   state_per_seq_at_max_n=mm.at[last, "_s"] if ns else math.nan,
                   seqs_per_gpu_at_max_n=mm.at[last, "_g"] if ns else math.nan,
                   baseline_seqs_per_gpu=bm.at[last, "_g"] if ns else math.nan,
                   note="; ".join(notes))
        out.append(row)
    res = pd.DataFrame(out)
    if res.empty:
        return pd.DataFrame(columns=cols)
    shown = varying(res, keys)
    return res.sort_values(["method", *shown], kind="stable")[cols[:1] + shown + cols[1:]] \
        .reset_index(drop=True)


TABLE = [("n", "n"), ("time_per_token_ms", "ms/token"), ("tokens_per_s", "tok/s"),
         ("state_bytes_per_seq", "state/seq"), ("_g", "seqs/GPU"), ("peak_mem_mib", "peak_MiB"),
         ("timing_mode", "timing"), ("status", "status")]


def decode_table(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Every decode row: method, the axes that vary, time per token, tokens/s, state per sequence,
    sequences per GPU (where known), peak memory, timing mode, status."""
    rows = decode_rows(df)
    if rows.empty:
        return [], []
    rows = rows.assign(_g=seqs_per_device(rows))
    lab = rows["label"] if "label" in rows else rows["method"]
    axes = [c for c in ("level", "batch", "dtype", "heads", "head_dim") if c in rows and
            rows[c].astype(str).nunique() > 1]
    cols = [(c, h) for c, h in TABLE if c in rows and (c != "_g" or rows["_g"].notna().any())]
    heads = ["method", *axes, *(h for _, h in cols)]
    order = rows.assign(_lab=lab).sort_values(["_lab", *axes, "n"], kind="stable")
    out = []
    for _, r in order.iterrows():
        ok = r["status"] == "ok"
        cells = [str(r["_lab"]), *(fmt_value(r[a]) for a in axes)]
        for c, _ in cols:
            v = r[c]
            if c == "n":
                cells.append(fmt_n(float(v)))
            elif c == "state_bytes_per_seq":
                cells.append(fmt_bytes(float(v)) if ok else "—")
            elif c == "_g":
                cells.append(f"{v:,.0f}" if ok and v == v else "—")
            elif c in ("status", "timing_mode"):
                cells.append(str(v) if v == v else "")
            else:
                cells.append(fmt_value(v) if ok else "—")
        out.append(cells)
    return heads, out


CROSS_HEADS = {"faster_from_n": "faster from n", "fits_more_from_n": "fits more from n",
               "measured_n": "measured n", "speedup_at_max_n": "speedup at max n",
               "state_per_seq_at_max_n": "state/seq at max n",
               "seqs_per_gpu_at_max_n": "seqs/GPU at max n",
               "baseline_seqs_per_gpu": "baseline seqs/GPU"}


def crossover_rows(df: pd.DataFrame, baseline: str) -> tuple[list[str], list[list[str]]]:
    ct = decode_crossover(df, baseline)
    if ct.empty:
        return [], []
    if ct["seqs_per_gpu_at_max_n"].isna().all():
        ct = ct.drop(columns=["seqs_per_gpu_at_max_n", "baseline_seqs_per_gpu"])
    fmt = {"state_per_seq_at_max_n": fmt_bytes,
           "seqs_per_gpu_at_max_n": lambda v: f"{v:,.0f}" if v == v else "—",
           "baseline_seqs_per_gpu": lambda v: f"{v:,.0f}" if v == v else "—"}
    rows = [[fmt.get(c, fmt_value)(v) for c, v in zip(ct.columns, r)] for r in ct.itertuples(False)]
    return [CROSS_HEADS.get(c, c) for c in ct.columns], rows


def sections(df: pd.DataFrame, baseline: str) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, headers, rows) of the decode table and the decode crossover, for the terminal,
    Markdown and HTML reports (empty when the run has no decode rows)."""
    if not has_decode(df):
        return []
    out = [("Decode", "time per token = median step (each sequence of the batch gets a token per "
            "step); state/seq = bytes a method keeps between steps per sequence; seqs/GPU = device "
            "memory / state per sequence (the cache alone)", *decode_table(df))]
    heads, rows = crossover_rows(df, baseline)
    if rows:
        out.append((f"Decode crossover against {baseline}", "smallest context n from which each "
                    "method decodes faster than the baseline, and from which its state per sequence "
                    "is smaller (it fits more sequences); log-log interpolation between measured n, "
                    "never extrapolated", heads, rows))
    return out


# plots

def _plot(df: pd.DataFrame, meta: dict, baseline: str | None, what: str, look: Look) -> dict:
    rows = decode_rows(df)
    col = "time_per_token_ms" if what == "decode" else "state_bytes_per_seq"
    rows = rows.assign(_y=_num(rows, col) / (1 if what == "decode" else MIB))
    if rows.empty or not (rows["status"].eq("ok") & rows["_y"].notna()).any():
        raise NothingToPlot(f"no ok decode rows with {col}")
    baseline = baseline or meta.get("baseline")
    styles = style_map(look.palette_source(df), baseline)
    out = {}
    for fixed, part in facets(rows):
        part, gone = never_ran(part)
        if part.empty:
            continue
        fig, (ax,) = new_figure(1)
        ok = part[(part["status"] == "ok") & part["_y"].notna()]
        for lab, g in ok.groupby(method_label(ok), sort=True):
            med = g.groupby("n")["_y"].median()
            ax.plot(med.index, med.values, label=lab, **styles[lab])
        log_axis(ax)
        n_axis(ax, part["n"])
        ax.set_xlabel("context n (tokens already processed)")
        ax.set_ylabel("time per token (ms, median step)" if what == "decode"
                      else "state per sequence (MiB)")
        ax.grid(True, which="major", alpha=0.3)
        markers: set[str] = set()
        bad = part[part["status"].isin(FAILED)]
        if not bad.empty:
            markers = mark_failed(ax, bad, styles, set(method_label(ok)))
        note = "a step advances every sequence of the batch by one token" if what == "decode" else \
            "bytes kept between steps (KV cache at its allocated size, ring, or recurrent state)"
        mem = _num(ok, "device_mem_mib").dropna()
        if what == "state" and not mem.empty:
            cap = float(mem.iloc[0])  # MiB: sequences per device = cap / y
            sec = ax.secondary_yaxis("right", functions=(lambda y: cap / np.maximum(y, 1e-12),
                                                         lambda s: cap / np.maximum(s, 1e-12)))
            sec.set_ylabel("sequences per GPU (state alone)")
            from matplotlib.ticker import FuncFormatter

            sec.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            note += f" · right axis: {cap / 1024:.0f} GiB / state per sequence"
        finish(fig, title_text("decode: time per token" if what == "decode"
                               else "decode: state per sequence", meta, fixed),
               [" · ".join(constants(part, skip=fixed)), f"black: exact baseline {baseline} · {note}",
                gone], look, fixed)
        figure_legend(fig, [ax], markers, order=styles)
        if fig._suptitle is not None:  # one panel: a centred title would run into the legend
            fig._suptitle.set_horizontalalignment("left")
            fig._suptitle.set_x(0.02)
        out[file_stem(what, fixed)] = fig
    if not out:
        raise NothingToPlot("no decode row ran in this run")
    return out


def plot_decode(df: pd.DataFrame, meta: dict, baseline: str | None = None, *,
                look: Look = Look()) -> dict:
    """Time per token against the context n, log–log, one line per method label."""
    return _plot(df, meta, baseline, "decode", look)


def plot_state(df: pd.DataFrame, meta: dict, baseline: str | None = None, *,
               look: Look = Look()) -> dict:
    """State bytes per sequence against the context n, log–log (and sequences per GPU on the right
    where the rows record the device's memory)."""
    return _plot(df, meta, baseline, "state", look)
