"""Test plugin: methods that each break one part of the contract `attnbench check` runs (loaded with
--plugin by tests/test_conformance.py). Everything else about them is in order, so each should fail
exactly the row named in its registration."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import BuildContext, Limit, NoParams, register_method


@dataclass(frozen=True)
class FirstK:
    k: int = 32  # keys attended: the first k positions


class FirstKAttention(nn.Module):
    """Softmax attention over the first k keys (causal: those up to the query); exact at k >= n."""

    def __init__(self, k: int, causal: bool):
        super().__init__()
        self.k, self.causal = k, causal

    def forward(self, q, k, v):
        m = max(1, min(self.k, k.shape[-2]))
        mask = torch.ones(q.shape[-2], m, dtype=torch.bool, device=q.device).tril() \
            if self.causal else None
        return F.scaled_dot_product_attention(q, k[..., :m, :], v[..., :m, :], attn_mask=mask)


def _k_positive(p, ctx):
    return None if p.k >= 1 else f"k={p.k} must be >= 1"


# limit: k = n - 1 leaves the last key out, so it is not exact (fails "limit")
@register_method("t_wrong_limit", family="other", exact=False, params=FirstK, budget="k",
                 constraints=(_k_positive,), limit=lambda ctx: {"k": ctx.n - 1})
def build_wrong_limit(p: FirstK, ctx: BuildContext) -> nn.Module:
    return FirstKAttention(p.k, ctx.causal)


def _bidirectional(module, q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


class Bidirectional(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


# claims causal but ignores ctx.causal; its declared reference is the same bidirectional attention,
# so only "causal" fails
@register_method("t_leaky", family="other", exact=False, params=NoParams, causal=True,
                 limit=Limit(params={}, reference=_bidirectional))
def build_leaky(p: NoParams, ctx: BuildContext) -> nn.Module:
    return Bidirectional()


class DropsLastRow(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)[..., :-1, :]  # (B, H, N - 1, D)


# fails "output ..."
@register_method("t_bad_shape", family="exact", exact=True, params=NoParams, causal=False)
def build_bad_shape(p: NoParams, ctx: BuildContext) -> nn.Module:
    return DropsLastRow()


class ZeroesFirstQuery(nn.Module):
    """Correct output, then (on the no-grad path, like a forward-only kernel) clears q's first row."""

    def forward(self, q, k, v):
        out = F.scaled_dot_product_attention(q, k, v)
        if not q.requires_grad:
            q[..., 0, :] = 0.0
        return out


# fails "inputs"
@register_method("t_mutates_q", family="exact", exact=True, params=NoParams, causal=False)
def build_mutates_q(p: NoParams, ctx: BuildContext) -> nn.Module:
    return ZeroesFirstQuery()


class RandomKeys(nn.Module):
    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep)

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k[..., self.keep, :], v[..., self.keep, :])


# draws its key subset from the global RNG instead of ctx.generator(): two builds differ (fails
# "deterministic"); at k = n every key is kept, in some order, which attention does not see
@register_method("t_random", family="other", exact=False, params=FirstK, causal=False, budget="k",
                 constraints=(_k_positive,), limit=lambda ctx: {"k": ctx.n})
def build_random(p: FirstK, ctx: BuildContext) -> nn.Module:
    return RandomKeys(torch.randperm(ctx.n)[:p.k].to(ctx.device))


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(fctx, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    @staticmethod
    def backward(fctx, grad):
        nan = torch.full_like(grad, float("nan"))
        return nan, nan, nan


class NaNGrad(nn.Module):
    def forward(self, q, k, v):
        return _NaNGrad.apply(q, k, v)


# fails "backward"
@register_method("t_nan_grad", family="exact", exact=True, params=NoParams, causal=False)
def build_nan_grad(p: NoParams, ctx: BuildContext) -> nn.Module:
    return NaNGrad()


# attends to the first n - k keys: exact at k = 0, but the error grows with the budget (fails
# "converges")
@dataclass(frozen=True)
class DropK:
    k: int = 32  # keys left out at the end


@register_method("t_backwards_budget", family="other", exact=False, params=DropK, causal=False,
                 budget="k", limit=Limit(params={"k": 0}, converges=(8, 32, 96)))
def build_backwards_budget(p: DropK, ctx: BuildContext) -> nn.Module:
    return FirstKAttention(ctx.n - p.k, causal=False)


# an approximation that declares no limiting case (fails "limit", with the hint)
@register_method("t_no_limit", family="other", exact=False, params=FirstK, causal=False, budget="k",
                 constraints=(_k_positive,))
def build_no_limit(p: FirstK, ctx: BuildContext) -> nn.Module:
    return FirstKAttention(p.k, causal=False)
