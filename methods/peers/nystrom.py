"""``peer_nystrom``: nystrom-attention's ``NystromAttention`` (Nyströmformer, Xiong et al., 2021,
https://arxiv.org/abs/2102.03902), the community layer beside our ``nystrom``.

A whole layer, x (B, N, d_model) -> (B, N, d_model), with ``residual=False``: the depthwise
convolution of V it adds by default is a residual branch, not attention. ``exact_reference(x)`` runs
the same projections with exact softmax attention in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from attnbench.methods.peers.common import HINT, Peer, _heads, _linear64, _merge, _seed, _seeded
from attnbench.params import NonNegative, Positive
from attnbench.reference import reference_attention
from attnbench.registry import BuildContext, Limit, register_method


@dataclass(frozen=True)
class PeerNystromParams:
    num_landmarks: Positive = 64  # m, segment-mean landmarks; n must be a multiple of m
    pinv_iters: NonNegative = 6  # the peer's pinv_iterations (the paper uses 6)


class PeerNystrom(Peer):
    def __init__(self, attn: nn.Module):
        super().__init__(attn, "nystrom-attention")

    def forward(self, x):
        return self.peer(x)  # (B, N, d_model)

    def exact_reference(self, x):
        """The same layer with exact softmax attention (no landmarks), in float64."""
        a, x = self.peer, x.double()
        q, k, v = (_heads(t, a.heads) for t in _linear64(x, a.to_qkv).chunk(3, dim=-1))
        return _linear64(_merge(reference_attention(q, k, v)), a.to_out[0])

    def stats(self) -> dict:
        return {**super().stats(), "num_landmarks": self.peer.num_landmarks}


def _check_nystrom(p, ctx):
    if p.num_landmarks < 1 or p.pinv_iters < 0:
        return f"invalid knobs: num_landmarks={p.num_landmarks}, pinv_iters={p.pinv_iters}"
    if p.num_landmarks > ctx.n or ctx.n % p.num_landmarks:
        # the peer would pad the front with zero tokens that every query then attends to
        return f"n={ctx.n} must be a multiple of num_landmarks={p.num_landmarks} (no padding)"
    return None


@register_method("peer_nystrom", family="landmark", exact=False, params=PeerNystromParams,
                 causal=False, requires=("nystrom_attention", "einops"), install_hint=HINT,
                 constraints=(_check_nystrom,), budget="num_landmarks", levels=("layer", "model"),
                 # landmarks = n leaves only the iterative pseudo-inverse, which converges, not exact:
                 # 30 iterations reach ~1e-10 in float64 (tests/test_peers.py)
                 limit=Limit(params=lambda ctx: {"num_landmarks": ctx.n, "pinv_iters": 30}, tol=1e-8,
                             note="num_landmarks = n, pseudo-inverse iterated to convergence"))
def build_peer_nystrom(p: PeerNystromParams, ctx: BuildContext) -> nn.Module:
    """nystrom-attention NystromAttention, residual conv off: a whole layer (community code)."""
    from nystrom_attention import NystromAttention

    attn = _seeded(lambda: NystromAttention(ctx.heads * ctx.head_dim, dim_head=ctx.head_dim,
                                            heads=ctx.heads, num_landmarks=p.num_landmarks,
                                            pinv_iterations=p.pinv_iters, residual=False,
                                            dropout=0.0),
                   _seed(ctx, 0x57))
    return PeerNystrom(attn).to(ctx.device, ctx.dtype)
