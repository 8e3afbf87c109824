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

from attnbench.flops import attention_flops, dense_pairs
from attnbench.registry import BuildContext, NoParams, Unsupported, register_method


def exact_flops(q, k, v, causal: bool) -> float:
    """Forward FLOPs of softmax attention over the allowed pairs (:mod:`attnbench.flops`)."""
    b, h, n, d = q.shape
    return attention_flops(b, h, d, dense_pairs(n, k.shape[-2], causal), v.shape[-1])


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
        return exact_flops(q, k, v, self.causal)


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
        return exact_flops(q, k, v, self.causal)


@register_method("sdpa", family="exact", exact=True, params=SdpaParams)
def build_sdpa(p: SdpaParams, ctx: BuildContext) -> nn.Module:
    """torch.nn.functional.scaled_dot_product_attention (flash / efficient / cudnn / math)."""
    if (why := _sdpa_reason(p.backend, ctx)) is not None:
        raise Unsupported(why)
    return SdpaAttention(p.backend, ctx.causal)


class XformersAttention(nn.Module):
    """xformers' memory-efficient attention with an op chosen once at build time; inputs go in the
    (B, N, H, D) layout xformers expects (a transposed view, no copy)."""

    def __init__(self, causal: bool, op, op_name: str):
        super().__init__()
        self.causal = causal
        self.op = op
        self.op_name = op_name

    def forward(self, q, k, v):
        import xformers.ops as xops

        bias = xops.LowerTriangularMask() if self.causal else None
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2), attn_bias=bias, op=self.op)
        return out.transpose(1, 2)

    def stats(self) -> dict:
        return {"xformers_op": self.op_name}

    def flops(self, q, k, v):
        return exact_flops(q, k, v, self.causal)


def xformers_candidates(fmha) -> list[tuple[str, tuple | None]]:
    """(name, op) pairs to try: xformers' own dispatch first, then every forward op the installed
    xformers ships, each as the (FwOp, BwOp) pair ``memory_efficient_attention`` expects (BwOp may
    be None: a forward-only op). A bare FwOp class would fail with "type 'FwOp' is not
    subscriptable"."""
    out: list[tuple[str, tuple | None]] = [("dispatch", None)]
    for name in ("flash", "cutlass", "flash3", "triton_splitk", "ck", "ck_splitk",
                 "cutlass_blackwell"):
        mod = getattr(fmha, name, None)
        if mod is not None and hasattr(mod, "FwOp"):
            out.append((getattr(mod.FwOp, "NAME", name), (mod.FwOp, getattr(mod, "BwOp", None))))
    return out


def _dispatched_name(fmha, inp, needs_grad: bool) -> str:
    """The forward op xformers' dispatcher picks for ``inp`` (its NAME), or "dispatch"."""
    try:
        from xformers.ops.fmha.dispatch import _dispatch_fw

        return getattr(_dispatch_fw(inp, needs_grad), "NAME", "dispatch")
    except Exception:  # noqa: BLE001 - a private helper: only the label depends on it
        return "dispatch"


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
    raise Unsupported("xformers has no working operator here: " + "; ".join(errors))


def _reasons(op, fmha, probe, bias) -> str:
    """xformers' own words on why an op does not take these inputs."""
    if op is None:
        return ""
    try:
        why = op[0].not_supported_reasons(fmha.Inputs(query=probe, key=probe, value=probe,
                                                      attn_bias=bias))
    except Exception:  # noqa: BLE001
        return ""
    return ", ".join(why)[:200]
