"""Work units, chains and shards: how a run's cells are split over workers or over the jobs of an array.

- A **unit** is what one worker runs in one go: a single cell, or, when timing is interleaved
  (``rounds > 1``), a whole comparison group (its cells are timed together on one device).
- A **chain** is a sequence of units that must run one after another, in ascending n, because an
  out-of-memory at some n prunes the larger n of the same family: with ``rounds == 1`` a chain is an
  OOM family (every axis but n); with ``rounds > 1`` it is the comparison groups that differ only in n
  (each OOM family lies inside one of them).
- A **shard** ``I/N`` is a set of whole chains: the chains sorted by estimated cost, longest first,
  each given to the shard with the least cost so far (ties: the lower index). The split depends on
  the cells and the costs only, so every job of an array computes the same partition on its own.

Costs are seconds-like estimates: from a previous run's wall time of the cell where one is given, else
from the plan (the timing budget, plus the attention's arithmetic at a nominal rate for the device
type, plus the float64 reference). They only order and balance work; nothing is promised about them.
Shards use the plan's costs (or an explicitly named earlier run), never whatever history happens to
be on disk, so that jobs starting at different times agree.
"""
from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from attnbench.case import Case
from attnbench.checks import is_whole
from attnbench.errors import BadInput

SHARD_MAX = 100_000
# nominal arithmetic rates (flop/s) of the plan's cost model: only ratios between cells matter
RATE = {"cpu": 2e10, "cuda": 2e13}
CAPACITY_PROBES = 12  # a capacity cell runs a search of about this many probes


def parse_shard(text: object) -> tuple[int, int]:
    """``"I/N"`` (or a pair) -> (I, N) with 0 <= I < N; anything else is bad input."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        i, n = text
    elif isinstance(text, str) and text.count("/") == 1:
        a, b = (s.strip() for s in text.split("/"))
        i = int(a) if a.isdigit() else a
        n = int(b) if b.isdigit() else b
    else:
        raise BadInput(f"--shard {text!r}: expected I/N, e.g. 0/8 (shard I of N, counting from 0)")
    if not (is_whole(i) and is_whole(n) and 1 <= n <= SHARD_MAX and 0 <= i < n):
        raise BadInput(f"--shard {text!r}: expected I/N with N from 1 to {SHARD_MAX} and "
                       "0 <= I < N (shards count from 0: 0/8 ... 7/8)")
    return int(i), int(n)


def _key(case: Case, drop: Iterable[str]) -> str:
    d = case.identity()
    for k in drop:
        d.pop(k)
    return json.dumps(d, sort_keys=True, default=str)


def unit_key(case: Case, rounds: int) -> str:
    """Cells with equal keys form one unit (one task on one worker)."""
    return case.cell_id if rounds <= 1 else _key(case, ("method", "params"))


def chain_key(case: Case, rounds: int) -> str:
    """Cells with equal keys form one chain (units in ascending n, one at a time)."""
    return _key(case, ("n",)) if rounds <= 1 else _key(case, ("method", "params", "n"))


@dataclass
class Chain:
    key: str
    units: list[list[Case]] = field(default_factory=list)  # ascending n; cells in planned order
    cost: float = 0.0


def chains(cases: Sequence[Case], rounds: int, costs: dict[str, float] | None = None) -> list[Chain]:
    """The chains of ``cases`` in the order of their first cell, each with its units in ascending n
    and its total cost (``costs`` by cell id; a missing cell counts 1)."""
    by_chain: dict[str, dict[str, list[Case]]] = {}
    for case in cases:
        by_chain.setdefault(chain_key(case, rounds), {}).setdefault(
            unit_key(case, rounds), []).append(case)
    out = []
    for key, units in by_chain.items():
        ordered = sorted(units.values(), key=lambda u: u[0].n)  # stable: planned order within an n
        cost = sum((costs or {}).get(c.cell_id, 1.0) for u in ordered for c in u)
        out.append(Chain(key, ordered, cost))
    return out


def plan_cost(case: Case, timing: dict, error: dict, device_type: str,
              exact: bool = True, budget_value: object = None) -> float:
    """Estimated seconds of one cell from its shape alone (see the module docstring)."""
    width = case.n if exact or not isinstance(budget_value, (int, float)) or isinstance(
        budget_value, bool) else min(case.n, max(1, int(budget_value)))
    flops = 4.0 * case.batch * case.heads * case.n * width * case.head_dim * max(1, case.layers)
    if case.mode == "fwd_bwd":
        flops *= 3
    calls = int(timing.get("warmup", 3)) + int(timing.get("repeats", 10))
    rate = RATE.get(device_type, RATE["cpu"])
    seconds = (float(timing.get("warmup_s", 0.1)) + float(timing.get("max_time_s", 2.0)) + 0.05
               + min(flops * calls / rate, 10 * float(timing.get("max_time_s", 2.0))))
    if error.get("enabled", True) and case.n <= int(error.get("max_n", 16384)):
        # float64 reference: exact attention at a fraction of the rate
        seconds += 4.0 * case.batch * case.heads * case.n * case.n * case.head_dim * 8 / rate
    if case.batching == "capacity":
        seconds *= CAPACITY_PROBES
    return seconds


def cell_costs(cases: Sequence[Case], timing: dict, error: dict, device_type: str,
               history: dict[str, float] | None = None) -> dict[str, float]:
    """cell id -> estimated seconds: ``history`` (earlier wall times) where it has the cell, else
    :func:`plan_cost`. Depends on the cases alone (not on what is installed where it runs)."""
    from attnbench.registry import REGISTRY

    out = {}
    for case in cases:
        if history and case.cell_id in history:
            out[case.cell_id] = float(history[case.cell_id])
            continue
        exact, budget = True, None
        if case.method in REGISTRY:
            spec = REGISTRY.get(case.method)
            exact = spec.exact
            budget = case.params_dict.get(spec.budget) if spec.budget else None
        out[case.cell_id] = plan_cost(case, timing, error, device_type, exact, budget)
    return out


def partition(cases: Sequence[Case], shards: int, rounds: int,
              costs: dict[str, float]) -> list[list[Case]]:
    """``cases`` split into ``shards`` lists of whole chains, balanced by cost; each list keeps the
    planned order. Deterministic: the same cases and costs give the same split."""
    found = chains(cases, rounds, costs)
    order = sorted(found, key=lambda ch: (-ch.cost, ch.key))
    heap = [(0.0, i) for i in range(shards)]
    owner: dict[str, int] = {}
    for ch in order:
        load, i = heapq.heappop(heap)
        owner[ch.key] = i
        heapq.heappush(heap, (load + ch.cost, i))
    out: list[list[Case]] = [[] for _ in range(shards)]
    for case in cases:
        out[owner[chain_key(case, rounds)]].append(case)
    return out


def shard_ids(cases: Sequence[Case], shard: tuple[int, int], rounds: int,
              costs: dict[str, float]) -> set[str]:
    """The cell ids of shard ``(I, N)``."""
    i, n = shard
    return {c.cell_id for c in partition(cases, n, rounds, costs)[i]}
