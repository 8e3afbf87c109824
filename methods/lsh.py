"""Reformer's LSH attention (Kitaev, Kaiser & Levskaya, 2020, https://arxiv.org/abs/2001.04451).

Queries double as keys (shared-QK: key j is query j scaled to unit length); random rotations hash the
keys into buckets, tokens are sorted by (bucket, position) and each fixed-size chunk of the sorted order
attends within itself and the chunk before, so similar tokens meet without an n × n score matrix.

Definitions used here (i = query position, j = key position, scores q_i·k_j/√d with k_j = q_j/|q_j|):

- Buckets: ``n_buckets = n / bucket_size``, rounded up to even as Reformer's hash needs (one bucket,
  with no hashing, when ``bucket_size == n``). Round r draws a (d, n_buckets/2) Gaussian rotation R_r
  in the factory from ``ctx.generator()`` and sends x to ``argmax([xR_r, -xR_r])``. Rotations are drawn
  round by round from one stream, so the first r rounds are the same for every ``n_hashes >= r``.
- Candidates in round r: the sorted order is cut into chunks of ``bucket_size`` slots. Non-causal
  (Reformer's rule): the query's chunk and the one before it, cyclically. Causal: keys of the same
  bucket at most ``bucket_size`` slots back in the sorted order. Within a bucket the order is by
  position, so this set depends only on tokens at positions <= i: a future token can shift slots and
  chunk boundaries but never which same-bucket past keys lie within reach. (A position mask alone would
  not do: a shifted chunk boundary changes which past keys a past query sees.)
- Self: a query never attends to itself unless it has no other candidate (its score is replaced by
  -1e5, as Reformer does, which makes its weight exactly zero in float32 otherwise).
- Rounds: each pair is scored with ``-log N_ij`` added, N_ij being the number of rounds in which j is a
  candidate of i, and rounds are merged with their log-sum-exp weights. The result is exactly softmax
  attention over the union of the rounds' candidates (the paper's duplicate correction), so more rounds
  can only widen the set each query sees.

``exact_reference`` is the same shared-QK attention over all keys (causal: all keys <= i) with the same
self rule, so the error measures the hashing and chunking, not the change to shared QK.
Needs n divisible by ``bucket_size`` (declared as a constraint).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attnbench.registry import BuildContext, register_method

SELF_SCORE = -1e5  # Reformer's score for attending to oneself


@dataclass(frozen=True)
class LSHParams:
    bucket_size: int = 64  # chunk length; n_buckets = n / bucket_size (rounded up to even)
    n_hashes: int = 4  # hashing rounds; more rounds, fewer missed neighbours
    # True: a key found in several rounds counts once (exact attention over the union of candidates);
    # False: each round's attention stands alone and duplicates count as often as they are found,
    # Reformer's cheaper default (reformer-pytorch's allow_duplicate_attention=True), which skips the
    # O(n_hashes²) duplicate count
    dedup: bool = True


def num_buckets(n: int, bucket_size: int) -> int:
    nb = n // bucket_size
    return nb if nb == 1 else nb + nb % 2


def shared_keys(q: torch.Tensor) -> torch.Tensor:
    """Reformer's keys: each query scaled to unit length."""
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-6)


def shared_qk_attention(q: torch.Tensor, v: torch.Tensor, *, causal: bool,
                        chunk: int = 1024) -> torch.Tensor:
    """Exact shared-QK attention with the self rule, in float64, a chunk of queries at a time."""
    q64, v64 = q.double(), v.double()
    key = shared_keys(q64)
    n = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(v64)
    cols = torch.arange(n, device=q.device)[None, :]
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=q.device)[:, None]
        scores = (q64[..., rows[:, 0], :] @ key.transpose(-1, -2)) * scale  # (B, H, c, N)
        alone = rows == 0 if causal else torch.full_like(rows, n == 1, dtype=torch.bool)
        blocked = (cols == rows) & ~alone
        if causal:
            blocked |= cols > rows
        out[..., rows[:, 0], :] = torch.softmax(scores.masked_fill(blocked, float("-inf")), -1) @ v64
    return out


class LSHAttention(nn.Module):
    """LSH attention over ``n_hashes`` rounds of hashed, sorted and chunked shared-QK attention."""

    def __init__(self, p: LSHParams, ctx: BuildContext):
        super().__init__()
        self.bucket_size, self.n_hashes, self.causal = p.bucket_size, p.n_hashes, ctx.causal
        self.dedup = p.dedup
        self.n_buckets = num_buckets(ctx.n, p.bucket_size)
        rot = torch.randn(p.n_hashes, ctx.head_dim, max(self.n_buckets // 2, 1),
                          generator=ctx.generator(salt=0x15A))  # (R, D, n_buckets/2)
        self.register_buffer("rotations", rot.to(ctx.device), persistent=False)  # hashing in fp32

    def hash(self, key: torch.Tensor) -> torch.Tensor:
        """Bucket of every token in every round: (B, H, N, D) -> (B, H, R, N)."""
        b, h, n, _ = key.shape
        if self.n_buckets == 1:
            return torch.zeros(b, h, self.n_hashes, n, dtype=torch.long, device=key.device)
        rotated = torch.einsum("bhnd,rdk->bhrnk", key.float(), self.rotations)  # (B, H, R, N, nb/2)
        return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)

    def forward(self, q, k, v):
        b, h, n, d = q.shape
        rounds, c = self.n_hashes, self.bucket_size
        nc = n // c
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax precision: fp32 or better
        key = shared_keys(q.to(acc))
        buckets = self.hash(key)  # (B, H, R, N)
        pos = torch.arange(n, device=q.device)
        order = (buckets * n + pos).argsort(dim=-1)  # (B, H, R, N): token at each sorted slot
        slot = order.argsort(dim=-1)  # (B, H, R, N): sorted slot of each token

        def sort(x):  # (B, H, N, D) -> (B, H, R, nc, c, D) in each round's sorted order
            idx = order[..., None].expand(b, h, rounds, n, x.shape[-1])
            return x[:, :, None].expand(b, h, rounds, n, x.shape[-1]).gather(3, idx).view(
                b, h, rounds, nc, c, -1)

        def with_previous(x):  # chunk c sees chunks c and c - 1 (cyclic): (..., nc, c, *) -> 2c keys
            return x if nc == 1 else torch.cat([x, x.roll(1, dims=3)], dim=4)

        qs, ks, vs = sort(q), with_previous(sort(key.to(q.dtype))), with_previous(sort(v))
        q_tok = order.view(b, h, rounds, nc, c)  # (B, H, R, nc, c)
        k_tok = with_previous(q_tok)  # (B, H, R, nc, c or 2c)
        # in place from here on: one score-sized buffer, none of these ops saves its input
        s = (qs @ ks.transpose(-1, -2)).to(acc).mul_(1.0 / math.sqrt(d))  # (B, H, R, nc, c, 2c)
        itself = torch.eye(c, ks.shape[-2], dtype=torch.bool, device=q.device)  # slot t is key t
        s.masked_fill_(itself, SELF_SCORE)
        if self.causal:
            sorted_slot = pos.view(nc, c)
            q_slot, k_slot = sorted_slot, with_previous(sorted_slot[None, None, None])[0, 0, 0]
            q_bkt = buckets.gather(3, order).view(b, h, rounds, nc, c)
            reach = self._reach(q_slot[..., :, None], k_slot[..., None, :],
                                q_bkt[..., :, None], with_previous(q_bkt)[..., None, :])
            s.masked_fill_(~reach, float("-inf"))
        if rounds > 1 and self.dedup:
            s.sub_(self._count(slot, buckets, q_tok, k_tok, acc).clamp_min_(1).log_())
        mx = s.detach().amax(dim=-1, keepdim=True)  # finite: every query is its own candidate
        e = s.sub_(mx).exp_()  # (B, H, R, nc, c, 2c)
        total = e.sum(dim=-1)  # (B, H, R, nc, c)
        lse = total.log() + mx[..., 0]
        o = (e.to(v.dtype) @ vs).to(acc) / total[..., None]  # (B, H, R, nc, c, D)
        o = o.view(b, h, rounds, n, d).gather(3, slot[..., None].expand(b, h, rounds, n, d))
        lse = lse.view(b, h, rounds, n).gather(3, slot)  # (B, H, R, N) in token order
        weights = torch.softmax(lse, dim=2)  # each round's share of the union's total mass
        return (weights[..., None] * o).sum(dim=2).to(q.dtype)

    def _reach(self, q_slot, k_slot, q_bkt, k_bkt):
        """Causal candidates: same bucket, 0..bucket_size slots back."""
        back = q_slot - k_slot
        return (q_bkt == k_bkt) & (back >= 0) & (back <= self.bucket_size)

    @torch.no_grad()
    def _count(self, slot, buckets, q_tok, k_tok, dtype):
        """N_ij: in how many rounds key j is a candidate of query i, for the gathered pairs."""
        b, h, rounds, n = slot.shape
        nc = n // self.bucket_size
        count = torch.zeros(q_tok.shape + k_tok.shape[-1:], device=slot.device, dtype=dtype)
        if not self.causal and nc <= 2:
            return count.fill_(rounds)  # every key is a candidate in every round
        at_q, at_k = q_tok.reshape(b, h, -1), k_tok.reshape(b, h, -1)
        slot = slot.int()
        chunk = slot // self.bucket_size
        for r in range(rounds):
            if self.causal:
                qs = slot[:, :, r].gather(2, at_q).view(q_tok.shape)
                ks = slot[:, :, r].gather(2, at_k).view(k_tok.shape)
                qb = buckets[:, :, r].gather(2, at_q).view(q_tok.shape)
                kb = buckets[:, :, r].gather(2, at_k).view(k_tok.shape)
                count += self._reach(qs[..., :, None], ks[..., None, :], qb[..., :, None],
                                     kb[..., None, :])
            else:
                cq = chunk[:, :, r].gather(2, at_q).view(q_tok.shape)[..., :, None]
                ck = chunk[:, :, r].gather(2, at_k).view(k_tok.shape)
                count += (cq == ck[..., None, :]) | (cq == ((ck + 1) % nc)[..., None, :])
        return count

    def exact_reference(self, q, k, v):
        return shared_qk_attention(q, v, causal=self.causal)

    def stats(self) -> dict:
        return {"n_buckets": self.n_buckets}

    def flops(self, q, k, v) -> float:
        b, h, n, d = q.shape
        keys = n if n == self.bucket_size else 2 * self.bucket_size
        return 4.0 * b * h * self.n_hashes * n * keys * d


def _lsh_constraint(p: LSHParams, ctx: BuildContext) -> str | None:
    if p.n_hashes < 1:
        return f"n_hashes={p.n_hashes} must be >= 1"
    if p.bucket_size < 1 or ctx.n % p.bucket_size:
        return f"n={ctx.n} must be divisible by bucket_size={p.bucket_size}"
    return None


@register_method("lsh", family="lsh", exact=False, params=LSHParams, causal=True, backward=True,
                 budget="n_hashes", constraints=(_lsh_constraint,))
def build_lsh(p: LSHParams, ctx: BuildContext) -> nn.Module:
    """Reformer LSH attention: shared-QK, hashed buckets, chunked sorted attention, n_hashes rounds."""
    return LSHAttention(p, ctx)
