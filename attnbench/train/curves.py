"""Learning curves: ``curves.jsonl`` beside ``results.jsonl``, one JSON line per evaluation of a
train cell, appended and fsynced like the rows.

A line: ``{"cell_id", "attempt", "step", "train_loss", "eval_loss", <metric>: value, "metric",
"elapsed_s"}``. ``attempt`` is drawn afresh each time a cell runs, and the cell's row names its own
(``curve_attempt``): a cell cut short and re-run on resume leaves its first attempt's points behind,
and readers keep only the attempt its row names.
"""
from __future__ import annotations

import json
from pathlib import Path

from attnbench.store import JsonlAppender

CURVES = "curves.jsonl"


class CurveWriter(JsonlAppender):
    """Appends evaluation points to ``<run_dir>/curves.jsonl``; each is on disk when ``append``
    returns."""

    def __init__(self, run_dir: Path):
        super().__init__(Path(run_dir) / CURVES)


def read_curves(run_dir: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """Every point of ``curves.jsonl`` (torn or malformed lines skipped), as a DataFrame with at
    least ``cell_id``, ``attempt``, ``step`` (empty when the run has none)."""
    import pandas as pd

    path = Path(run_dir) / CURVES
    points = []
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    p = json.loads(line)
                except ValueError:
                    continue
                if isinstance(p, dict) and isinstance(p.get("cell_id"), str) and \
                        isinstance(p.get("step"), int):
                    points.append(p)
    return pd.DataFrame(points, columns=None if points else ["cell_id", "attempt", "step"])
