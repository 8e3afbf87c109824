"""Linformer: Self-Attention with Linear Complexity (Wang et al., 2020). https://arxiv.org/abs/2006.04768

Keys and values are projected along the sequence axis from n rows to k rows (K ↦ E·K, V ↦ F·V), and
softmax attention then runs over those k rows, so cost and memory grow as n·k instead of n².
q (B, H, N, D), k and v (B, H, m ≤ n, D) -> (B, H, N, D); E and F are (k, n) (per head (H, k, n)).

``attention.py`` the module (torch path), ``linformer_triton.py`` and ``attention_triton.py`` the
forward in Triton, ``layout.py`` the products both share. Not causal: every projected row mixes all
positions. Projections, sharing and the kernels' timings: results/README.md, "Notes from the method
modules".
"""
from __future__ import annotations

from torch import nn

from attnbench.methods.linformer.attention import (CONSTRAINTS, LinformerAttention, LinformerParams,
                                                   layer_k, projection_matrices)
from attnbench.registry import BuildContext, Limit, register_method

__all__ = ["LinformerAttention", "LinformerParams", "layer_k", "projection_matrices"]


def _rank(p: LinformerParams, stats: dict, head_dim: int) -> int:
    """softmax(Q(EK)ᵀ) has k columns: rank at most k."""
    return int(stats.get("k", layer_k(p, 0)))


# k = n with mean pooling: windows of one position, E = F = I, softmax attention itself. The registry's
# k < n constraint refuses it (it saves nothing in a sweep), so the limit builds the module directly.
LIMIT = Limit(params=lambda ctx: {"k": ctx.n, "projection": "mean_pool"}, build=LinformerAttention,
              note="k = n, mean pooling over windows of one position: E = F = I")


@register_method("linformer", family="low_rank", exact=False, params=LinformerParams, causal=False,
                 constraints=CONSTRAINTS, budget="k", limit=LIMIT, rank=_rank)
def build_linformer(p: LinformerParams, ctx: BuildContext) -> nn.Module:
    """Linformer: keys and values projected along the sequence from n to k rows."""
    return LinformerAttention(p, ctx)  # the registry checks CONSTRAINTS before it calls this
