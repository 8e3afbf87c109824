"""Learning curves: ``curves.jsonl`` beside ``results.jsonl``, one JSON line per evaluation of a
train cell, appended and fsynced like the rows.

A line: ``{"cell_id", "attempt", "step", "train_loss", "eval_loss", <metric>: value, "metric",
"elapsed_s"}``. ``attempt`` is drawn afresh each time a cell runs, and the cell's row names its own
(``curve_attempt``): a cell cut short and re-run on resume leaves its first attempt's points behind,
and readers keep only the attempt its row names.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

CURVES = "curves.jsonl"


class CurveWriter:
    """Appends evaluation points to ``<run_dir>/curves.jsonl``; each is on disk when ``append``
    returns."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CURVES
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, point: dict) -> None:
        data = (json.dumps(clean(point), sort_keys=True) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def clean(point: dict) -> dict:
    """Non-finite floats as null (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in point.items()}


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
