"""``peer_reformer``: reformer-pytorch's ``LSHAttention`` (Reformer, Kitaev et al., 2020,
https://arxiv.org/abs/2001.04451), the community LSH attention beside our ``lsh``.

Core level, q, v (B, H, N, D) -> (B, H, N, D) (k is unused: shared QK), through the peer's
(B·H, N, D) layout. The peer draws its rotations from the global RNG on every call;
``rotations="seeded"`` pins that draw to the cell seed so that rows reproduce. ``exact_reference`` is
shared-QK attention. How it differs from ours: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attnbench.methods.peers.common import HINT, LOCAL_DEPS, Peer, _seed
from attnbench.params import Positive
from attnbench.registry import BuildContext, Limit, register_method


@dataclass(frozen=True)
class PeerReformerParams:
    bucket_size: Positive = 64  # chunk length; n_buckets = n / bucket_size (the peer needs it even)
    n_hashes: Positive = 4  # hashing rounds
    allow_duplicate_attention: bool = True  # False: the peer's duplicate correction (results/README.md)
    rotations: Literal["seeded", "fresh"] = "seeded"  # seeded: same hash every call, from the cell seed


class PeerReformer(Peer):
    def __init__(self, lsh: nn.Module, seed: int | None):
        super().__init__(lsh, "reformer-pytorch")
        self.seed = seed

    def forward(self, q, k, v):
        b, h, n, d = q.shape
        qk, vals = q.reshape(b * h, n, d), v.reshape(b * h, n, d)  # the peer wants (B·H, N, D)
        if self.seed is None:
            out = self.peer(qk, vals)[0]
        else:
            # The peer draws its rotations with torch.randn on q's device inside forward; pin that draw.
            cuda = q.device.type == "cuda"
            with torch.random.fork_rng(devices=[q.device] if cuda else []):
                if cuda:
                    with torch.cuda.device(q.device):
                        torch.cuda.manual_seed(self.seed)
                else:
                    torch.manual_seed(self.seed)
                out = self.peer(qk, vals)[0]
        return out.view(b, h, n, d)

    def exact_reference(self, q, k, v):
        from attnbench.methods.lsh.reference import shared_qk_attention

        return shared_qk_attention(q, v, causal=self.peer.causal)

    def stats(self) -> dict:
        return {**super().stats(), "n_hashes": self.peer.n_hashes}


def _check_reformer(p, ctx):
    if p.n_hashes < 1:
        return f"n_hashes={p.n_hashes} must be >= 1"
    if p.bucket_size < 1 or ctx.n % (2 * p.bucket_size):
        return (f"n={ctx.n} must be divisible by 2·bucket_size={2 * p.bucket_size} "
                "(reformer-pytorch needs an even number of buckets)")
    return None


@register_method("peer_reformer", family="lsh", exact=False, params=PeerReformerParams, causal=True,
                 requires=("reformer_pytorch", *LOCAL_DEPS, "axial_positional_embedding",
                           "product_key_memory", "colt5_attention"),
                 install_hint=HINT, constraints=(_check_reformer,), budget="n_hashes",
                 # two buckets of n/2, one round: each chunk attends itself and the other, so every
                 # key is seen once (exact against the shared-QK exact_reference)
                 limit=Limit(params=lambda ctx: {"bucket_size": ctx.n // 2, "n_hashes": 1},
                             note="two buckets of n/2, one round: every key seen once"))
def build_peer_reformer(p: PeerReformerParams, ctx: BuildContext) -> nn.Module:
    """reformer-pytorch LSHAttention: shared-QK, hashed and chunked (community code)."""
    from reformer_pytorch import LSHAttention

    lsh = LSHAttention(bucket_size=p.bucket_size, n_hashes=p.n_hashes, causal=ctx.causal,
                       allow_duplicate_attention=p.allow_duplicate_attention)
    lsh.eval()  # training mode only adds a bucket cache for the peer's reversible layers
    seed = _seed(ctx, 0x15A) if p.rotations == "seeded" else None
    return PeerReformer(lsh, seed).to(ctx.device, ctx.dtype)
