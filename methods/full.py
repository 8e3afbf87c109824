"""Exact softmax attention (Vaswani et al., 2017, https://arxiv.org/abs/1706.03762): the baselines.

``naive`` materialises the n×n probability matrix, as the Transformer the Linformer paper compared
against did; ``sdpa`` is PyTorch's fused scaled-dot-product attention with a choosable backend
(FlashAttention, https://arxiv.org/abs/2205.14135, among them); ``xformers`` is xformers'
memory-efficient attention (Rabe & Staats, https://arxiv.org/abs/2112.05682).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import BuildContext, NoParams, Unsupported, register_method


class NaiveAttention(nn.Module):
    """softmax(QKᵀ/√d)·V with the (B, H, N, N) matrix in memory."""

    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
        if self.causal:
            n = q.shape[-2]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v  # (B, H, N, D)

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        return 4.0 * b * h * n * k.shape[-2] * d / (2 if self.causal else 1)


@register_method("naive", family="exact", exact=True, params=NoParams)
def build_naive(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Materialised softmax attention, the paper-era baseline."""
    return NaiveAttention(ctx.causal)


SdpaBackendName = Literal["auto", "math", "flash", "efficient", "cudnn"]


def _backend_enum(name: str):
    from torch.nn.attention import SDPBackend

    return {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}[name]


def _sdpa_reason(backend: str, ctx: BuildContext) -> str | None:
    """Why a forced SDPA backend cannot run this case, checked with PyTorch's own dispatcher."""
    if backend in ("auto", "math"):
        return None
    if ctx.device.type != "cuda":
        return f"sdpa backend {backend!r} needs CUDA (device is {ctx.device.type})"
    from torch.backends.cuda import (SDPAParams, can_use_cudnn_attention, can_use_efficient_attention,
                                     can_use_flash_attention)

    check = {"flash": can_use_flash_attention, "efficient": can_use_efficient_attention,
             "cudnn": can_use_cudnn_attention}[backend]
    shape = (1, ctx.heads, ctx.n, ctx.head_dim)
    q = torch.empty(shape, dtype=ctx.dtype, device=ctx.device)
    try:
        params = SDPAParams(q, q, q, None, 0.0, ctx.causal, False)
    except TypeError:  # older signature without enable_gqa
        params = SDPAParams(q, q, q, None, 0.0, ctx.causal)
    if check(params, False):
        return None
    return (f"sdpa backend {backend!r} cannot run dtype {ctx.dtype} head_dim {ctx.head_dim} "
            f"on {torch.cuda.get_device_name(ctx.device)}")


@dataclass(frozen=True)
class SdpaParams:
    backend: SdpaBackendName = "auto"  # auto lets PyTorch pick the fastest kernel that applies


class SdpaAttention(nn.Module):
    def __init__(self, backend: str, causal: bool):
        super().__init__()
        self.backend = backend
        self.causal = causal

    def forward(self, q, k, v):
        ctx = contextlib.nullcontext()
        if self.backend != "auto":
            from torch.nn.attention import sdpa_kernel

            ctx = sdpa_kernel(_backend_enum(self.backend))
        with ctx:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        return 4.0 * b * h * n * k.shape[-2] * d / (2 if self.causal else 1)


@register_method("sdpa", family="exact", exact=True, params=SdpaParams)
def build_sdpa(p: SdpaParams, ctx: BuildContext) -> nn.Module:
    """torch.nn.functional.scaled_dot_product_attention (flash / efficient / cudnn / math)."""
    if (why := _sdpa_reason(p.backend, ctx)) is not None:
        raise Unsupported(why)
    return SdpaAttention(p.backend, ctx.causal)


class XformersAttention(nn.Module):
    def __init__(self, causal: bool, op):
        super().__init__()
        self.causal = causal
        self.op = op

    def forward(self, q, k, v):
        import xformers.ops as xops

        bias = xops.LowerTriangularMask() if self.causal else None
        # xformers wants (B, N, H, D)
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_bias=bias, op=self.op)
        return out.transpose(1, 2)


@register_method("xformers", family="exact", exact=True, params=NoParams, devices=("cuda",),
                 dtypes=("fp16", "bf16", "fp32"), requires=("xformers",),
                 install_hint="pip install 'attnbench[xformers]'")
def build_xformers(p: NoParams, ctx: BuildContext) -> nn.Module:
    """xformers.ops.memory_efficient_attention (optional dependency)."""
    import xformers.ops as xops

    # Default dispatch finds no operator when xformers' own CUDA extension was built for another torch;
    # the ops backed by PyTorch's kernels still work, so try dispatch first and then those explicitly.
    shape = (1, min(ctx.n, 128), ctx.heads, ctx.head_dim)
    probe = torch.randn(shape, dtype=ctx.dtype, device=ctx.device)
    bias = xops.LowerTriangularMask() if ctx.causal else None
    errors = []
    candidates = [None]
    fmha = getattr(xops, "fmha", None)
    for name in ("cutlass", "flash", "triton_splitk", "ck"):
        mod = getattr(fmha, name, None) if fmha else None
        if mod is not None and hasattr(mod, "FwOp"):
            candidates.append((mod.FwOp, getattr(mod, "BwOp", None)) if hasattr(mod, "BwOp")
                              else mod.FwOp)
    for op in candidates:
        try:
            xops.memory_efficient_attention(probe, probe, probe, attn_bias=bias, op=op)
            return XformersAttention(ctx.causal, op)
        except Exception as exc:  # noqa: BLE001 - xformers raises many kinds for "no operator"
            errors.append(f"{getattr(op, '__name__', op) if op else 'dispatch'}: "
                          f"{str(exc).splitlines()[0][:120]}")
    raise Unsupported("xformers has no working operator here: " + "; ".join(errors))
