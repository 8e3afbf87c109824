"""Exact softmax attention (Vaswani et al., 2017, https://arxiv.org/abs/1706.03762): the baselines.

softmax(QKᵀ/√d)·V on q, k, v (B, H, N, D) -> (B, H, N, D), four ways. ``naive`` materialises the n×n
probability matrix and ``sdpa`` is PyTorch's fused scaled-dot-product attention with a choosable
backend (FlashAttention, https://arxiv.org/abs/2205.14135, among them), both in ``dense.py``;
``xformers`` is xformers' memory-efficient attention (Rabe & Staats, https://arxiv.org/abs/2112.05682),
in ``xformers_ops.py``; ``flex`` is the same attention through FlexAttention
(https://arxiv.org/abs/2412.05496), compiled on CUDA, in ``flex.py``. All but ``xformers`` decode from
a KV cache and attend within packed documents: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import torch
from torch import nn

from attnbench.methods.full.dense import (NaiveAttention, SdpaAttention, SdpaParams, _sdpa_reason,
                                          exact_flops)
from attnbench.methods.full.flex import FlexAttention
from attnbench.methods.full.xformers_ops import (XformersAttention, _dispatched_name, _reasons,
                                                 extension_failure, xformers_candidates)
from attnbench.registry import BuildContext, NoParams, Unsupported, register_method

__all__ = ["FlexAttention", "NaiveAttention", "SdpaAttention", "SdpaParams", "XformersAttention",
           "exact_flops"]


@register_method("naive", family="exact", exact=True, params=NoParams, decode=True, varlen=True)
def build_naive(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Materialised softmax attention, the paper-era baseline."""
    return NaiveAttention(ctx.causal, ctx.device)



@register_method("sdpa", family="exact", exact=True, params=SdpaParams, decode=True, varlen=True)
def build_sdpa(p: SdpaParams, ctx: BuildContext) -> nn.Module:
    """torch.nn.functional.scaled_dot_product_attention (flash / efficient / cudnn / math)."""
    if (why := _sdpa_reason(p.backend, ctx)) is not None:
        raise Unsupported(why)
    return SdpaAttention(p.backend, ctx.causal, ctx)



@register_method("xformers", family="exact", exact=True, params=NoParams, devices=("cuda",),
                 dtypes=("fp16", "bf16", "fp32"), requires=("xformers",),
                 install_hint="pip install 'attnbench[xformers]'")
def build_xformers(p: NoParams, ctx: BuildContext) -> nn.Module:
    """xformers.ops.memory_efficient_attention (optional dependency; rows name the op that ran)."""
    import xformers.ops as xops
    from xformers.ops import fmha

    shape = (1, min(ctx.n, 256), ctx.heads, ctx.head_dim)  # (B, N, H, D), xformers' layout
    probe = torch.randn(shape, dtype=ctx.dtype, device=ctx.device)
    bias = xops.LowerTriangularMask() if ctx.causal else None
    errors = []
    for name, op in xformers_candidates(fmha):
        try:
            xops.memory_efficient_attention(probe, probe, probe, attn_bias=bias, op=op)
        except Exception as exc:  # noqa: BLE001 - xformers raises many kinds for "no operator"
            reasons = _reasons(op, fmha, probe, bias)
            errors.append(f"{name}: {reasons or str(exc).splitlines()[0][:160]}")
            continue
        if op is None:
            name = _dispatched_name(fmha, fmha.Inputs(query=probe, key=probe, value=probe,
                                                      attn_bias=bias), False)
        return XformersAttention(ctx.causal, op, name)
    failure = extension_failure()
    cause = f"its C++/CUDA extension did not load ({failure}); " if failure else ""
    raise Unsupported("xformers has no working operator here: " + cause + "; ".join(errors))



# CUDA only: elsewhere FlexAttention runs its unfused reference implementation (it materialises every
# score, has no backward on CPU and takes ~80 ms per decode step there), which is no benchmark. The
# module still builds on CPU, where the tests check its forward, decode and document masks.
@register_method("flex", family="exact", exact=True, params=NoParams, devices=("cuda",),
                 decode=True, varlen=True)
def build_flex(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Softmax attention through FlexAttention (compiled): causal block mask, document masks for
    packed sequences, and its decoding kernel over a KV cache."""
    return FlexAttention(ctx)
