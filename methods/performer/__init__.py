"""Kernel feature-map attention: Performer's FAVOR+ (``performer``) and elu+1 linear attention (``linear``).

``performer``: Rethinking Attention with Performers (Choromanski et al., 2020),
https://arxiv.org/abs/2009.14794. exp(qᵀk/√d) is the expectation of a product of random features
φ(x) = exp(ωᵀx − ‖x‖²/2)/√m, ω ~ N(0, I_d), x scaled by d^(-1/4), so attention becomes φ(Q)(φ(K)ᵀV)
and costs O(n·m·d) instead of O(n²·d). ``linear``: Transformers are RNNs (Katharopoulos et al.,
2020), https://arxiv.org/abs/2006.16236: the same factorisation with the deterministic feature map
elu(x)+1, an attention of its own rather than an estimate of softmax. q, k, v (B, H, N, D) ->
(B, H, N, D); features (B, H, N, m), or 2m for sin/cos; the decode state (B, H, F, D+1).

``features.py`` the feature maps, ``favor.py`` stabilised bidirectional FAVOR+, ``causal_linear.py``
causal prefix sums by chunks, ``attention.py`` the modules, ``state.py`` the decode state. How
fp16/bf16 stay in range, and decoding: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.methods.performer.attention import (FLA_LINEAR_MIN_N, LinearAttention, LinearParams,
                                                   PerformerAttention, PerformerParams, _compile_knob,
                                                   _positive_knobs)
from attnbench.methods.performer.features import resolve_nb_features
from attnbench.registry import BuildContext, Limit, register_method

__all__ = ["FLA_LINEAR_MIN_N", "LinearAttention", "LinearParams", "PerformerAttention", "PerformerParams"]


def _implied_attention(module: PerformerAttention, q, k, v) -> torch.Tensor:
    """The attention weights that the module's fixed features imply, materialised, times v."""
    return module.attention_matrix(q, k) @ v  # (B, H, N, D)


def linear_reference(module: LinearAttention, q, k, v) -> torch.Tensor:
    """elu+1 kernel attention by its definition: the (n, n) weights materialised and normalised."""
    qf, kf = (F.elu(x) + 1 for x in (q, k))
    scores = qf @ kf.transpose(-1, -2)  # (B, H, N, N)
    if module.causal:
        scores = scores.tril()
    return (scores / scores.sum(-1, keepdim=True)) @ v


# Random features have no exact limit (m → ∞ only in expectation): the stabilised, chunked forward must
# equal the attention its own fixed ω implies, and the error against softmax attention must fall as m
# grows (Monte Carlo error ~ 1/√m, so each 4× more features roughly halves it).
PERFORMER_LIMIT = Limit(params={}, reference=_implied_attention, converges=(8, 32, 128, 512),
                        note="random features: no exact limit; equals the attention its ω implies, "
                             "and its error falls as m grows")
# elu(x)+1 is not a softmax kernel: linear attention is exact against its own definition.
LINEAR_LIMIT = Limit(params={}, reference=linear_reference,
                     note="its own attention: normalised elu(q)+1 · elu(k)+1 weights, not softmax")


def _performer_rank(p: PerformerParams, stats: dict, head_dim: int) -> int:
    """φ(Q)φ(K)ᵀ has m (positive) or 2m (sin, cos) features: rank at most that."""
    m = int(stats.get("nb_features_used", resolve_nb_features(p.nb_features, head_dim)))
    return m if p.positive else 2 * m


def _linear_rank(p: LinearParams, stats: dict, head_dim: int) -> int:
    """elu+1 features have head_dim columns."""
    return int(head_dim)


@register_method("performer", family="kernel", exact=False, params=PerformerParams, causal=True,
                 constraints=(_positive_knobs, _compile_knob), budget="nb_features",
                 limit=PERFORMER_LIMIT, rank=_performer_rank, decode=True)
def build_performer(p: PerformerParams, ctx: BuildContext) -> nn.Module:
    """Performer FAVOR+: positive orthogonal random features, O(n·m·d)."""
    return PerformerAttention(p, ctx)


@register_method("linear", family="kernel", exact=False, params=LinearParams, causal=True,
                 constraints=(_positive_knobs,), limit=LINEAR_LIMIT, rank=_linear_rank, decode=True)
def build_linear(p: LinearParams, ctx: BuildContext) -> nn.Module:
    """Linear attention with the elu(x)+1 feature map, O(n·d²)."""
    return LinearAttention(p, ctx)
