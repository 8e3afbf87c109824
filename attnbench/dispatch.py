"""One entry point for a cell of any kind: train cells go to :mod:`attnbench.train.cell`, prefill and
decode cells to :mod:`attnbench.decode`, timed cells (fwd, fwd_bwd, capacity) to :mod:`attnbench.cell`.
Executors call :func:`run_cell` and never need to know which kind a cell is."""
from __future__ import annotations

from attnbench.case import Case
from attnbench.cell import run_timed_cell
from attnbench.context import CellContext
from attnbench.decode import run_causal_cell
from attnbench.train.cell import run_train_cell


def run_cell(ctx: CellContext, case: Case) -> dict:
    """The row of one cell, whatever its level and mode; failures come back as rows, never raised."""
    if case.level == "train":  # a model trained on a task, not a timed call
        return run_train_cell(ctx, case)
    if case.mode in ("prefill", "decode"):
        return run_causal_cell(ctx, case)
    return run_timed_cell(ctx, case)
