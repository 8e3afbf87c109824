"""The linear-recurrent attentions people train today, on fla-core's Triton kernels.

Core level (``ops.py``, ``core.py``): ``gla`` (Gated Linear Attention, Yang et al., 2023,
https://arxiv.org/abs/2312.06635), ``deltanet`` (https://arxiv.org/abs/2102.11174,
https://arxiv.org/abs/2406.06484), ``gated_deltanet`` (https://arxiv.org/abs/2412.06464), ``retnet``
(https://arxiv.org/abs/2307.08621), ``based`` (https://arxiv.org/abs/2402.18668), ``fla_linear``
(https://arxiv.org/abs/2006.16236) and ``nsa`` (https://arxiv.org/abs/2502.11089), on q, k, v
(B, H, N, D) -> (B, H, N, D) with seeded gates. Layer level (``layers.py``): ``gla_layer``,
``deltanet_layer``, ``gated_deltanet_layer`` and ``nsa_layer`` on (B, N, d_model), with the gates
projected from the hidden states. All are causal, CUDA only, and approximate nothing: rows carry
``ref_rel_err`` against the operator in float64. Gate laws, the build-time checks and what is left
out: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

from torch import nn

from attnbench.methods.recurrent import layers  # noqa: F401 - registers the *_layer methods
from attnbench.methods.recurrent.core import (COMMON, OWN, NsaParams, RecurrentCore, _based_dim, _nsa_shape,
                                              build_core, causal_only)
from attnbench.methods.recurrent.ops import (BasedOp, DeltaOp, GatedDeltaOp, GlaOp, LinearOp, NsaOp, Op,
                                             RetentionOp, heads_first)
from attnbench.registry import BuildContext, NoParams, register_method

__all__ = ["OWN", "BasedOp", "DeltaOp", "GatedDeltaOp", "GlaOp", "LinearOp", "NsaOp", "NsaParams", "Op",
           "RecurrentCore", "RetentionOp", "build_core", "causal_only", "heads_first", "layers"]


@register_method("gla", params=NoParams, constraints=(causal_only,), levels=("core",), **COMMON)
def build_gla(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Gated Linear Attention (fla chunk_gla): per-channel data-dependent decay."""
    return build_core(GlaOp(), ctx)


@register_method("deltanet", params=NoParams, constraints=(causal_only,), levels=("core",),
                 dtypes=("fp16", "bf16"), **COMMON)
def build_deltanet(p: NoParams, ctx: BuildContext) -> nn.Module:
    """DeltaNet (fla chunk_delta_rule): the delta rule with L2-normalised q, k."""
    return build_core(DeltaOp(), ctx)


@register_method("gated_deltanet", params=NoParams, constraints=(causal_only,), levels=("core",),
                 **COMMON)
def build_gated_deltanet(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Gated DeltaNet (fla chunk_gated_delta_rule): delta rule with a scalar decay."""
    return build_core(GatedDeltaOp(), ctx)


@register_method("retnet", params=NoParams, constraints=(causal_only,), **COMMON)
def build_retnet(p: NoParams, ctx: BuildContext) -> nn.Module:
    """RetNet retention (fla chunk_retention = simple GLA with fixed per-head decays)."""
    return build_core(RetentionOp(), ctx)


@register_method("based", params=NoParams, constraints=(causal_only, _based_dim), **COMMON)
def build_based(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Based (fla parallel_based): 2nd-order Taylor kernel attention, normalised."""
    return build_core(BasedOp(), ctx)


@register_method("fla_linear", params=NoParams, constraints=(causal_only,), **COMMON)
def build_fla_linear(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Causal elu+1 linear attention on fla's chunk_linear_attn (pairs with `linear`)."""
    return build_core(LinearOp(), ctx)


@register_method("nsa", params=NsaParams, constraints=(causal_only, _nsa_shape), levels=("core",),
                 **COMMON)
def build_nsa(p: NsaParams, ctx: BuildContext) -> nn.Module:
    """Native Sparse Attention (fla parallel_nsa): compressed + top-k selected blocks, GQA."""
    return build_core(NsaOp(p.group, p.block_size, p.block_counts), ctx)
