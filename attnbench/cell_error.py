"""The error phase of a timed cell: its output against a float64 exact reference (shared by every
method on the same inputs, unless the reference is the method's own), the baseline's own error in the
same dtype beside it, and at core level what the error means on these inputs
(:mod:`attnbench.accuracy`).
"""
from __future__ import annotations

from typing import Any

import torch

from attnbench.accuracy import budget_rank, input_columns
from attnbench.case import Case
from attnbench.cell_build import build_module, module_stats
from attnbench.context import CellContext
from attnbench.levels import NoExactCounterpart, attention_modules, reference_output
from attnbench.measure import Step
from attnbench.reference import error_metrics
from attnbench.registry import REGISTRY


def own_reference(case: Case, module) -> bool:
    """Whether the method's exact reference is its own, not shared with the other methods on the same
    inputs: its ``exact_reference`` hook (e.g. shared-QK attention) or its own projections (a method
    taking hidden states, whose exact counterpart keeps its weights)."""
    return (REGISTRY.get(case.method).takes_hidden
            or any(getattr(a, "exact_reference", None) is not None for a in attention_modules(module)))


def error_skip_reason(ctx: CellContext, case: Case) -> str | None:
    """Why this cell measures no error (the suite's [error] table, capacity mode), or None."""
    if not ctx.suite.error["enabled"]:
        return "error.enabled is false"
    if case.n > ctx.suite.error["max_n"]:
        return f"n > error.max_n ({ctx.suite.error['max_n']})"
    if case.batching == "capacity":
        return "capacity mode: error is measured in the fixed-batch cells"
    return None


def error_columns(ctx: CellContext, case: Case, module, inputs, dtype, cell: Any) -> dict:
    """Error of this method's output against a float64 exact reference, and the baseline's own error
    in the same dtype (so rounding is not mistaken for approximation). At core level also what the
    error means on these inputs (:mod:`attnbench.accuracy`): attention entropy, uniform attention's
    error and, for low-rank methods, the truncated-SVD error at the method's rank. ``cell``: the
    :class:`~attnbench.cell.CellRun`, whose output and input contract checks run on the way."""
    out = Step(module, inputs, "fwd").forward_output()
    cell.check_output(out)
    cell.check_inputs("the call compared with the reference")  # before the shared reference is made
    if not torch.isfinite(out).all():
        return {"_nan": True}
    # The reference is shared by every method on the same inputs, unless it is the method's own
    # (own_reference). The dtype is part of the key because the inputs are rounded to it: one
    # reference per dtype, whatever order the cells run in.
    own = own_reference(case, module)
    ref_key = (case.level, case.n, case.batch, case.heads, case.head_dim, case.causal, case.input,
               case.seed, case.layers, case.ffn_dim, case.dtype,
               (case.method, case.params) if own else None)
    inputs32 = tuple(t.float() for t in inputs)
    try:
        # kept on the host: a cached reference must not count against the next cell's GPU memory
        ref = ctx.cached(("ref", ref_key),
                         lambda: reference_output(module, inputs32, case.causal).cpu()
                         ).to(out.device)
    except NoExactCounterpart as exc:
        return {"error_skipped": str(exc)}
    row = error_metrics(out, ref)
    if REGISTRY.get(case.method).approximates is None:  # an operator in its own right (issue 22)
        return {**{f"ref_{key}": value for key, value in row.items()},
                "error_vs": "its own float64 reference (not an approximation of softmax attention)"}
    if not own:
        row["baseline_rel_err"] = ctx.cached(("base", ref_key, case.dtype),
                                             lambda: baseline_error(ctx, case, inputs, dtype, ref))
    if case.level == "core" and "lengths" not in case.input_dict:  # packed: per-document, not these
        row.update(accuracy_columns(ctx, case, module, inputs32, ref, row["rel_err"], ref_key, own))
    return row


def accuracy_columns(ctx: CellContext, case: Case, module, inputs32, ref, rel_err: float,
                     ref_key, own: bool) -> dict:
    """entropy, uniform_rel_err, err_vs_uniform, svd_rel_err: per input set, in a cache of small
    values that lives as long as the run's context (the reference cache keeps only a few entries)."""
    cache = ctx.accuracy_stats
    q, k, v = inputs32
    own_probs = None
    if own:
        hook = module.exact_reference
        own_probs = lambda pv: hook(q.double(), k.double(), pv).double()  # noqa: E731
    spec = REGISTRY.get(case.method)
    rank = None if spec.exact else budget_rank(case.method, spec.params(**case.params_dict),
                                               module_stats(module), case.head_dim)
    return input_columns(cache, ref_key, q, k, v, ref, rel_err, causal=case.causal,
                         own_probs=own_probs, rank=rank)


def baseline_module(ctx: CellContext, case: Case, dtype):
    """The suite's baseline built for this cell (its params from the suite, if it lists them)."""
    spec = REGISTRY.get(ctx.suite.baseline)
    grids = [g for name, g in ctx.suite.methods if name == spec.name]
    params = spec.params(**{k: v[0] for k, v in grids[0].items()}) if grids else spec.params()
    return build_module(spec, params, case, dtype, ctx.device)


def baseline_error(ctx: CellContext, case: Case, inputs, dtype, ref) -> float | None:
    """The baseline's own error in the cell's dtype (None if it cannot run this case)."""
    try:
        out = Step(baseline_module(ctx, case, dtype), inputs, "fwd").forward_output()
        return error_metrics(out, ref)["rel_err"]
    except Exception:  # noqa: BLE001 - the baseline may not support this case
        return None
