"""The module of the fixed sparse patterns (Sparse Transformer, https://arxiv.org/abs/1904.10509;
BigBird, https://arxiv.org/abs/2007.14062): attention under a pattern, q, k, v (B, H, N, D) ->
(B, H, N, D), on a compiled FlexAttention kernel (CUDA; its block mask built once, in the factory) or
the blocked CPU kernel of :mod:`attnbench.methods.sparse.blocked`.

``local`` also decodes from a ring of the last ``window`` keys and values; ``local`` and ``strided``
attend within packed documents through the pattern intersected with "same document".
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

import torch.nn.functional as F

from attnbench.compiling import allow_recompiles, compile_failure
from attnbench.decode_state import RingCache
from attnbench.flops import attention_flops
from attnbench.methods.sparse.blocked import _Part, blocked_attention, plan
from attnbench.methods.sparse.patterns import DocumentPattern, LocalPattern, Pattern, StridedPattern
from attnbench.registry import BuildContext, Unsupported
from attnbench.varlen import Documents, Packed


def flex_block_mask(pattern: Pattern, device: torch.device):
    """FlexAttention block mask of ``pattern`` (its predicate as the mask_mod)."""
    from torch.nn.attention.flex_attention import create_block_mask

    pattern.to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.allowed(q_idx, kv_idx)

    return create_block_mask(mask_mod, None, None, pattern.n, pattern.n, device=device,
                             _compile=device.type == "cuda")


class SparseAttention(nn.Module):
    """Attention under a fixed pattern, on FlexAttention (compiled once here) or the blocked kernel.

    The FlexAttention warm-up runs at batch 1 (the build context has no batch size); another batch
    size recompiles once more, inside the harness's untimed warm-up calls."""

    def __init__(self, pattern: Pattern, ctx: BuildContext, kernel: str):
        super().__init__()
        self.pattern = pattern
        self.build_ctx, self.kernel_param = ctx, kernel
        if kernel == "auto":
            kernel = "flex" if ctx.device.type == "cuda" else "blocked"
        self.kernel = kernel
        self._stats: dict = {"kernel": self.kernel, "compiled": False}
        parts = plan(pattern)  # CPU, cheap: O(allowed pairs); also gives the exact density
        allowed = sum(int(p.mask.sum()) for p in parts)
        self._stats["density"] = allowed / ctx.n**2
        if self.kernel == "blocked":
            self._whole = [p.whole for p in parts]
            for i, p in enumerate(parts):  # buffers: counted as the method's state, moved by .to()
                for field in ("rows", "cols", "mask"):
                    self.register_buffer(f"{field}{i}", getattr(p, field).to(ctx.device),
                                         persistent=False)
            scored = sum(p.mask.numel() for p in parts)
        else:
            self._init_flex(ctx)
            scored = (1 - self.block_mask.sparsity() / 100) * ctx.n**2
        self._stats["kernel_density"] = scored / ctx.n**2  # share of the n×n scores evaluated

    def _init_flex(self, ctx: BuildContext):
        from torch.nn.attention.flex_attention import flex_attention

        def sync():
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)

        try:
            allow_recompiles()
            self.block_mask = flex_block_mask(self.pattern, ctx.device)
            self.flex = torch.compile(flex_attention)
            shape = (1, ctx.heads, ctx.n, ctx.head_dim)
            q, k, v = (torch.randn(shape, device=ctx.device, dtype=ctx.dtype) for _ in range(3))
            t0 = time.perf_counter()
            self.flex(q, k, v, block_mask=self.block_mask)
            sync()
            t1 = time.perf_counter()
            if ctx.device.type == "cuda":  # compiled FlexAttention has no backward on CPU
                q, k, v = (t.requires_grad_() for t in (q, k, v))
                self.flex(q, k, v, block_mask=self.block_mask).sum().backward()
                sync()
        except Exception as exc:  # noqa: BLE001 - inductor/triton fail in many ways
            raise compile_failure("FlexAttention", exc) from exc
        self._stats.update(compiled=True, compile_s=t1 - t0)
        if ctx.device.type == "cuda":
            self._stats["compile_bwd_s"] = time.perf_counter() - t1

    def forward(self, q, k, v):
        if self.kernel == "flex":
            return self.flex(q, k, v, block_mask=self.block_mask)
        parts = [_Part(*(getattr(self, f"{field}{i}") for field in ("rows", "cols", "mask")), whole)
                 for i, whole in enumerate(self._whole)]
        return blocked_attention(q, k, v, parts, 1.0 / math.sqrt(q.shape[-1]))

    def stats(self) -> dict:
        return dict(self._stats)

    def flops(self, q, k, v) -> float:
        """Over the pattern's allowed pairs (``density``·n², causal included); the pairs the kernel
        also scores inside partly allowed blocks (``kernel_density``) are not useful work."""
        b, h, n, d = q.shape
        return attention_flops(b, h, d, self._stats["density"] * n * n, v.shape[-1])

    # decode (local only): a ring of the last `window` keys and values

    decode_graphs = True

    def init_state(self, q, k, v, capacity=None):
        if not isinstance(self.pattern, LocalPattern) or not self.pattern.causal:
            raise Unsupported("decode needs the causal local pattern")
        return RingCache(k, v, self.pattern.window)

    def step(self, q_t, k_t, v_t, state: RingCache):
        state.append(k_t, v_t)  # query t sees t - window < j <= t: the ring after the write
        mask = state.valid().view(1, 1, 1, -1)  # (1, 1, 1, window)
        return F.scaled_dot_product_attention(q_t, state.k, state.v, attn_mask=mask), state

    def pack(self, docs: Documents) -> nn.Module:
        if not isinstance(self.pattern, (LocalPattern, StridedPattern)):
            raise Unsupported("packed documents need a pattern that depends on i - j only")
        return SparsePacked(docs, SparseAttention(DocumentPattern(self.pattern, docs),
                                                  self.build_ctx, self.kernel_param))


class SparsePacked(Packed):
    """A pattern within packed documents: the sparse kernel on the intersected pattern, the exact
    reference run per document."""

    def __init__(self, docs: Documents, inner: SparseAttention):
        super().__init__(docs, inner.pattern.causal, inner.kernel)
        self.inner = inner

    def forward(self, q, k, v):
        return self.inner(q, k, v)

    def stats(self) -> dict:
        return {**self.inner.stats(), **super().stats()}
