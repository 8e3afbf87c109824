"""``peer_performer``: performer-pytorch's ``FastAttention`` (Performer, Choromanski et al., 2020,
https://arxiv.org/abs/2009.14794), the community FAVOR+ beside our ``performer``.

Core level, q, k, v (B, H, N, D) -> (B, H, N, D): positive orthogonal random features drawn once at
build from the cell seed (the peer redraws only inside its ``Performer`` wrapper). Causal uses the
peer's chunked prefix sums (its CUDA kernel needs the separate ``fast_transformers`` package).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Literal

from torch import nn

from attnbench.methods.peers.common import HINT, LOCAL_DEPS, Peer, _seed, _seeded
from attnbench.params import NonNegative
from attnbench.registry import BuildContext, Limit, register_method


@dataclass(frozen=True)
class PeerPerformerParams:
    nb_features: NonNegative = 0  # m, random features; 0 = the peer's default int(d·ln d) (266 at d=64)
    ortho_scaling: Literal[0, 1] = 0  # row norms of ω: 0 = chi-distributed (as ours), 1 = all √d


class PeerPerformer(Peer):
    def __init__(self, fast_attention: nn.Module):
        super().__init__(fast_attention, "performer-pytorch")

    def forward(self, q, k, v):
        return self.peer(q, k, v)  # (B, H, N, D)

    def stats(self) -> dict:
        row = {**super().stats(), "nb_features": self.peer.nb_features}
        if self.peer.causal:  # the peer's CUDA kernel (fast_transformers) or its chunked fallback
            fn = self.peer.causal_linear_fn
            row["causal_kernel"] = getattr(fn, "func", fn).__name__
        return row


def _check_performer(p, ctx):
    return None if p.nb_features >= 0 else f"nb_features={p.nb_features} must be >= 0"


@register_method("peer_performer", family="kernel", exact=False, params=PeerPerformerParams,
                 causal=True, requires=("performer_pytorch", *LOCAL_DEPS, "axial_positional_embedding",
                                        "distutils"),  # Python >= 3.12: distutils from setuptools
                 install_hint=HINT, constraints=(_check_performer,), budget="nb_features",
                 limit=Limit(params=None, converges=(8, 32, 128, 512),
                             note="random features; error falls as m grows"))
def build_peer_performer(p: PeerPerformerParams, ctx: BuildContext) -> nn.Module:
    """performer-pytorch FastAttention: FAVOR+ with orthogonal random features (community code)."""
    from performer_pytorch import FastAttention

    def make():
        with contextlib.redirect_stdout(io.StringIO()):  # the causal fallback announces itself
            return FastAttention(ctx.head_dim, nb_features=p.nb_features or None,
                                 ortho_scaling=p.ortho_scaling, causal=ctx.causal)

    return PeerPerformer(_seeded(make, _seed(ctx, 0xFA))).to(ctx.device, ctx.dtype)
