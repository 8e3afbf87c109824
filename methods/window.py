"""Sliding-window attention as its users write it with torch's own tools: the peers of our ``local``.

Beltagy et al. (Longformer, 2020, https://arxiv.org/abs/2004.05150) popularised the window; each
query i attends to the keys with |i − j| < window (causal: 0 <= i − j < window), exactly the
pattern of ``local`` (:mod:`attnbench.methods.sparse`). q, k, v (B, H, N, D) -> (B, H, N, D).

- ``flex_window``: FlexAttention (https://pytorch.org/blog/flexattention/) with attention-gym's
  sliding-window ``mask_mod``, its block mask built once in the factory; registered for CUDA.
- ``sdpa_window``: ``scaled_dot_product_attention`` with a boolean (n, n) band mask built once (SDPA
  has no window argument), which rules out the FlashAttention backend.

``report --pairs local=flex_window,local=sdpa_window`` puts our time over theirs, cell by cell; more
in results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.compiling import allow_recompiles, compile_failure
from attnbench.flops import attention_flops, window_pairs
from attnbench.params import Positive
from attnbench.registry import BuildContext, Limit, register_method


@dataclass(frozen=True)
class WindowParams:
    window: Positive = 256  # w: query i sees keys with |i - j| < w (causal: 0 <= i - j < w), as `local`


def band(n: int, window: int, causal: bool, device=None) -> torch.Tensor:
    """The (n, n) boolean window mask, True = may attend."""
    pos = torch.arange(n, device=device)
    diff = pos[:, None] - pos[None, :]  # i - j
    allowed = diff.abs() < window
    return allowed & (diff >= 0) if causal else allowed


def window_mask_mod(window: int, causal: bool):
    """attention-gym's sliding-window mask_mod (causal: also q_idx >= kv_idx)."""
    def sliding_window(b, h, q_idx, kv_idx):
        diff = q_idx - kv_idx
        near = (diff < window) & (diff > -window)
        return near & (diff >= 0) if causal else near

    return sliding_window


class WindowAttention(nn.Module):
    """Base: the window, causality and the FLOP count over the allowed pairs."""

    def __init__(self, p: WindowParams, ctx: BuildContext):
        super().__init__()
        self.window, self.causal = p.window, ctx.causal
        self._stats: dict = {"density": window_pairs(ctx.n, p.window, ctx.causal) / ctx.n ** 2}

    def flops(self, q, k, v) -> float:
        b, h, n, d = q.shape
        return attention_flops(b, h, d, window_pairs(n, self.window, self.causal), v.shape[-1])

    def stats(self) -> dict:
        return dict(self._stats)


class FlexWindow(WindowAttention):
    def __init__(self, p: WindowParams, ctx: BuildContext):
        super().__init__(p, ctx)
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        cuda = ctx.device.type == "cuda"
        try:
            allow_recompiles()
            self.block_mask = create_block_mask(window_mask_mod(p.window, ctx.causal), None, None,
                                                ctx.n, ctx.n, device=ctx.device, _compile=cuda)
            self.flex = torch.compile(flex_attention) if cuda else flex_attention
            shape = (1, ctx.heads, ctx.n, ctx.head_dim)
            q, k, v = (torch.randn(shape, device=ctx.device, dtype=ctx.dtype, requires_grad=cuda)
                       for _ in range(3))
            t0 = time.perf_counter()
            out = self.flex(q, k, v, block_mask=self.block_mask)
            if cuda:  # compile the backward too, outside the timed region
                out.sum().backward()
                torch.cuda.synchronize(ctx.device)
        except Exception as exc:  # noqa: BLE001 - inductor/triton fail in many ways
            raise compile_failure("FlexAttention", exc) from exc
        self._stats.update(compiled=cuda, compile_s=time.perf_counter() - t0,
                           kernel_density=1 - self.block_mask.sparsity() / 100)

    def forward(self, q, k, v):
        return self.flex(q, k, v, block_mask=self.block_mask)


class SdpaWindow(WindowAttention):
    def __init__(self, p: WindowParams, ctx: BuildContext):
        super().__init__(p, ctx)
        self.register_buffer("mask", band(ctx.n, p.window, ctx.causal, ctx.device), persistent=False)
        self._stats["mask_mib"] = ctx.n ** 2 / 2 ** 20

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


def _window(p: WindowParams, ctx: BuildContext) -> str | None:
    return None if p.window >= 1 else f"window={p.window} must be >= 1"


LIMIT = Limit(params=lambda ctx: {"window": ctx.n}, note="window = n: every |i - j| < n")
COMMON = dict(family="sparse", exact=False, causal=True, backward=True, params=WindowParams,
              budget="window", constraints=(_window,), limit=LIMIT)


@register_method("flex_window", devices=("cuda",), **COMMON)
def build_flex_window(p: WindowParams, ctx: BuildContext) -> nn.Module:
    """FlexAttention with attention-gym's sliding-window mask (the peer of `local`)."""
    return FlexWindow(p, ctx)


@register_method("sdpa_window", **COMMON)
def build_sdpa_window(p: WindowParams, ctx: BuildContext) -> nn.Module:
    """SDPA with a boolean sliding-window mask (torch has no window argument)."""
    return SdpaWindow(p, ctx)
