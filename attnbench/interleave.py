"""Interleaved timing: the cells of a comparison group (same shape and inputs, any method) are held
together and timed in alternating rounds (``--rounds R`` or the suite's ``[timing] rounds``).

A lent host's speed drifts: CPU contention and clocks change over seconds, and a launch-bound eager
call costs what the host's CPU takes to issue it. Timed one cell after another, a slow spell lands on
whichever method ran during it and skews every ratio against it. In rounds, each method gets samples
from every part of the group's time, so drift lands on all of them alike (Google Benchmark's random
interleaving answers the same problem).
"""
from __future__ import annotations

import json

from attnbench.case import Case
from attnbench.cell import CellRun
from attnbench.context import CellContext, allocated_bytes
from attnbench.measure import free_memory


def group_key(case: Case) -> tuple:
    """Everything but the method and its params: cells with equal keys time the same inputs."""
    d = case.identity()
    d.pop("method")
    d.pop("params")
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in d.items()))


def run_interleaved(ctx: CellContext, cases: list[Case], rounds: int) -> list[dict]:
    """Run cells that share their inputs' shape (a comparison group) with their timing interleaved.

    Every cell is prepared (and captured, in graph mode); then come ``rounds`` rounds, each one block
    of eager calls of every cell and one block of replays of every cell, in an order rotated by one
    each round. Slow drift of the host (CPU contention, clocks) then lands on every method alike
    instead of on whichever ran during it. Each block takes ⌈repeats / rounds⌉ samples after
    ``warmup`` calls, within ``max_time_s / rounds``. The group's cells are held in memory together
    while they are timed; memory and error are measured afterwards, one cell at a time, without the
    graphs. Rows come back in ``cases`` order.
    """
    baseline = allocated_bytes(ctx.device)
    t = ctx.suite.timing
    per_block = max(1, -(-t["repeats"] // rounds))
    budget = t["max_time_s"] / rounds
    cells = [CellRun(ctx, case) for case in cases]
    try:
        for cell in cells:
            cell.prepare()
            cell.capture()
            if not cell.alive:
                cell.release()  # its row is set: free its memory for the others
        live = [c for c in cells if c.alive]
        for r in range(rounds):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for kind in ("eager", "graph"):
                for cell in order:
                    cell.sample(kind, per_block, budget)
        for cell in cells:
            cell.graph = None  # pools freed by the emptied cache each memory measurement starts with
        rows = []
        for i, cell in enumerate(cells):
            held = sum(c.held_bytes() for c in cells[i + 1:])
            rows.append(cell.finish(held_by_others=held, rounds=rounds))
            cell.release()
        return rows
    finally:
        for cell in cells:
            cell.release()
        free_memory(ctx.device, baseline=baseline)
