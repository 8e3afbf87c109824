"""Terminal tables that fit the console: the compact summary after a run and the full table on request.

Numbers are never folded across lines: a numeric column is as wide as its longest value and does not
wrap; when the columns of a table don't fit the console's width, the table is split into blocks of
columns, each repeating the key columns (the method and the axes that vary). Method labels wrap only
between their params (``bigbird(block=32, num_global=32, ...)``), reasons and notes between words.
Cells that did not run (unsupported, failed) are collapsed to one line per method, status and reason.
Reports read saved rows and never measure; this module only lays out what ``report.py`` computed.
"""
from __future__ import annotations

import math

import pandas as pd
from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from attnbench.accounting import mixed_devices_note
from attnbench.frame import (NOISY_IQR, NOISY_SPREAD, baseline_mask, cell_key_columns, fmt_n,
                             noisy_range, time_cost, time_quartiles, varying)
from attnbench.tables import (KEY_HEADERS, NOISE_NOTE, constants_line, crossover_rows,
                              table_rows)

# columns that hold words rather than numbers: left-aligned; of these, WRAP may take several lines
TEXT = {"method", "status", "reason", "dtype", "mode", "note", "ours", "peer", "verdict", "memory",
        "level", "input", "key", "value", "causal", "batching", "task", "metric"}
WRAP = {"method", "reason", "note", "ours", "peer"}
SHORT = {"ok": "ok", "unsupported": "—", "oom": "oom", "oom-pruned": "oom", "error": "error",
         "crashed": "crashed", "timeout": "timeout", "nan": "nan"}


def display_label(label) -> str:
    """A method label with a break opportunity after each comma, so it wraps between params."""
    return str(label).replace(",", ", ")


def fmt_ms(v) -> str:
    """Three significant digits without exponents in the usual range: 0.431, 1.13, 32.0, 121, 1234."""
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:#.3g}" if a >= 1e-3 else "0" if a == 0 else f"{v:.1e}"


def fmt_x(v) -> str:
    """A ratio as the README writes it: 64×, 8.5×, 0.75×."""
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—"
    if v >= 10:
        return f"{v:.0f}×"
    return f"{v:.1f}×" if v >= 1 else f"{v:#.2g}×"


def _width(text: str) -> int:
    return max((cell_len(line) for line in str(text).split("\n")), default=0)


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in str(text).split()), default=0)


def _overhead(ncols: int) -> int:
    # STYLE below: one padding space each side of a column, a one-space rule between columns, no
    # outer edge and no outer padding
    return max(0, 3 * ncols - 3)


STYLE = dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold",
             title_justify="left", collapse_padding=False)


def column_widths(headers: list[str], rows: list[list[str]]) -> list[tuple[int, int]]:
    """(least, natural) width of each column: numbers need their whole width, text its longest word."""
    out = []
    for i, h in enumerate(headers):
        cells = [str(r[i]) for r in rows]
        natural = max([_width(h)] + [_width(c) for c in cells])
        if h in WRAP:
            least = max([_longest_word(h)] + [_longest_word(c) for c in cells])
        else:
            least = max([_width(h) if "\n" in h or h not in TEXT else _longest_word(h)] +
                        [_width(c) for c in cells])
        out.append((least, natural))
    return out


def build_table(headers: list[str], rows: list[list[str]], title=None,
                row_styles: list[str | None] | None = None, widths=None) -> Table:
    widths = widths or column_widths(headers, rows)
    table = Table(title=Text(title) if isinstance(title, str) else title, **STYLE)
    for h, (least, _) in zip(headers, widths):
        if h in WRAP:
            table.add_column(h, justify="left", overflow="fold", min_width=least)
        elif h in TEXT:
            table.add_column(h, justify="left", no_wrap=True, overflow="ellipsis", min_width=least)
        else:
            table.add_column(h, justify="right", no_wrap=True, overflow="ellipsis", min_width=least)
    for i, r in enumerate(rows):
        table.add_row(*map(Text, map(str, r)), style=row_styles[i] if row_styles else None)
    return table


def _blocks(widths: list[tuple[int, int]], keys: int, width: int) -> list[list[int]]:
    """Value columns split into blocks that fit ``width`` beside the key columns, as even as greedy
    packing allows."""
    values = list(range(keys, len(widths)))
    if not values:
        return [[]]
    base = sum(w[0] for w in widths[:keys])

    def fits(block):
        return base + sum(widths[i][0] for i in block) + _overhead(keys + len(block)) <= width

    greedy, cur = [], []
    for i in values:
        if cur and not fits(cur + [i]):
            greedy.append(cur)
            cur = []
        cur.append(i)
    greedy.append(cur)
    size = math.ceil(len(values) / len(greedy))
    even = [values[j:j + size] for j in range(0, len(values), size)]
    return even if len(even) == len(greedy) and all(fits(b) for b in even) else greedy


def fit_tables(headers: list[str], rows: list[list[str]], width: int, keys: int = 1,
               row_styles: list[str | None] | None = None) -> list[Table]:
    """One table, or several (each with the first ``keys`` columns) when one would not fit ``width``."""
    widths = column_widths(headers, rows)
    return [build_table([headers[i] for i in cols], [[r[i] for i in cols] for r in rows], None,
                        row_styles, [widths[i] for i in cols])
            for cols in (list(range(keys)) + block for block in _blocks(widths, keys, width))]


class Fitted:
    """``fit_tables`` at the width the tables are printed at, for callers that build a renderable
    before they know the console (``report.fitted_table``)."""

    def __init__(self, headers, rows, keys: int = 1, row_styles=None, title: str | None = None):
        self.headers, self.rows, self.keys, self.row_styles, self.title = \
            headers, rows, keys, row_styles, title

    def __rich_console__(self, console, options):
        if self.title:
            yield Text(self.title, style="bold")
        yield from fit_tables(self.headers, self.rows, options.max_width, self.keys, self.row_styles)


def one_line(text: str, width: int) -> Text:
    line = Text(text, no_wrap=True, overflow="ellipsis")
    line.truncate(width, overflow="ellipsis")
    return line


def _base_labels(df: pd.DataFrame, baseline: str) -> set[str]:
    """The labels of the baseline's rows (``sdpa`` may name ``sdpa(backend=auto)``)."""
    return set(df.loc[baseline_mask(df, baseline), "label"].astype(str))


def _order(df: pd.DataFrame, baseline: str) -> list[str]:
    labels, base = list(dict.fromkeys(df["label"].astype(str))), _base_labels(df, baseline)
    return sorted(labels, key=lambda lab: lab not in base)  # stable: the run's order, baseline first


def _group_axes(df: pd.DataFrame, drop=("n", "seed")) -> list[str]:
    return [c for c in varying(df, cell_key_columns(df)) if c not in drop]


def _groups(df: pd.DataFrame, axes: list[str]):
    if not axes:
        yield "", df
        return
    for key, g in df.groupby(axes, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        yield " ".join(f"{a}={v}" for a, v in zip(axes, key)), g


def summary_grids(df: pd.DataFrame, baseline: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per setting of the varying axes (mode, dtype, level, ...): method × n, each cell "time speed-up"
    with "~" where the speed-up's quartile range is wide."""
    if df.empty or "n" not in df or "status" not in df:
        return []
    df = df.assign(label=df["label"] if "label" in df else df["method"], _t=time_cost(df))
    q1, q3 = time_quartiles(df)
    df = df.assign(_q1=q1, _q3=q3)
    cap = "batching" in df and (df["batching"] == "capacity").any()
    what = "ms per sequence" if cap else "time_ms"
    out = []
    for name, g in _groups(df, _group_axes(df)):
        ok = g[g["status"] == "ok"]
        if ok.empty:
            continue
        ns = sorted(g["n"].dropna().unique())
        cell = ok.groupby(["label", "n"])[["_t", "_q1", "_q3", "speedup", "speedup_lo",
                                           "speedup_hi"]].median()
        status = g.groupby(["label", "n"])["status"].first()
        base = _base_labels(g, baseline)
        rows = []
        for label in _order(g, baseline):
            if label not in set(ok["label"]):
                continue  # never ran here: listed once below the grids
            r = [display_label(label)]
            for n in ns:
                if (label, n) not in cell.index:
                    r.append(SHORT.get(status.get((label, n)), "") if (label, n) in status.index else "")
                    continue
                c = cell.loc[(label, n)]
                if label in base:
                    noisy = c["_q3"] - c["_q1"] > NOISY_IQR * c["_t"]
                    r.append(fmt_ms(c["_t"]) + ("~" if noisy else ""))
                else:
                    mark = "~" if noisy_range(c["speedup_lo"], c["speedup_hi"]) else ""
                    r.append(f"{fmt_ms(c['_t'])} {fmt_x(c['speedup'])}{mark}")
            rows.append(r)
        title = " · ".join(filter(None, [name, f"{what} and speed-up over {baseline}"]))
        out.append((title, ["method", *(f"n={fmt_n(n)}" for n in ns)], rows))
    return out


GRID_LEGEND = ("each cell: median {what} and speed-up (baseline time / method time on the same "
               "cell); ~ marks a speed-up whose range from the two cells' timing quartiles spans "
               f"more than {NOISY_SPREAD}× (baseline row: its IQR is over {NOISY_IQR:.0%} of its "
               "median); — not run")


def error_table(df: pd.DataFrame, baseline: str) -> tuple[list[str], list[list[str]]]:
    """Each method's error at the largest n where it has one, beside the baseline's own error there."""
    if df.empty or "rel_err" not in df or "n" not in df:
        return [], []
    df = df.assign(label=df["label"] if "label" in df else df["method"])
    has = df[pd.to_numeric(df["rel_err"], errors="coerce").notna() & (df.get("status") == "ok")]
    if has.empty:
        return [], []
    axes = _group_axes(df, drop=("n", "seed", "mode", "batch"))
    base_err = "baseline_rel_err" in has
    heads = ["method", *axes, "n", "rel_err"] + ([f"{baseline} err"] if base_err else [])
    rows = []
    for label in _order(has, baseline):
        mine = has[has["label"] == label]
        for _, g in _groups(mine, axes):
            top = g[g["n"] == g["n"].max()]
            r = [display_label(label), *(str(top[a].iloc[0]) for a in axes), fmt_n(top["n"].iloc[0]),
                 _sig(top["rel_err"].median())]
            if base_err:
                r.append(_sig(pd.to_numeric(top["baseline_rel_err"], errors="coerce").median()))
            rows.append(r)
    return heads, rows


def _sig(v) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.2e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.3g}"


def _ns_text(ns) -> str:
    ns = sorted(set(n for n in ns if n == n))
    if not ns:
        return ""
    if len(ns) > 4:
        return f" at n={fmt_n(ns[0])}–{fmt_n(ns[-1])}"
    return " at n=" + ",".join(fmt_n(n) for n in ns)


def collapsed_lines(df: pd.DataFrame, statuses) -> list[str]:
    """One line per (method, status, reason) among the rows whose status is in ``statuses``."""
    if df.empty or "status" not in df:
        return []
    bad = df[df["status"].isin(statuses)]
    if bad.empty:
        return []
    bad = bad.assign(reason=bad["reason"].fillna("").astype(str) if "reason" in bad else "",
                     n=bad["n"] if "n" in bad else math.nan)
    out = []
    for (method, status, reason), g in bad.groupby(["method", "status", "reason"], sort=False,
                                                   dropna=False):
        count = f" ×{len(g)}" if len(g) > 1 else ""
        out.append(f"{status}: {method}{count}{_ns_text(g['n'])}" + (f": {reason}" if reason else ""))
    return out


def crossover_display(headers: list[str], rows: list[list[str]]):
    """The crossover table for the terminal: short two-line headers, "measured n" said once in the
    title when every row has the same, and notes as numbered lines under the table.
    Returns (headers, rows, title suffix, note lines)."""
    short = {"beats in time from n": "time\nfrom n", "beats in memory from n": "memory\nfrom n",
             "measured n": "measured\nn", "speedup at max n": "speed-up\nat max n"}
    suffix, notes = "", {}
    if "measured n" in headers:
        i = headers.index("measured n")
        if len({r[i] for r in rows}) == 1:
            suffix = f"; measured n {rows[0][i]}"
            headers = headers[:i] + headers[i + 1:]
            rows = [r[:i] + r[i + 1:] for r in rows]
    if "note" in headers:
        i = headers.index("note")
        for r in rows:
            if r[i] and r[i] != "—":
                r[i] = str(notes.setdefault(r[i], len(notes) + 1))
            else:
                r[i] = ""
        if not notes:
            headers = headers[:i] + headers[i + 1:]
            rows = [r[:i] + r[i + 1:] for r in rows]
    mi = headers.index("method") if "method" in headers else None
    rows = [[display_label(x) if j == mi else x for j, x in enumerate(r)] for r in rows]
    return ([short.get(h, h) for h in headers], rows, suffix,
            [f"{k}: {text}" for text, k in notes.items()])


def print_tables(console, tables: list[Table], title: str | None = None) -> None:
    if title:
        console.print(Text(title, style="bold"))
    for t in tables:
        console.print(t)


def render(console, df: pd.DataFrame, meta: dict, table: str, columns: list[str] | None) -> None:
    """What ``report.render_terminal`` prints: see its docstring."""
    width = console.width
    baseline = meta["report_baseline"]
    counts = df["status"].value_counts().to_dict() if "status" in df else {}
    count_line = Text("cells: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if table == "none":
        console.print(count_line)
        return
    console.print(Text(constants_line(df, meta), style="bold"))
    if (mixed := mixed_devices_note(meta)) is not None:  # scale-out: rows from several GPU models
        console.print(Text(mixed, style="yellow"))
    if table == "full":
        shown = df[df["status"] != "unsupported"] if "status" in df else df
        heads, rows = table_rows(shown, columns)
        order = [i for i, h in enumerate(heads) if h in KEY_HEADERS]
        order += [i for i in range(len(heads)) if i not in order]
        heads = [heads[i] for i in order]
        rows = [[display_label(r[i]) if heads[j] == "method" else r[i] for j, i in enumerate(order)]
                for r in rows]
        styles = None
        if "status" in heads:
            si = heads.index("status")
            styles = [None if r[si] == "ok" else "yellow" for r in rows]
        keys = max(1, sum(h in KEY_HEADERS for h in heads))
        print_tables(console, fit_tables(heads, rows, width, keys, styles))
        if "speedup" in heads and any(r[heads.index("speedup")].endswith("~") for r in rows):
            console.print(Text(NOISE_NOTE.split("; ?")[0], style="dim"))
        lines = collapsed_lines(df, ("unsupported",))
    else:
        grids = summary_grids(df, baseline)
        for title, heads, rows in grids:
            print_tables(console, fit_tables(heads, rows, width), title)
        if grids:
            cap = "batching" in df and (df["batching"] == "capacity").any()
            console.print(Text(GRID_LEGEND.format(what="ms per sequence" if cap else "time_ms"),
                               style="dim"))
        heads, rows = error_table(df, baseline)
        if rows:
            keys = heads.index("n")
            print_tables(console, fit_tables(heads, rows, width, keys),
                         "error at the largest n with one (relative Frobenius, against float64 "
                         "exact attention)")
        lines = collapsed_lines(df, [s for s in counts if s != "ok"])
    if lines:
        console.print(Text("not run or failed (full reasons in report.md):"))
        for line in lines:
            console.print(one_line("  " + line, width), style="yellow")
    console.print(count_line)
    heads, rows = crossover_rows(df, baseline)
    if rows:
        heads, rows, suffix, notes = crossover_display(heads, rows)
        keys = heads.index("time\nfrom n") if "time\nfrom n" in heads else 1
        print_tables(console, fit_tables(heads, rows, width, keys),
                     f"crossover against {baseline}: interpolated between measured n, never "
                     f"extrapolated{suffix}; ? rests on noisy cells (see the note)")
        for line in notes:
            console.print(Text("  " + line, style="dim"))
    from attnbench.decode_report import sections  # decode rows: their table and crossover

    for title, note, heads, rows in sections(df, baseline):
        print_tables(console, fit_tables(heads, rows, width, 1), f"{title}: {note}")
