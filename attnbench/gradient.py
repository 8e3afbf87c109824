"""Gradient error of a ``fwd_bwd`` cell: the method's input gradients in its dtype against float64
reference gradients, for the same output gradient.

The reference is what the forward error is measured against: exact softmax attention for methods
that approximate it (with the method's ``exact_reference`` hook where it has one), and the method
itself in float64 for those that approximate nothing (``approximates=None``). At core level the
inputs are q, k, v (``dq_rel_err``, ``dk_rel_err``, ``dv_rel_err``); at layer and model level the
hidden states (``dx_rel_err``). ``grad_rel_err`` is the relative Frobenius error of all of them
together. The suite's baseline (an exact kernel) in the same dtype gives ``baseline_grad_rel_err``:
the rounding level, beside which an approximation's error reads as what it is.

Softmax reference gradients at core level are taken query chunk by query chunk (the rows of the
output depend on their own queries only), so the n×n float64 matrix never exists at once.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from attnbench.errors import first_line
from attnbench.levels import Encoder, NoExactCounterpart, SelfAttention, reference_model
from attnbench.measure import free_memory, is_oom

CHUNK = 1024


def input_gradients(forward, inputs, grad_out: torch.Tensor) -> list[torch.Tensor]:
    """d<grad_out, forward(*inputs)> / d inputs, each input a fresh leaf (unused inputs: zeros)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    with torch.enable_grad():
        out = forward(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(leaves, grads)]


def softmax_gradients(q, k, v, grad_out, causal: bool, chunk: int = CHUNK) -> list[torch.Tensor]:
    """Float64 gradients of exact softmax attention, by query chunks: dq of a chunk is its own, dk and
    dv add up over chunks."""
    q64, k64, v64 = (t.detach().double() for t in (q, k, v))
    go = grad_out.double()
    n, m = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    dq, dk, dv = torch.empty_like(q64), torch.zeros_like(k64), torch.zeros_like(v64)
    kl, vl = k64.requires_grad_(), v64.requires_grad_()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        qc = q64[..., start:stop, :].clone().requires_grad_()
        with torch.enable_grad():
            scores = (qc @ kl.transpose(-1, -2)) * scale  # (B, H, c, M)
            if causal:
                rows = torch.arange(start, stop, device=q.device)[:, None] + (m - n)
                scores = scores.masked_fill(torch.arange(m, device=q.device) > rows, float("-inf"))
            out = torch.softmax(scores, dim=-1) @ vl
            gq, gk, gv = torch.autograd.grad(out, (qc, kl, vl), go[..., start:stop, :])
        dq[..., start:stop, :] = gq
        dk += gk
        dv += gv
    return [dq, dk, dv]


def reference_gradients(module, inputs, grad_out, causal: bool) -> list[torch.Tensor]:
    """Float64 input gradients of ``module``'s exact (or own) counterpart."""
    if len(inputs) == 3 and not isinstance(module, (SelfAttention, Encoder)) and \
            getattr(module, "exact_reference", None) is None:
        return softmax_gradients(*inputs, grad_out, causal)
    forward = reference_model(module, causal)
    return input_gradients(forward, [t.detach().double() for t in inputs], grad_out.double())


def relative_errors(grads, refs, names) -> dict[str, float]:
    """Per-input ``d<name>_rel_err`` and the overall ``grad_rel_err``."""
    row, num, den = {}, 0.0, 0.0
    for name, g, r in zip(names, grads, refs):
        diff = float(torch.linalg.vector_norm(g.double() - r)) ** 2
        size = float(torch.linalg.vector_norm(r)) ** 2
        row[f"d{name}_rel_err"] = math.sqrt(diff / size) if size > 0 else float("nan")
        num, den = num + diff, den + size
    row["grad_rel_err"] = math.sqrt(num / den) if den > 0 else float("nan")
    return row


def gradient_errors(module, inputs, grad_out, causal: bool, refs=None) -> tuple[dict, list]:
    """The gradient columns of a cell, and the reference gradients (to reuse for the baseline).
    ``inputs`` are the cell's inputs in the method's dtype; ``refs`` reference gradients already
    computed on the same inputs, if any."""
    names = ("q", "k", "v") if len(inputs) == 3 else ("x",)
    grads = input_gradients(module, inputs, grad_out)
    if refs is None:
        refs = [r.to(g.device) for r, g in zip(reference_gradients(module, inputs, grad_out, causal),
                                              grads)]
    return relative_errors(grads, refs, names), refs


def gradient_columns(module, inputs, grad_out, causal: bool, device: torch.device,
                     baseline: Callable[[], torch.nn.Module] | None = None) -> dict:
    """A ``fwd_bwd`` cell's gradient columns. ``baseline`` builds the suite's baseline on this cell
    where the reference is exact attention on the cell's inputs (its error is the rounding level
    beside the method's); None where the reference is the method's own. A missing exact counterpart
    or an out-of-memory in the float64 reference says so in ``grad_err_skipped``."""
    try:
        row, refs = gradient_errors(module, inputs, grad_out, causal)
    except NoExactCounterpart as exc:
        return {"grad_err_skipped": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the reference must not sink a measured cell
        if not is_oom(exc):
            raise
        free_memory(device, collect=True)
        first = first_line(exc, 120) or type(exc).__name__
        return {"grad_err_skipped": f"out of memory computing float64 reference gradients: {first}"}
    if baseline is not None:
        try:
            row["baseline_grad_rel_err"] = gradient_errors(baseline(), inputs, grad_out, causal,
                                                           refs)[0]["grad_rel_err"]
        except Exception as exc:  # noqa: BLE001 - the baseline may not support this case
            if is_oom(exc):
                free_memory(device, collect=True)
            row["baseline_grad_rel_err"] = None
    return row
