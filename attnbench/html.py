"""One self-contained HTML report of a run: provenance, the results, crossover and grid tables, and
every plot that applies, embedded as PNG data URIs (no file beside it, no network).

Every string from the run (method labels, reasons, commands, hostnames) goes through ``html.escape``.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:right;vertical-align:top;white-space:nowrap}
td.l{white-space:normal}
th{background:#f4f4f4;position:sticky;top:0} td.l,th.l{text-align:left}
tr.bad td{background:#fff7e0} .muted{color:#666;font-size:.9em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555} .scroll{overflow-x:auto;max-height:70vh}
"""
LEFT = {"method", "status", "reason", "dtype", "mode", "note", "key", "value"}


def esc(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def table(headers: list[str], rows: list[list[str]], status_col: str | None = "status") -> str:
    cls = lambda h: ' class="l"' if h in LEFT or h.startswith(("n \\", "method")) else ""  # noqa: E731
    out = ["<div class=\"scroll\"><table>", "<thead><tr>" +
           "".join(f"<th{cls(h)}>{esc(h)}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
    si = headers.index(status_col) if status_col in headers else None
    for r in rows:
        bad = si is not None and r[si] != "ok"
        out.append(("<tr class=\"bad\">" if bad else "<tr>") +
                   "".join(f"<td{cls(h)}>{esc(x)}</td>" for h, x in zip(headers, r)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def provenance_rows(meta: dict) -> list[list[str]]:
    keys = ("suite", "suite_version", "suite_path", "suite_sha256", "baseline", "command", "device_type",
            "started", "finished", "state", "resumes", "cells_planned", "counts", "only", "skip",
            "cuda_graphs", "rounds")
    rows = [[k, meta[k] if not isinstance(meta[k], (dict, list)) else
             ", ".join(f"{a} {b}" for a, b in meta[k].items()) if isinstance(meta[k], dict)
             else " ".join(map(str, meta[k]))] for k in keys if meta.get(k) not in (None, "", [])]
    rows += [[f"provenance.{k}", v] for k, v in sorted((meta.get("provenance") or {}).items())
             if v not in (None, "")]
    return [[str(a), str(b)] for a, b in rows]


def render_html(run_dir: str | Path, baseline: str | None = None, kinds=None, n: int | None = None,
                plots: bool = True) -> str:
    from attnbench import grid as gridmod
    from attnbench.plots import KINDS, make_figures
    from attnbench.tables import NOISE_NOTE, constants_line, crossover_rows, summary, table_rows

    df, meta = summary(run_dir, baseline)
    baseline = meta["report_baseline"]
    title = f"attnbench · {meta.get('suite', '')}"
    body = [f"<h1>{esc(title)}</h1>", f"<p>{esc(constants_line(df, meta))}</p>"]
    counts = df["status"].value_counts().to_dict() if "status" in df else {}
    body.append(f"<p class=\"muted\">{esc(str(Path(run_dir)))} · cells: " +
                esc(", ".join(f"{k} {v}" for k, v in sorted(counts.items()))) + "</p>")

    body += ["<h2>Results</h2>", "<p class=\"muted\">speedup = baseline time / method time on the same "
             "cell; mem× = method peak memory / baseline peak memory; rel_err against float64 exact "
             "attention, base_err = the exact baseline's own error in the same dtype; "
             f"{esc(NOISE_NOTE)}.</p>", table(*table_rows(df))]
    heads, rows = crossover_rows(df, baseline)
    if rows:
        body += [f"<h2>Crossover against {esc(baseline)}</h2>",
                 "<p class=\"muted\">Smallest n at which each approximate method beats the baseline, "
                 "interpolated between measured n on a log scale, never extrapolated.</p>",
                 table(heads, rows, None)]
    from attnbench.decode_report import sections

    for title, note, heads, rows in sections(df, baseline):
        body += [f"<h2>{esc(title)}</h2>", f"<p class=\"muted\">{esc(note)}.</p>",
                 table(heads, rows, "status" if "status" in heads else None)]
    grids = [g for kind in ("speedup", "memory") for g in gridmod.grids(df, meta, kind, baseline)] \
        if not df.empty and meta.get("suite") in gridmod.PAPER_TABLES else []
    if grids:
        body.append(f"<h2>Grids against {esc(baseline)}</h2>")
        for g in grids:
            body += [f"<h3>{esc(g.title)}</h3>", table(*gridmod.to_rows(g), None)]
    if plots and not df.empty:
        figs, skipped = make_figures(df, meta, kinds or KINDS, baseline=baseline, n=n)
        body.append("<h2>Plots</h2>")
        for stem, fig in figs.items():
            body.append(f"<figure><img src=\"{data_uri(fig)}\" alt=\"{esc(stem)}\">"
                        f"<figcaption>{esc(stem)}</figcaption></figure>")
        if skipped:
            body.append("<p class=\"muted\">Not plotted: " + esc("; ".join(
                f"{k} ({why})" for k, why in skipped.items())) + "</p>")
    body += ["<h2>Provenance</h2>", table(["key", "value"], provenance_rows(meta), None)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) +
            "\n</body></html>\n")

