"""A suite expanded into its cells (:class:`~attnbench.case.Case`), in run order: per method and
params, every other axis, then n ascending, so that an out-of-memory at some n can prune the larger n
of the same family. Level ``train`` cells take their shape from the suite's [train] configurations.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from attnbench.case import Case
from attnbench.inputs import REGIMES
from attnbench.registry import REGISTRY
from attnbench.suite_checks import CAUSAL_MODES, SWEEP_AXES, SWEEP_DEFAULTS
from attnbench.suite_parse import Suite


def _grid(table: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(table)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(table[k] for k in keys))]


def _axis(suite: Suite, key: str, device_type: str, override: dict | None = None) -> list[Any]:
    v = (override or {}).get(key, suite.sweep.get(key, []))
    if isinstance(v, dict):
        return v.get(device_type, SWEEP_DEFAULTS.get(key, [suite.seed] if key == "seed" else []))
    return v


def expand(suite: Suite, device_type: str = "cpu") -> list[Case]:
    """All cells in run order: per method and params, every other axis, then n ascending (so an OOM
    at some n can prune the larger n of the same family)."""
    inputs = [tuple(sorted({**dataclasses.asdict(REGIMES[d["regime"]].params()), **d}.items()))
              for t in suite.inputs for d in _grid(t)]
    from attnbench.train.config import case_fields

    cases, seen = [], set()
    overrides = suite.method_sweeps or [{}] * len(suite.methods)
    for (mname, grid), override in zip(suite.methods, overrides):
        axes = {k: _axis(suite, k, device_type, override) for k in SWEEP_AXES}
        ns = sorted(set(axes.pop("n")))
        totals = axes.pop("total_tokens")
        if totals:  # batch = total_tokens / n, each n doing the same work
            axes["batch"] = [0]
        defaults = dataclasses.asdict(REGISTRY.get(mname).params())
        for given in _grid(grid):
            params = {**defaults, **given}  # rows carry every param, defaults included
            for combo in _grid({**axes, "input": inputs, "total_tokens": totals or [0]}):
                if combo["level"] == "train":
                    # the sweep's batch, heads, head_dim, mode, batching, inputs do not apply
                    for config in suite.train:
                        for n in ns:
                            fixed = dict(combo, mode="fwd_bwd", batching="fixed", total_tokens=0,
                                         input=(), **case_fields(config, n))
                            case = Case(method=mname, params=tuple(sorted(params.items())), n=n,
                                        **fixed)
                            if case.cell_id not in seen:
                                seen.add(case.cell_id)
                                cases.append(case)
                    continue
                if combo["mode"] in CAUSAL_MODES:  # causal by definition: listed once, as causal
                    if not combo["causal"] and True in axes["causal"]:
                        continue
                    combo["causal"] = True
                for n in ns:
                    layers = suite.model["layers"] if combo["level"] == "model" else 1
                    ffn = suite.model["ffn_dim"] if combo["level"] == "model" else 0
                    if combo["total_tokens"]:
                        combo["batch"] = combo["total_tokens"] // n
                    cases.append(Case(method=mname, params=tuple(sorted(params.items())), n=n,
                                      layers=layers, ffn_dim=ffn, **combo))
    return cases
