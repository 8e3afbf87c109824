"""Fixed sparse attention patterns: sliding window (``local``), the Sparse Transformer's ``strided`` and
``fixed`` patterns (Child et al., 2019, https://arxiv.org/abs/1904.10509) and ``bigbird`` (Zaheer et
al., 2020, https://arxiv.org/abs/2007.14062).

Each query attends only to the keys a fixed, input-independent pattern allows, so cost and memory grow
with the number of allowed pairs instead of n². q, k, v (B, H, N, D) -> (B, H, N, D).

``patterns.py`` defines each pattern as one predicate allowed(i, j) (every kernel's single
definition), ``blocked.py`` is the CPU kernel, ``attention.py`` the module (FlexAttention on CUDA).
The kernels, decoding and packed documents: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from attnbench.methods.sparse.attention import SparseAttention, flex_block_mask
from attnbench.methods.sparse.patterns import _divisor_at_most, build_pattern, pattern_mask
from attnbench.params import NonNegative, Positive
from attnbench.registry import BuildContext, Limit, register_method

__all__ = ["BigBirdParams", "FixedParams", "LocalParams", "SparseAttention", "StridedParams",
           "build_pattern", "flex_block_mask", "pattern_mask"]

Kernel = Literal["auto", "flex", "blocked"]


@dataclass(frozen=True)
class LocalParams:
    window: Positive = 256  # w: query i sees keys with |i - j| < w (causal: 0 <= i - j < w)
    kernel: Kernel = "auto"  # auto: FlexAttention on CUDA, blocked kernel on CPU (flex on CPU: fwd only)


@dataclass(frozen=True)
class StridedParams:
    stride: Positive = 64  # l: the previous (and next) l positions plus every l-th position; l ≈ √n
    kernel: Kernel = "auto"


@dataclass(frozen=True)
class FixedParams:
    block: Positive = 64  # l: query i sees its own block of l positions ...
    c: Positive = 8  # ... and the last c positions of every block (the "summary" columns)
    kernel: Kernel = "auto"


@dataclass(frozen=True)
class BigBirdParams:
    block: Positive = 64  # b: window and random attention work on blocks of b positions
    num_global: NonNegative = 128  # g: positions 0..g-1 are global tokens (see all, seen by all)
    num_random: NonNegative = 3  # r: random key blocks per query block, drawn once per cell seed
    kernel: Kernel = "auto"


def _window(p, ctx):
    return None if p.window >= 1 else f"window={p.window} must be >= 1"


def _divides(field: str):
    def check(p, ctx):
        size = getattr(p, field)
        if size >= 1 and ctx.n % size == 0:
            return None
        return f"n={ctx.n} must be divisible by {field}={size}"
    return check


def _fixed_c(p, ctx):
    return None if 1 <= p.c <= p.block else f"c={p.c} must be in 1..block={p.block}"


def _bigbird_counts(p, ctx):
    if not 0 <= p.num_global <= ctx.n:
        return f"num_global={p.num_global} must be in 0..n={ctx.n}"
    return None if p.num_random >= 0 else f"num_random={p.num_random} must be >= 0"


_COMMON = dict(family="sparse", exact=False, causal=True, backward=True)
_WHOLE_PAST = ("its pattern reaches back over the whole past ({}), so a cached step keeps every key "
               "as exact attention does; not implemented")

# Limiting cases: patterns that allow every pair (causal: every j <= i), so the kernels compute softmax
# attention itself. Block sizes are divisors of n no larger than 64, so the blocked parts stay several.
LOCAL_LIMIT = Limit(params=lambda ctx: {"window": ctx.n}, note="window = n: every |i - j| < n")
STRIDED_LIMIT = Limit(params=lambda ctx: {"stride": ctx.n}, note="stride = n: the band |i - j| <= n")
def _fixed_limit(ctx: BuildContext) -> dict:
    block = _divisor_at_most(ctx.n, 64)
    return {"block": block, "c": block}


FIXED_LIMIT = Limit(params=_fixed_limit, note="c = block: every position is a summary column")
BIGBIRD_LIMIT = Limit(params=lambda ctx: {"block": _divisor_at_most(ctx.n, 64), "num_global": ctx.n},
                      note="num_global = n: every position is a global token")


@register_method("local", params=LocalParams, budget="window", constraints=(_window,),
                 limit=LOCAL_LIMIT, decode=True, varlen=True, **_COMMON)
def build_local(p: LocalParams, ctx: BuildContext) -> nn.Module:
    """Sliding-window attention: each query sees the keys within `window` positions."""
    return SparseAttention(build_pattern("local", p, ctx), ctx, p.kernel)


@register_method("strided", params=StridedParams, budget="stride",
                 constraints=(_divides("stride"),), limit=STRIDED_LIMIT, varlen=True,
                 decode_note=_WHOLE_PAST.format("every l-th position"), **_COMMON)
def build_strided(p: StridedParams, ctx: BuildContext) -> nn.Module:
    """Sparse Transformer strided pattern: local band of `stride` plus every `stride`-th key."""
    return SparseAttention(build_pattern("strided", p, ctx), ctx, p.kernel)


@register_method("fixed", params=FixedParams, budget="c", constraints=(_divides("block"), _fixed_c),
                 limit=FIXED_LIMIT, decode_note=_WHOLE_PAST.format("the summary columns"), **_COMMON)
def build_fixed(p: FixedParams, ctx: BuildContext) -> nn.Module:
    """Sparse Transformer fixed pattern: own block plus the last `c` positions of every block."""
    return SparseAttention(build_pattern("fixed", p, ctx), ctx, p.kernel)


@register_method("bigbird", params=BigBirdParams, budget="num_random",
                 constraints=(_divides("block"), _bigbird_counts), limit=BIGBIRD_LIMIT,
                 decode_note=_WHOLE_PAST.format("global tokens, random blocks"), **_COMMON)
def build_bigbird(p: BigBirdParams, ctx: BuildContext) -> nn.Module:
    """BigBird: three-block window, global tokens and random key blocks."""
    return SparseAttention(build_pattern("bigbird", p, ctx), ctx, p.kernel)
