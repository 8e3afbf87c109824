"""The run's scale-out options, checked and resolved for the runner: ``--executor dask`` with
``--workers N`` / ``--scheduler ADDRESS``, ``--shard I/N`` and ``--costs-from RUN_DIR``.

Nothing here needs Dask: shards are for clusters where users only submit job arrays.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

from attnbench.accounting import cell_seconds
from attnbench.checks import is_whole
from attnbench.errors import BadInput, RunDirError
from attnbench.shards import cell_costs, parse_shard, shard_ids
from attnbench.store import iter_rows, read_meta

EXECUTORS = ("serial", "dask")
WORKERS_MAX = 4096
DASK_HINT = "pip install 'attnbench[dist]'"


def check(executor: str | None, workers, scheduler, shard=None, costs_from=None) -> str:
    """The executor's name after checking its options (``serial`` when none is given)."""
    executor = executor or "serial"
    if shard is not None:
        parse_shard(shard)
    if costs_from is not None:
        if shard is None and executor != "dask":
            raise BadInput("--costs-from balances --shard and orders --executor dask; add one of "
                           "them (or leave it out)")
        read_meta(Path(costs_from))  # a clear error for something that is not a run directory
    if executor not in EXECUTORS:
        raise BadInput(f"--executor {executor!r}: allowed: {', '.join(EXECUTORS)}")
    if workers is not None and not (is_whole(workers) and 1 <= workers <= WORKERS_MAX):
        raise BadInput(f"--workers {workers!r}: expected a whole number from 1 to {WORKERS_MAX}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise BadInput(f"--scheduler {scheduler!r}: expected a scheduler address, e.g. "
                       "tcp://10.0.0.5:8786")
    if executor != "dask" and (workers is not None or scheduler is not None):
        flag = "--workers" if workers is not None else "--scheduler"
        raise BadInput(f"{flag} chooses the workers of --executor dask; add --executor dask")
    if executor == "dask" and importlib.util.find_spec("distributed") is None:
        raise BadInput(f"--executor dask needs Dask's distributed scheduler, which is not "
                       f"installed: {DASK_HINT}")
    return executor


def past_times(run_dir: str | Path | None) -> dict[str, float]:
    """cell id -> seconds from an earlier run named with ``--costs-from`` (rows that ran)."""
    if run_dir is None:
        return {}
    path = Path(run_dir)
    read_meta(path)  # a clear error for something that is not a run directory
    return {r["cell_id"]: cell_seconds(r) for r in iter_rows(path)
            if r.get("status") not in ("unsupported", "oom-pruned")}


def shard_of(cells: Sequence, shard, rounds: int, suite, device_type: str,
             costs_from: str | Path | None) -> tuple[list, dict]:
    """The planned cells of shard ``I/N`` (whole chains, balanced by estimated cost) and what
    meta.json records about it."""
    i, n = parse_shard(shard)
    cases = [c.case for c in cells]
    costs = cell_costs(cases, suite.timing, suite.error, device_type, past_times(costs_from))
    ids = shard_ids(cases, (i, n), rounds, costs)
    mine = [c for c in cells if c.case.cell_id in ids]
    meta = {"shard": [i, n], "shard_cells": sorted(ids), "cells_in_suite": len(cells),
            "shard_costs_from": None if costs_from is None else str(costs_from)}
    return mine, meta


def resumed_shard(cells: Sequence, run_dir: Path, meta: dict) -> list:
    """A resumed shard runs the cells its first session chose, as meta.json lists them."""
    ids = meta.get("shard_cells")
    if not (isinstance(ids, list) and all(isinstance(x, str) for x in ids)):
        raise RunDirError(f"{run_dir}/meta.json: shard = {meta.get('shard')!r} without its list of "
                          "cells (shard_cells); is this a run directory written by attnbench?")
    wanted = set(ids)
    return [c for c in cells if c.case.cell_id in wanted]


def order_costs(cells: Sequence, suite, device_type: str, out: Path,
                costs_from: str | Path | None) -> dict[str, float]:
    """Costs that order a distributed run's work (longest first): earlier runs of this suite under
    ``out`` on this device type, ``--costs-from`` over them, the plan's estimate for the rest."""
    from attnbench.estimate import history

    past, _ = history(out, suite.name, device_type)
    past.update(past_times(costs_from))
    return cell_costs([c.case for c in cells], suite.timing, suite.error, device_type, past)
