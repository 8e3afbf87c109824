"""Nyströmformer (Xiong et al., 2021). https://arxiv.org/abs/2102.03902

Softmax attention is approximated by the Nyström method with m landmarks, the means of m contiguous
segments of the queries and of the keys: softmax(QK̃ᵀ)·pinv(softmax(Q̃K̃ᵀ))·softmax(Q̃Kᵀ)·V, where the
m×m pseudo-inverse comes from the paper's iteration rather than an SVD. q, k, v (B, H, N, D) ->
(B, H, N, D); landmarks (B, H, m, D); n must be a multiple of m.

``attention.py`` the module, ``pinv.py`` the iteration in torch, ``nystrom_triton.py`` in Triton,
``split_keys.py`` few-query attention over key ranges. Choices, omissions and timings:
results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

from torch import nn

from attnbench.methods.nystrom.attention import (FUSED_MIN_MATRICES, NystromAttention, NystromParams,
                                                 check_kernel, default_kernel)
from attnbench.methods.nystrom.pinv import iterative_pinv
from attnbench.registry import BuildContext, Limit, register_method

__all__ = ["FUSED_MIN_MATRICES", "NystromAttention", "NystromParams", "default_kernel",
           "iterative_pinv"]


def _landmark_constraint(p: NystromParams, ctx: BuildContext) -> str | None:
    if p.num_landmarks < 1 or p.pinv_iters < 0:
        return f"invalid knobs: num_landmarks={p.num_landmarks}, pinv_iters={p.pinv_iters}"
    if p.num_landmarks > ctx.n or ctx.n % p.num_landmarks:
        return f"n={ctx.n} must be a multiple of num_landmarks={p.num_landmarks} (no padding)"
    return None


# landmarks = n: the landmarks are the tokens, so the output is A·pinv(A)·A·V = A·V with A the softmax
# attention matrix; the exact pseudo-inverse leaves only rounding (the iterative one would converge).
LIMIT = Limit(params=lambda ctx: {"num_landmarks": ctx.n, "pinv": "exact"},
              note="num_landmarks = n with the exact pseudo-inverse: A·pinv(A)·A·V = A·V")


def _rank(p: NystromParams, stats: dict, head_dim: int) -> int:
    """softmax(QK̃ᵀ)·pinv·softmax(Q̃Kᵀ) factors through m landmarks: rank at most m."""
    return int(p.num_landmarks)


@register_method("nystrom", family="landmark", exact=False, params=NystromParams, causal=False,
                 constraints=(_landmark_constraint, check_kernel), budget="num_landmarks",
                 limit=LIMIT, rank=_rank)
def build_nystrom(p: NystromParams, ctx: BuildContext) -> nn.Module:
    """Nyströmformer: segment-mean landmarks and an iterative pseudo-inverse, O(n·m·d)."""
    return NystromAttention(p, ctx)
