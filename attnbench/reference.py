"""Exact attention references, error metrics and the causality check shared by harness and tests.

Tensors are ``(B, H, N, D)`` throughout.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                      mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Materialised softmax(QKᵀ·scale + mask)·V. ``mask`` is boolean, True = may attend, (N, M) or
    broadcastable to (B, H, N, M). A query row with nothing allowed returns zeros."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, N, M)
    allowed = mask
    if causal:
        n, m = q.shape[-2], k.shape[-2]
        tri = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)
        allowed = tri if allowed is None else allowed & tri
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if allowed is not None:
        probs = torch.nan_to_num(probs, nan=0.0)  # rows with no allowed key
    return probs @ v


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        chunk: int = 1024) -> torch.Tensor:
    """Exact attention in float64, computed in query chunks so the n×n matrix never exists at once."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    n, m = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=torch.float64, device=q.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = (q64[..., start:stop, :] @ k64.transpose(-1, -2)) * scale  # (B, H, c, M)
        if causal:
            rows = torch.arange(start, stop, device=q.device)[:, None] + (m - n)
            cols = torch.arange(m, device=q.device)[None, :]
            scores = scores.masked_fill(cols > rows, float("-inf"))
        out[..., start:stop, :] = torch.softmax(scores, dim=-1) @ v64
    return out


def error_metrics(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Relative Frobenius error, max absolute error and cosine similarity of ``out`` against ``ref``."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    diff = out64 - ref64
    ref_norm = torch.linalg.vector_norm(ref64)
    out_norm = torch.linalg.vector_norm(out64)
    denom = (ref_norm * out_norm).clamp_min(torch.finfo(torch.float64).tiny)
    return {
        "rel_err": float(torch.linalg.vector_norm(diff) / ref_norm.clamp_min(1e-300)),
        "max_abs_err": float(diff.abs().max()),
        "cosine": float((out64 * ref64).sum() / denom),
    }


@torch.no_grad()
def causality_violation(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        position: int | None = None) -> float:
    """Perturb keys and values at one future ``position`` and return how far outputs before it moved.

    A causal method returns exactly 0 (up to the method's own nondeterminism, which the harness does not
    allow); anything that mixes positions, such as a projection along the sequence, moves the past.
    """
    n = q.shape[-2]
    position = n // 2 if position is None else position
    base = module(q, k, v)
    k2, v2 = k.clone(), v.clone()
    g = torch.Generator(device="cpu").manual_seed(1234)
    k2[..., position, :] += 3.0 * torch.randn(k2[..., position, :].shape, generator=g).to(k2)
    v2[..., position, :] += 3.0 * torch.randn(v2[..., position, :].shape, generator=g).to(v2)
    q2 = q.clone()
    q2[..., position:, :] += torch.randn(q2[..., position:, :].shape, generator=g).to(q2)
    moved = module(q2, k2, v2)
    past = (moved[..., :position, :] - base[..., :position, :]).abs()
    return float(past.max()) if past.numel() else 0.0


def is_causal(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rtol: float = 1e-5) -> bool:
    """True when, at several perturbed positions, no earlier output moves by more than ``rtol`` times the
    largest output magnitude (rounding of a global reduction may move the past by an ulp; leaks move it
    by O(1))."""
    n = q.shape[-2]
    with torch.no_grad():
        tol = rtol * float(module(q, k, v).abs().max())
    positions = sorted({1, n // 3, n // 2, n - 1} - {0})
    return all(causality_violation(module, q, k, v, p) <= tol for p in positions)
