"""Uniform attention: a control, not a method anyone would use.

Every query returns the mean of the values it may see (all of them; causally, those at positions ≤ its
own), which is softmax attention with every score equal — the attention matrix 𝟙𝟙ᵀ/n. It carries no
content-based routing at all, so a task solved by a model built with it did not need attention to be
solved. The ``train`` level uses it that way: a task "needs attention" only if a model with ``uniform``
stays near chance while one with exact attention succeeds (multi-query associative recall, Arora et
al., Zoology, https://arxiv.org/abs/2312.04927, shows such a gap for attention-free mixers).

forward(q, k, v): (B, H, N, D) -> (B, H, N, D); no parameters; O(n·d).
"""
from __future__ import annotations

import torch
from torch import nn

from attnbench.registry import BuildContext, Limit, NoParams, register_method


class UniformAttention(nn.Module):
    """The (causal) running mean of V, broadcast to every query."""

    def __init__(self, causal: bool = False):
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        if not self.causal:
            return v.mean(dim=-2, keepdim=True).expand(*v.shape[:-2], n, v.shape[-1]).contiguous()
        acc = torch.promote_types(v.dtype, torch.float32)  # fp16/bf16 sums accumulate in fp32
        counts = torch.arange(1, v.shape[-2] + 1, device=v.device, dtype=acc)  # (N,)
        sums = v.to(acc).cumsum(dim=-2)  # (B, H, N, D)
        return (sums / counts[:, None]).to(v.dtype)[..., :n, :]

    def flops(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
        return float(v.numel())


def uniform_reference(module: UniformAttention, q, k, v) -> torch.Tensor:
    """Softmax attention with all scores equal, written out: (n, n) weights 1/(number seen)."""
    n, m = q.shape[-2], k.shape[-2]
    weights = torch.ones(n, m, dtype=v.dtype, device=v.device)  # (N, N)
    if module.causal:
        weights = weights.tril()
    return (weights / weights.sum(-1, keepdim=True)) @ v  # (B, H, N, D)


LIMIT = Limit(params={}, reference=uniform_reference,
              note="its own attention: softmax with every score equal (the mean of V)")


@register_method("uniform", family="other", exact=False, params=NoParams, causal=True, limit=LIMIT,
                 rank=lambda p, stats, head_dim: 1)
def build_uniform(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Control: every query returns the mean of V (no content-based attention at all)."""
    return UniformAttention(ctx.causal)
