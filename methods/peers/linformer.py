"""Two community Linformers (Wang et al., 2020, https://arxiv.org/abs/2006.04768) beside our ``linformer``.

``peer_linformer_tatp22``: linformer-pytorch's ``LinearAttentionHead``, one per head, core level, q, k,
v (B, H, N, D) -> (B, H, N, D): keys and values projected along the sequence by the peer's E and F
(``get_EF``), shared as its ``parameter_sharing`` says; registered non-causal (its causal mask comes
after the projection and leaks the future). ``peer_linformer``: lucidrains' linformer
``LinformerSelfAttention``, a whole layer, x (B, N, d_model) -> (B, N, d_model), learned (n, k)
projections shared by all heads, with an ``exact_reference(x)`` of the same projections and exact
softmax attention in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attnbench.methods.peers.common import HINT, Peer, _heads, _linear64, _merge, _seed, _seeded
from attnbench.params import Positive
from attnbench.reference import reference_attention
from attnbench.registry import BuildContext, Limit, register_method


@dataclass(frozen=True)
class PeerTatp22Params:
    k: Positive = 256  # projected length
    sharing: Literal["none", "headwise", "kv", "layerwise"] = "headwise"  # the peer's parameter_sharing
    projection: Literal["linear", "conv", "random"] = "linear"  # peer: learnable | convolution | no_params


TATP22_METHOD = {"linear": "learnable", "conv": "convolution", "random": "no_params"}


class PeerLinformerTatp22(Peer):
    def __init__(self, heads: nn.ModuleList):
        super().__init__(heads, "linformer-pytorch")

    def forward(self, q, k, v):
        outs = [head(q[:, i], k[:, i], v[:, i]) for i, head in enumerate(self.peer)]  # each (B, N, D)
        return torch.stack(outs, dim=1)  # (B, H, N, D)

    def stats(self) -> dict:
        mats = {id(m) for head in self.peer for m in (head.E, head.F)}
        return {**super().stats(), "proj_matrices": len(mats)}


def _check_tatp22(p, ctx):
    if not 1 <= p.k < ctx.n:
        return f"k={p.k} must be in 1..n-1={ctx.n - 1}: projecting to k >= n saves nothing"
    if p.projection == "conv" and ctx.n % p.k:
        return f"projection='conv' uses kernel = stride = n/k, so n={ctx.n} must be divisible by k={p.k}"
    return None


def _tatp22_identity(p: PeerTatp22Params, ctx: BuildContext) -> nn.Module:
    """The limit: k = n with every head's E and F set to the identity (its constraint refuses k = n)."""
    m = build_peer_linformer_tatp22(p, ctx)
    with torch.no_grad():
        for head in m.peer:
            for proj in (head.E, head.F):
                proj.weight.copy_(torch.eye(ctx.n))
                proj.bias.zero_()
    return m


@register_method("peer_linformer_tatp22", family="low_rank", exact=False, params=PeerTatp22Params,
                 causal=False, requires=("linformer_pytorch",), install_hint=HINT,
                 constraints=(_check_tatp22,), budget="k",
                 limit=Limit(params=lambda ctx: {"k": ctx.n, "projection": "linear"},
                             build=lambda p, ctx: _tatp22_identity(p, ctx),
                             note="k = n with E = F = I"))
def build_peer_linformer_tatp22(p: PeerTatp22Params, ctx: BuildContext) -> nn.Module:
    """linformer-pytorch (tatp22) LinearAttentionHead per head: E, F along the sequence (community code)."""
    from linformer_pytorch import LinearAttentionHead, get_EF

    method, n, d = TATP22_METHOD[p.projection], ctx.n, ctx.head_dim

    def proj():
        ef = get_EF(n, p.k, method, d)
        # no_params gives a bare tensor that module.to() would not move; the peer would copy it to the
        # device on every call, so move it once here
        return ef.to(ctx.device, ctx.dtype)

    if p.sharing == "layerwise":  # one E = F for every head of every layer, as the peer does
        e = ctx.scope.get_or_create(("peer_linformer_tatp22", p.k, p.projection, n, d),
                                    lambda: _seeded(proj, _seed(ctx, 0xEF, per_layer=False)))
        pairs = [(e, e)] * ctx.heads
    else:
        def make_pairs():
            if p.sharing == "none":
                return [(proj(), proj()) for _ in range(ctx.heads)]
            e = proj()
            f = e if p.sharing == "kv" else proj()
            return [(e, f)] * ctx.heads

        pairs = _seeded(make_pairs, _seed(ctx, 0xEF))
    heads = nn.ModuleList(LinearAttentionHead(d, 0.0, e, f, None) for e, f in pairs)
    return PeerLinformerTatp22(heads).to(ctx.device, ctx.dtype)


@dataclass(frozen=True)
class PeerLinformerParams:
    k: Positive = 256  # projected length of the peer's (n, k) matrices proj_k, proj_v
    share_kv: bool = False  # the peer's share_kv: values = keys (one to_k, one projection)
    one_kv_head: bool = False  # the peer's one_kv_head: a single key/value head for all query heads


class PeerLinformer(Peer):
    def __init__(self, attn: nn.Module):
        super().__init__(attn, "linformer")

    def forward(self, x):
        return self.peer(x)  # (B, N, d_model)

    def exact_reference(self, x):
        """The same layer with exact softmax attention (no sequence projection), in float64."""
        a, x = self.peer, x.double()
        q = _heads(_linear64(x, a.to_q), a.heads)  # (B, H, N, D)
        keys = _linear64(x, a.to_k)  # (B, N, H·D), or (B, N, D) with one_kv_head
        vals = keys if a.share_kv else _linear64(x, a.to_v)
        kv_heads = keys.shape[-1] // a.dim_head
        k, v = (_heads(t, kv_heads).expand(-1, a.heads, -1, -1) for t in (keys, vals))
        return _linear64(_merge(reference_attention(q, k, v)), a.to_out)

    def stats(self) -> dict:
        return {**super().stats(), "k": self.peer.k}


def _check_linformer(p, ctx):
    if not 1 <= p.k < ctx.n:
        return f"k={p.k} must be in 1..n-1={ctx.n - 1}: projecting to k >= n saves nothing"
    return None


def _linformer_identity(p: PeerLinformerParams, ctx: BuildContext) -> nn.Module:
    """The limit: k = n with the (n, k) projections set to the identity (its constraint refuses k = n)."""
    m = build_peer_linformer(p, ctx)
    with torch.no_grad():
        for proj in {id(t): t for t in (m.peer.proj_k, getattr(m.peer, "proj_v", None))
                     if t is not None}.values():
            proj.copy_(torch.eye(ctx.n))
    return m


@register_method("peer_linformer", family="low_rank", exact=False, params=PeerLinformerParams,
                 causal=False, requires=("linformer",), install_hint=HINT,
                 constraints=(_check_linformer,), budget="k", levels=("layer", "model"),
                 limit=Limit(params=lambda ctx: {"k": ctx.n},
                             build=lambda p, ctx: _linformer_identity(p, ctx),
                             note="k = n with identity projections: the layer's exact_reference"))
def build_peer_linformer(p: PeerLinformerParams, ctx: BuildContext) -> nn.Module:
    """lucidrains linformer LinformerSelfAttention: a whole layer with (n, k) projections (community code)."""
    from linformer import LinformerSelfAttention

    d_model = ctx.heads * ctx.head_dim
    attn = _seeded(lambda: LinformerSelfAttention(d_model, ctx.n, k=p.k, heads=ctx.heads,
                                                  dim_head=ctx.head_dim, one_kv_head=p.one_kv_head,
                                                  share_kv=p.share_kv, dropout=0.0),
                   _seed(ctx, 0x11))
    return PeerLinformer(attn).to(ctx.device, ctx.dtype)
