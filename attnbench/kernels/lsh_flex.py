"""FlexAttention form of Reformer LSH attention (:mod:`attnbench.methods.lsh`, ``kernel="flex"``).

In each round's sorted order the candidate structure is static (slot s sees the slots of its chunk and
the chunk before; causal: the ``bucket_size`` slots back), so one block mask serves every call; the
self rule, the causal same-bucket test and the duplicate count -log N_ij are a ``score_mod`` reading
small per-slot tables. The module that builds the tables, sorts the rounds and merges them is
:class:`attnbench.methods.lsh.LSHAttention`; the definitions are in that module's docstring.
"""
from __future__ import annotations

import torch


def _flex_api():
    """flex_attention and how to ask it for the log-sum-exp (``return_aux`` where torch has it)."""
    from torch.nn.attention import flex_attention as fa

    aux = getattr(fa, "AuxRequest", None)
    if aux is None:
        return fa.flex_attention, dict(return_lse=True), False
    return fa.flex_attention, dict(return_aux=aux(lse=True)), True


def lsh_block_mask(n: int, bucket_size: int, causal: bool, device: torch.device):
    """The static candidate pattern in sorted-slot space, as a FlexAttention block mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    c, nc = bucket_size, n // bucket_size

    def mask_mod(b, h, q_idx, kv_idx):
        if causal:  # the same-bucket test is in the score_mod
            back = q_idx - kv_idx
            return (back >= 0) & (back <= c)
        d = q_idx // c - kv_idx // c
        return (d == 0) | (d == 1) | (d == 1 - nc)  # own chunk or the one before (cyclic)

    return create_block_mask(mask_mod, None, None, n, n, device=device,
                             _compile=device.type == "cuda")


def make_flex_rounds(n: int, bucket_size: int, rounds: int, causal: bool, dedup: bool, scale: float,
                     self_score: float):
    """``fn(qs, ks, vs, block_mask, aux) -> (out, lse)`` on each round's sorted (B, H·R, N, D) tensors.

    ``aux`` (see :meth:`LSHAttention._flex_aux`): non-causal dedup: (B, H·R, W, N) int32 words packing
    the chunk of the token at each slot in every round (``bits`` bits a round); causal: (B, H·R, R, N)
    ``g = bucket·2n + slot`` of that token in every round (j is a candidate of i in round r exactly
    when 0 <= g_i - g_j <= bucket_size) and, for the slot's own round, the same in (B, H·R, N)."""
    flex_attention, lse_kw, has_aux = _flex_api()
    c, nc = bucket_size, n // bucket_size
    bits = max(1, (nc - 1).bit_length())
    per_word = max(1, 31 // bits)
    field = (1 << bits) - 1
    count_rounds = dedup and rounds > 1

    def score_mod(score, b, h, q_idx, kv_idx, aux):
        score = torch.where(q_idx == kv_idx, self_score, score)
        if causal:
            g, g_own = aux
            back = g_own[b, h, q_idx] - g_own[b, h, kv_idx]  # 0..c slots back in the same bucket
            score = torch.where(back <= c, score, -float("inf"))  # the block mask gives back >= 0
        if not count_rounds:
            return score
        found = []  # per round: is kv_idx a candidate of q_idx there?
        if causal:
            for r in range(rounds):
                d = g[b, h, r, q_idx] - g[b, h, r, kv_idx]
                found.append((d >= 0) & (d <= c))
        else:
            words = aux[0]
            for w in range((rounds + per_word - 1) // per_word):
                wq, wk = words[b, h, w, q_idx], words[b, h, w, kv_idx]
                for t in range(min(per_word, rounds - w * per_word)):
                    d = ((wq >> (t * bits)) & field) - ((wk >> (t * bits)) & field)
                    found.append((d == 0) | (d == 1) | (d == 1 - nc))
        count = found[0].to(score.dtype)
        for f in found[1:]:
            count = count + f.to(score.dtype)
        return score - torch.log(count.clamp_min(1.0))

    def flex_rounds(qs, ks, vs, block_mask, aux):
        def mod(score, b, h, q_idx, kv_idx):
            return score_mod(score, b, h, q_idx, kv_idx, aux)

        out, extra = flex_attention(qs, ks, vs, score_mod=mod, block_mask=block_mask, scale=scale,
                                    **lse_kw)
        return out, (extra.lse if has_aux else extra)

    return flex_rounds
