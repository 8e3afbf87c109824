"""``peer_local``: local-attention's ``LocalAttention`` (sliding windows as in Longformer, Beltagy et
al., 2020, https://arxiv.org/abs/2004.05150), the community window beside our ``local``.

Core level, q, k, v (B, H, N, D) -> (B, H, N, D), rotary embeddings off, no autopadding. The peer cuts
the sequence into blocks of ``window``; a query sees its block and the one before (and, not causal,
the one after); ``exact_windowsize=True`` trims that to |i - j| <= window, one key more on each side
than our ``local`` at the same ``window``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from attnbench.methods.peers.common import HINT, LOCAL_DEPS, Peer
from attnbench.params import Positive
from attnbench.registry import BuildContext, Limit, register_method


@dataclass(frozen=True)
class PeerLocalParams:
    window: Positive = 256  # the peer's window_size: block length; n must be a multiple of it
    exact_windowsize: bool = True  # trim the blocks to |i - j| <= window (False: whole blocks)


class PeerLocal(Peer):
    def __init__(self, local: nn.Module):
        super().__init__(local, "local-attention")

    def forward(self, q, k, v):
        return self.peer(q, k, v)  # (B, H, N, D): the peer folds leading axes itself


def _check_local(p, ctx):
    if p.window < 1 or ctx.n % p.window:
        return f"n={ctx.n} must be a multiple of window={p.window} (no autopadding)"
    return None


@register_method("peer_local", family="sparse", exact=False, params=PeerLocalParams, causal=True,
                 requires=LOCAL_DEPS, install_hint=HINT,
                 constraints=(_check_local,), budget="window",
                 limit=Limit(params=lambda ctx: {"window": ctx.n}, note="window = n: one block"))
def build_peer_local(p: PeerLocalParams, ctx: BuildContext) -> nn.Module:
    """local-attention LocalAttention: blocked sliding window, rotary off (community code)."""
    from local_attention import LocalAttention

    local = LocalAttention(window_size=p.window, causal=ctx.causal, look_backward=1,
                           exact_windowsize=p.exact_windowsize, use_rotary_pos_emb=False,
                           autopad=False)
    return PeerLocal(local).to(ctx.device, ctx.dtype)
