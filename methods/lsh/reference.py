"""Shared-QK attention as Reformer defines it (Kitaev, Kaiser & Levskaya, 2020,
https://arxiv.org/abs/2001.04451), exactly: the keys are the queries scaled to unit length, and a
query attends to itself only when it has no other key (Reformer's self score).

:func:`shared_qk_attention` is the exact reference of ``lsh`` and ``peer_reformer``: q, v
(B, H, N, D) -> (B, H, N, D) in float64, all keys (causal: keys <= i), a chunk of queries at a time.
"""
from __future__ import annotations

import math

import torch

SELF_SCORE = -1e5  # Reformer's score for attending to oneself


def shared_keys(q: torch.Tensor) -> torch.Tensor:
    """Reformer's keys: each query scaled to unit length."""
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-6)


def shared_qk_attention(q: torch.Tensor, v: torch.Tensor, *, causal: bool,
                        chunk: int = 1024) -> torch.Tensor:
    """Exact shared-QK attention with the self rule, in float64, a chunk of queries at a time."""
    q64, v64 = q.double(), v.double()
    key = shared_keys(q64)
    n = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(v64)
    cols = torch.arange(n, device=q.device)[None, :]
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=q.device)[:, None]
        scores = (q64[..., rows[:, 0], :] @ key.transpose(-1, -2)) * scale  # (B, H, c, N)
        alone = rows == 0 if causal else torch.full_like(rows, n == 1, dtype=torch.bool)
        blocked = (cols == rows) & ~alone
        if causal:
            blocked |= cols > rows
        out[..., rows[:, 0], :] = torch.softmax(scores.masked_fill(blocked, float("-inf")), -1) @ v64
    return out
