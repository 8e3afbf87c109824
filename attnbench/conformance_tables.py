"""The tables ``attnbench check`` prints: one method's rows (:func:`report_table`) and one line per
method (:func:`summary_table`), rich Tables that fit 80 columns. They read a finished
:class:`~attnbench.conformance_result.Report` and run nothing.
"""
from __future__ import annotations

import re

from attnbench.conformance_result import B, D, H, Report

STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}
WIDTH = 80


def report_table(report: Report):
    """One method's rows as a rich Table that fits 80 columns (details wrap at spaces)."""
    from rich.table import Table
    from rich.text import Text

    where = f"n={report.n}, B={B}, H={H}, D={D}, " if report.n else ""
    table = Table(title=Text(f"check {report.method} ({where}{report.device})"), width=WIDTH,
                  header_style="bold", title_justify="left")
    table.add_column("check", no_wrap=True, min_width=13)
    table.add_column("status", no_wrap=True, min_width=6)
    table.add_column("detail", ratio=1, overflow="fold")
    for r in report.rows:
        table.add_row(Text(r.check), Text(r.status, style=STYLE[r.status]), Text(r.detail))
    return table


def summary_table(reports: list[Report]):
    """One row per method: its verdict, counts and the checks that failed (or why it was skipped)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"check: {len(reports)} methods"), width=WIDTH, header_style="bold",
                  title_justify="left")
    table.add_column("method", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("pass", justify="right", no_wrap=True)
    table.add_column("fail", justify="right", no_wrap=True)
    table.add_column("skip", justify="right", no_wrap=True)
    table.add_column("notes", ratio=1, overflow="fold")
    for r in reports:
        ran = r.count("pass") + r.count("fail")
        verdict = "fail" if not r.ok else "pass" if ran else "skip"
        notes = ", ".join(x.check for x in r.rows if x.status == "fail") if not r.ok else \
            _short(r.rows[0].detail) if not ran and r.rows else ""
        table.add_row(Text(r.method), Text(verdict, style=STYLE[verdict]), str(r.count("pass")),
                      str(r.count("fail")), str(r.count("skip")), Text(notes))
    return table


def _short(reason: str) -> str:
    """A skip reason for the summary: of the modules a missing package needs, only the first."""
    if m := re.match(r"unavailable: (.+?) not installed(.*)$", reason):
        mods = m[1].split(", ")
        return f"missing {mods[0]}{f' +{len(mods) - 1}' if len(mods) > 1 else ''}{m[2]}"
    return reason
