"""Pair tables: our method against a peer, cell by cell, from one run.

``attnbench report RUN --pairs linformer=peer_linformer,lsh=peer_reformer`` prints, for every matching
cell (same n, batch, heads, head_dim, dtype, mode, level and input), our time over the peer's in both
timing modes of a ``--cuda-graphs`` run: eager (``eager_time_ms``) and graph replay (``time_ms``; for
a peer that could not be captured that is its eager time, and the row says so). Every variant of
either side (e.g. ``performer`` with and without ``compile``) gets its own row, and each row ends with
its worst ratio, so a target such as "<= 0.7x of the peer everywhere" reads off one column. An eager
ratio whose two sides' samples spread widely (launch-bound calls on a busy host) is marked "~".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from attnbench.errors import BadInput
from attnbench.frame import NOISY_SPREAD, cell_key_columns, fmt_n, md_table, row_keys
from attnbench.store import check_out_dir, load_results

PAIR_KEYS = ("n", "batch")  # the table's columns; every other cell key must match within a row


def parse_pairs(text: str, methods: set[str]) -> list[tuple[str, str]]:
    """``ours=peer,ours=peer`` -> [(ours, peer)], each name checked against the run's methods."""
    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        ours, sep, peer = item.partition("=")
        if not sep or not ours or not peer:
            raise BadInput(f"--pairs: {item!r} is not OURS=PEER (e.g. linformer=peer_linformer)")
        for name in (ours, peer):
            if name not in methods:
                raise BadInput(f"--pairs: {name!r} is not a method of this run; it has: "
                               f"{', '.join(sorted(methods))}")
        pairs.append((ours, peer))
    if not pairs:
        raise BadInput("--pairs: give at least one OURS=PEER")
    return pairs


def pair_table(df: pd.DataFrame, pairs: list[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per (our label, peer label, other cell keys), one column per (n,
    batch), each cell "eager / graph" ratios (ours / peer), then the row's worst ratio."""
    ok = df[df["status"] == "ok"].copy()
    if "eager_time_ms" not in ok.columns:
        ok["eager_time_ms"] = ok["time_ms"]
    graph = ok.get("timing_mode", pd.Series("eager", index=ok.index)) == "cuda-graph"
    ok["graph_ms"] = ok["time_ms"].where(graph)
    keys = [c for c in cell_key_columns(ok) if c not in ("method", "params", "seed") + PAIR_KEYS]
    ok["_key"] = row_keys(ok, keys)
    columns = sorted({(int(n), int(b)) for n, b in ok[list(PAIR_KEYS)].itertuples(index=False)})
    headers = ["ours", "peer", "dtype"] + [f"n={fmt_n(n)} B={b}" for n, b in columns] + ["worst"]
    rows = []
    for ours, peer in pairs:
        mine, theirs = ok[ok["method"] == ours], ok[ok["method"] == peer]
        for (label, key), a in mine.groupby(["label", "_key"], sort=False):
            for plabel, b in theirs[theirs["_key"] == key].groupby("label", sort=False):
                cells, worst = [], 0.0
                for n, batch in columns:
                    x = a[(a["n"] == n) & (a["batch"] == batch)]
                    y = b[(b["n"] == n) & (b["batch"] == batch)]
                    if x.empty or y.empty:
                        cells.append("—")
                        continue
                    x, y = x.iloc[0], y.iloc[0]
                    eager = x["eager_time_ms"] / y["eager_time_ms"]
                    # a peer that could not be captured replays nothing: its eager time stands in
                    replay = x["graph_ms"] / (y["graph_ms"] if pd.notna(y["graph_ms"]) else y["eager_time_ms"])
                    worst = max(worst, eager, replay if pd.notna(replay) else 0.0)
                    star = "*" if pd.notna(x["graph_ms"]) and pd.isna(y["graph_ms"]) else ""
                    tilde = "~" if eager_spread(x, y) > NOISY_SPREAD else ""
                    cells.append(f"{eager:.2f}{tilde} / {replay:.2f}{star}" if pd.notna(replay)
                                 else f"{eager:.2f}{tilde}")
                rows.append([label, plabel, str(a["dtype"].iloc[0])] + cells + [f"{worst:.2f}"])
    return headers, rows




def eager_spread(x, y) -> float:
    """How far apart the eager ratio's ends lie, from the two rows' eager samples: ours at its third
    quartile over the peer's first, against ours at its first over the peer's third (1 = no spread;
    nan without samples). Launch-bound eager calls on a busy host spread widely, and a median ratio
    read off them moves between runs."""
    a, b = _eager_samples(x), _eager_samples(y)
    if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) >= 4
            and len(b) >= 4):
        return float("nan")
    qa, qb = np.percentile(a, [25, 75]), np.percentile(b, [25, 75])
    return (qa[1] / qb[0]) / (qa[0] / qb[1])


def _eager_samples(row):
    samples = row.get("eager_samples_ms")
    if not isinstance(samples, (list, tuple)) and row.get("timing_mode", "eager") == "eager":
        samples = row.get("time_samples_ms")  # a run without --cuda-graphs: its samples are eager
    return samples


NOTE = ("ours / peer time per cell: eager / CUDA-graph replay (< 1: ours faster); * the peer cannot "
        "be captured, so its eager time stands in; ~ the eager times spread: ours at its third "
        f"quartile over the peer's first is more than {NOISY_SPREAD}× ours at its first over the "
        "peer's third")


def render_pairs(run_dir: str | Path, text: str, console, out: str | Path | None = None) -> list[Path]:
    """Print the pair table (split into blocks of columns where the console is too narrow) and write
    pairs.md and pairs.csv beside the run (or under ``out``)."""
    from rich.text import Text

    from attnbench.terminal import display_label, fit_tables

    check_out_dir(out)
    df = load_results(run_dir)
    if df.empty or "method" not in df or "status" not in df:
        raise BadInput(f"--pairs: {run_dir} has no result rows with a method and a status")
    headers, rows = pair_table(df, parse_pairs(text, set(df["method"])))
    console.print(Text("our time / the peer's", style="bold"))
    shown = [[display_label(r[0]), display_label(r[1]), *r[2:]] for r in rows]
    for table in fit_tables(headers, shown, console.width, keys=3):
        console.print(table)
    console.print(NOTE, style="dim", highlight=False)
    dest = Path(out or run_dir)
    md, csv = dest / "pairs.md", dest / "pairs.csv"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        md.write_text("\n".join(["# Ours against peers", "", NOTE, ""] + md_table(headers, rows)) + "\n",
                      encoding="utf-8")
        pd.DataFrame(rows, columns=headers).to_csv(csv, index=False)
    except OSError as exc:
        hint = "; write them elsewhere with --out DIR" if out is None else ""
        raise BadInput(f"could not write pairs.md and pairs.csv to {dest}: {exc.strerror or exc}"
                       f"{hint}") from None
    return [md, csv]
