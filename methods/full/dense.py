"""``naive`` and ``sdpa``: exact softmax attention (Vaswani et al., 2017,
https://arxiv.org/abs/1706.03762) on torch's dense paths.

``naive`` holds the (B, H, N, N) scores in memory, as the Transformer the Linformer paper compared
against did; ``sdpa`` calls ``torch.nn.functional.scaled_dot_product_attention`` with a forced backend
or PyTorch's pick (FlashAttention, https://arxiv.org/abs/2205.14135, among them). q, k, v
(B, H, N, D) -> (B, H, N, D). Both decode from a growing KV cache and attend within packed documents
through a dense mask; ``sdpa`` on CUDA through torch's variable-length attention where the installed
torch has it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.decode_state import KVCache
from attnbench.flops import attention_flops, dense_pairs
from attnbench.registry import BuildContext
from attnbench.varlen import DenseMaskPacked, Documents, Packed


def exact_flops(q, k, v, causal: bool) -> float:
    """Forward FLOPs of softmax attention over the allowed pairs (:mod:`attnbench.flops`)."""
    b, h, n, d = q.shape
    return attention_flops(b, h, d, dense_pairs(n, k.shape[-2], causal), v.shape[-1])


class NaiveAttention(nn.Module):
    """softmax(QKᵀ/√d)·V with the (B, H, N, N) matrix in memory."""

    def __init__(self, causal: bool, device: torch.device = torch.device("cpu")):
        super().__init__()
        self.causal = causal
        self.device = device

    def forward(self, q, k, v):
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
        if self.causal:
            n = q.shape[-2]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v  # (B, H, N, D)

    def flops(self, q, k, v):
        return exact_flops(q, k, v, self.causal)

    def init_state(self, q, k, v, capacity=None):
        return KVCache(k, v, capacity)

    def step(self, q_t, k_t, v_t, state: KVCache):
        state.append(k_t, v_t)
        scale = 1.0 / math.sqrt(q_t.shape[-1])
        scores = (q_t @ state.keys().transpose(-1, -2)) * scale  # (B, H, 1, L)
        return torch.softmax(scores, dim=-1) @ state.values(), state

    def pack(self, docs: Documents) -> nn.Module:
        return DenseMaskPacked(docs, self.causal, _masked_naive, docs_device(self))


def docs_device(module: nn.Module) -> torch.device:
    """Where a module without buffers runs: its ``device`` attribute, else the CPU."""
    return getattr(module, "device", torch.device("cpu"))


def _masked_naive(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


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
    def __init__(self, backend: str, causal: bool, ctx: BuildContext | None = None):
        super().__init__()
        self.backend = backend
        self.causal = causal
        self.build_ctx = ctx

    def _kernel(self):
        if self.backend == "auto":
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(_backend_enum(self.backend))

    def forward(self, q, k, v):
        with self._kernel():
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)

    def flops(self, q, k, v):
        return exact_flops(q, k, v, self.causal)

    def init_state(self, q, k, v, capacity=None):
        return KVCache(k, v, capacity)

    def _step_kernel(self):
        """The backends a decode step may use. Under ``auto`` cuDNN is left out: its attention builds
        an execution plan per shape, and a step's key length grows by one every step, so each step
        would pay a new plan (35 ms per token on an H200 at any n), which no decoder does."""
        if self.backend != "auto":
            return self._kernel()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                            SDPBackend.MATH])

    def step(self, q_t, k_t, v_t, state: KVCache):
        state.append(k_t, v_t)
        with self._step_kernel():  # one query over every past key: no mask
            return F.scaled_dot_product_attention(q_t, state.keys(), state.values()), state

    def pack(self, docs: Documents) -> nn.Module:
        ctx = self.build_ctx
        if ctx is not None and ctx.device.type == "cuda" and ctx.dtype in (torch.float16,
                                                                           torch.bfloat16):
            varlen = _varlen_attn()
            if varlen is not None:
                return VarlenPacked(docs, self.causal, varlen)
        device = ctx.device if ctx is not None else torch.device("cpu")
        return DenseMaskPacked(docs, self.causal, self._masked, device)

    def _masked(self, q, k, v, allowed):
        with self._kernel():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _varlen_attn():
    """torch.nn.attention.varlen.varlen_attn where the installed torch has it, else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


class VarlenPacked(Packed):
    """Packed documents through torch's variable-length FlashAttention: the batch's rows flattened to
    (B·N, H, D) tokens with cumulative document offsets; nothing outside a document is scored."""

    def __init__(self, docs: Documents, causal: bool, varlen):
        super().__init__(docs, causal, "varlen_attn")
        import inspect

        self.varlen = varlen
        names = inspect.signature(varlen).parameters
        self.causal_kw = ({"is_causal": causal} if "is_causal" in names else
                          {"window_size": (-1, 0) if causal else (-1, -1)})
        self._cu: dict = {}

    def forward(self, q, k, v):
        b, h, n, d = q.shape
        key = (b, q.device)
        if key not in self._cu:
            self._cu[key] = self.docs.cu_seqlens(b, q.device)
        cu = self._cu[key]
        longest = max(self.docs.lengths)
        flat = [t.transpose(1, 2).reshape(b * n, h, -1) for t in (q, k, v)]  # (B·N, H, D)
        out = self.varlen(*flat, cu, cu, longest, longest, **self.causal_kw)
        return out.view(b, n, h, -1).transpose(1, 2)  # (B, H, N, D)

