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
- Rounds: with ``dedup`` each pair is scored with ``-log N_ij`` added, N_ij being the number of rounds
  in which j is a candidate of i, and rounds are merged with their log-sum-exp weights. The result is
  exactly softmax attention over the union of the rounds' candidates (the paper's duplicate
  correction), so more rounds can only widen the set each query sees. Without ``dedup`` the rounds are
  merged the same way but nothing is subtracted (a pair found in m rounds counts m times).

Three kernels compute the same thing (``kernel``; ``auto`` = ``triton`` on CUDA where Triton is
installed and takes the shape, else ``sdpa`` on CUDA, ``torch`` elsewhere):

- ``triton`` (``auto`` on CUDA): :mod:`attnbench.methods.lsh.lsh_triton`, three launches and an argsort:
  the hash with its argmax fused into the rotation product, the attention of every sorted chunk read
  straight from q and v through the sorted order (self rule, causal test and -log N_ij computed in
  the kernel from per-token tables, nothing score-sized or sorted stored), and the merge of the
  rounds. Forward only (a call that needs gradients, or float64, runs the torch kernel;
  ``stats()["ran"]`` and ``stats()["fallback"]`` say which ran and why); bucket_size and head_dim up
  to 128. On an H100 (fp16, layer level, d_model 512, 8 heads, bucket 64, 4 rounds) it took 0.06 ms
  at n = 1024, batch 1 and 0.48 ms at n = 16384, batch 1 in CUDA-graph replay, against the ``sdpa``
  kernel's 0.22 and 2.43 ms. Its hash rounds in the input dtype (see that module).
- ``torch``: gathers every round's sorted chunks and scores each chunk of ``bucket_size`` queries
  against its 2·bucket_size candidate keys in one float32 (B, H, R, chunks, bucket_size,
  2·bucket_size) tensor. It is the reference, the CPU path and the one float64 inputs always take.
- ``sdpa`` (``auto`` on CUDA without Triton): the torch kernel's sorted chunks, handed to PyTorch's fused
  memory-efficient attention kernel (the one SDPA takes with a mask) as (B·H·R, chunks, bucket_size,
  D) queries over 2·bucket_size keys, which returns each query's log-sum-exp beside its output. The
  self rule is an additive bias (-1e5, or fp16's lowest value), one (bucket_size, 2·bucket_size)
  matrix broadcast to every chunk; the causal test and -log N_ij make that bias pair-sized. The kernel
  gives no gradient for the log-sum-exp, so a call that needs gradients runs the torch kernel
  (``stats()["ran"]`` says which ran); on CPU the same bias and log-sum-exp logic runs on plain ops.
(A fourth, FlexAttention kernel was retired: it was explicit-only, its compiled non-causal
deduplicated form disagreed with the torch kernel on an H200, and its compile took minutes.)

``exact_reference`` is the same shared-QK attention over all keys (causal: all keys <= i) with the same
self rule, so the error measures the hashing and chunking, not the change to shared QK.
Needs n divisible by ``bucket_size`` (declared as a constraint).

Decoding (causal): the causal candidates of token t in round r are the last ``bucket_size`` earlier
tokens of t's bucket (same bucket, at most bucket_size slots back; sorted by position within a
bucket, so no later token changes them) and t itself. The state keeps the shared keys and values of
every token (a cache that grows with n, as exact attention's does) and, per round and bucket, a ring of
the last ``bucket_size`` positions; a step hashes the new token, gathers its R·bucket_size candidates,
scores them (each counted once under ``dedup``, as often as found without) and pushes its position into
its buckets' rings: O(R·bucket_size·D) per token whatever n is. The buckets are those of the n the
module was built for (n / bucket_size of them); tokens past n hash into the same buckets. Fixed shapes,
positions on the device: a step replays in a CUDA graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attnbench.decode_state import DeviceKVCache
from attnbench.params import Positive
from attnbench.registry import BuildContext, Limit, register_method

SELF_SCORE = -1e5  # Reformer's score for attending to oneself
Kernel = Literal["auto", "triton", "sdpa", "torch"]


@dataclass(frozen=True)
class LSHParams:
    bucket_size: Positive = 64  # chunk length; n_buckets = n / bucket_size (rounded up to even)
    n_hashes: Positive = 4  # hashing rounds; more rounds, fewer missed neighbours
    # True: a key found in several rounds counts once (exact attention over the union of candidates);
    # False: each round's attention stands alone and duplicates count as often as they are found,
    # Reformer's cheaper default (reformer-pytorch's allow_duplicate_attention=True), which skips the
    # O(n_hashes²) duplicate count
    dedup: bool = True
    # auto: triton on CUDA (sdpa without Triton or for shapes it does not take; both forward only:
    # a call that needs gradients takes the torch kernel), torch elsewhere
    kernel: Kernel = "auto"


def num_buckets(n: int, bucket_size: int) -> int:
    nb = n // bucket_size
    return nb if nb == 1 else nb + nb % 2


def default_kernel(p: LSHParams, ctx: BuildContext) -> str:
    """What ``kernel="auto"`` picks: the Triton kernels on CUDA where they take the shape, else the
    fused chunk attention (sdpa) on CUDA, the torch kernel elsewhere."""
    if ctx.device.type != "cuda":
        return "torch"
    if _triton_reason(p, ctx) is None:
        return "triton"
    return "sdpa"


def chunk_attention(q, k, v, bias, scale):
    """Attention of every chunk's queries over its candidate keys with an additive bias, returning the
    output and the natural-log log-sum-exp of each query's biased scores.

    ``q`` (B', C, c, D), ``k``/``v`` (B', C, S, D), ``bias`` broadcastable to (B', C, c, S) in q's dtype.
    On CUDA this is PyTorch's memory-efficient attention kernel (the one SDPA uses with a mask), which
    returns the log-sum-exp but no gradient for it; elsewhere the same in plain float32 ops."""
    if q.is_cuda:
        b, nc, c, _ = q.shape
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias.expand(b, nc, c, k.shape[-2]), True, scale=scale)[:2]
        return out, lse[..., :c]
    acc = torch.promote_types(q.dtype, torch.float32)
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)).mul_(scale).add_(bias.to(acc))
    lse = torch.logsumexp(s, dim=-1)
    out = (torch.exp(s - lse[..., None]) @ v.to(acc)).to(q.dtype)
    # in the fused kernel's memory layout ((B', c, C, D) underneath), so CPU tests see its strides
    return out.transpose(1, 2).contiguous().transpose(1, 2), lse


def padded_bias(shape, dtype, device):
    """A zero bias whose last dimension is padded to a multiple of 16 in memory, as the fused kernel
    wants its rows aligned; returns the (..., S) view."""
    *lead, s = shape
    return torch.zeros(*lead, -(-s // 16) * 16, dtype=dtype, device=device)[..., :s]


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
        kernel = default_kernel(p, ctx) if p.kernel == "auto" else p.kernel
        self.kernel = kernel
        self._stats: dict = {"n_buckets": self.n_buckets, "kernel": kernel}

    # shared by both kernels

    def hash(self, key: torch.Tensor) -> torch.Tensor:
        """Bucket of every token in every round: (B, H, N, D) -> (B, H, R, N)."""
        b, h, n, _ = key.shape
        if self.n_buckets == 1:
            return torch.zeros(b, h, self.n_hashes, n, dtype=torch.long, device=key.device)
        rotated = torch.einsum("bhnd,rdk->bhrnk", key.float(), self.rotations)  # (B, H, R, N, nb/2)
        # argmax([x, -x]) without concatenating: the first half wins ties, as argmax does
        top, arg_top = rotated.max(dim=-1)
        low, arg_low = rotated.min(dim=-1)
        return torch.where(top >= -low, arg_top, arg_low + rotated.shape[-1])

    def _sort(self, q):
        """Key, buckets, each round's sorted order (token at each slot) and slots (slot of each
        token), the last three (B, H, R, N)."""
        n = q.shape[-2]
        key = shared_keys(q.to(torch.promote_types(q.dtype, torch.float32)))
        buckets = self.hash(key)
        pos = torch.arange(n, device=q.device)
        order = (buckets * n + pos).argsort(dim=-1)
        slot = torch.empty_like(order).scatter_(-1, order, pos.expand_as(order))
        return key, buckets, order, slot

    @staticmethod
    def _merge(o, lse, slot, dtype):
        """Unsort each round's output (B, H, R, N, D) and log-sum-exp (B, H, R, N) and merge the rounds
        with their log-sum-exp weights."""
        d = o.shape[-1]
        o = o.gather(3, slot[..., None].expand(*slot.shape, d))
        lse = lse.gather(3, slot)  # (B, H, R, N) in token order
        weights = torch.softmax(lse, dim=2)  # each round's share of the union's total mass
        return (weights[..., None] * o).sum(dim=2).to(dtype)

    def forward(self, q, k, v):
        grad = torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)
        kernel = self.kernel
        if kernel == "triton":
            from attnbench.methods.lsh import lsh_triton

            why = "gradients needed: the Triton kernels are forward-only" if grad else \
                lsh_triton.unsupported_reason(q, v, self.bucket_size)
            if why is None:
                self._stats["ran"] = "triton"
                self._stats.pop("fallback", None)
                return lsh_triton.lsh_forward(q, v, self.rotations, self.bucket_size,
                                              causal=self.causal, dedup=self.dedup,
                                              self_score=SELF_SCORE)
            self._stats["fallback"] = why
            kernel = "sdpa" if q.is_cuda else "torch"  # the next best this call can take
            self._stats["ran"] = "torch"
        if kernel == "sdpa" and q.dtype != torch.float64 and not grad:
            self._stats["ran"] = "sdpa"
            return self._forward_torch(q, v, fused=True)
        if kernel == "sdpa":
            self._stats["ran"] = "torch"  # its log-sum-exp has no gradient: the torch kernel instead
        return self._forward_torch(q, v)

    # torch kernel

    def _forward_torch(self, q, v, fused: bool = False):
        b, h, n, d = q.shape
        rounds, c = self.n_hashes, self.bucket_size
        nc = n // c
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax precision: fp32 or better
        key, buckets, order, slot = self._sort(q)
        pos = torch.arange(n, device=q.device)

        def sort(x):  # (B, H, N, D) -> (B, H, R, nc, c, D) in each round's sorted order
            idx = order[..., None].expand(b, h, rounds, n, x.shape[-1])
            return x[:, :, None].expand(b, h, rounds, n, x.shape[-1]).gather(3, idx).view(
                b, h, rounds, nc, c, -1)

        def with_previous(x):  # chunk c sees chunks c and c - 1 (cyclic): (..., nc, c, *) -> 2c keys
            return x if nc == 1 else torch.cat([x, x.roll(1, dims=3)], dim=4)

        q_tok = order.view(b, h, rounds, nc, c)  # (B, H, R, nc, c)
        if fused:
            return self._fused(sort(q), sort(key.to(q.dtype)), sort(v), buckets, order, slot, q_tok)
        qs, ks, vs = sort(q), with_previous(sort(key.to(q.dtype))), with_previous(sort(v))
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
        return self._merge(o.view(b, h, rounds, n, d), lse.view(b, h, rounds, n), slot, q.dtype)

    @torch.no_grad()
    def _fused(self, qs, ks, vs, buckets, order, slot, q_tok):
        """The torch kernel's chunks through :func:`chunk_attention`: the self rule, the causal test and
        -log N_ij become an additive bias; without causal or dedup it is one (c, 2c) matrix broadcast to
        every chunk, so nothing score-sized is stored. Each chunk's keys are [previous chunk, own
        chunk], an overlapping strided view of the sorted keys with the last chunk copied in front, so
        the 2c-key windows cost one copy of the keys rather than a roll and a concatenation."""
        b, h, rounds, nc, c, d = qs.shape
        dt = qs.dtype
        one = nc == 1

        def windows(x):  # (B, H, R, nc, c, D) -> (B, H, R, nc, 2c, D): chunk i-1 (cyclic), chunk i
            if one:
                return x
            p = torch.cat([x[:, :, :, -1:], x], dim=3)  # (B, H, R, nc + 1, c, D), contiguous
            return p.as_strided((b, h, rounds, nc, 2 * c, d), p.stride())

        def prev_own(x, dim):  # the same [previous, own] order for small index tensors
            return x if one else torch.cat([x.roll(1, dims=dim - 1), x], dim=dim)

        keys = c if one else 2 * c
        self_score = max(SELF_SCORE, torch.finfo(dt).min)  # -1e5 overflows fp16
        if not self.causal and not (self.dedup and rounds > 1):
            bias = padded_bias((c, keys), dt, qs.device)
        else:
            bias = padded_bias((b, h, rounds, nc, c, keys), dt, qs.device)
        own = 0 if one else c  # where a chunk's own keys start in its window
        itself = torch.arange(keys, device=qs.device)[None, :] == \
            torch.arange(c, device=qs.device)[:, None] + own
        bias.masked_fill_(itself, self_score)
        if self.causal:
            sorted_slot = torch.arange(nc * c, device=qs.device).view(nc, c)
            q_bkt = buckets.gather(3, order).view(b, h, rounds, nc, c)
            reach = self._reach(sorted_slot[..., :, None], prev_own(sorted_slot, 1)[..., None, :],
                                q_bkt[..., :, None], prev_own(q_bkt, 4)[..., None, :])
            bias.masked_fill_(~reach, float("-inf"))
        if self.dedup and rounds > 1:
            count = self._count(slot, buckets, q_tok, prev_own(q_tok, 4), torch.float32)
            bias.sub_(count.clamp_min_(1).log_().to(dt))
        flat = (b * h * rounds, nc)
        out, lse = chunk_attention(qs.reshape(*flat, c, d), windows(ks).reshape(*flat, keys, d),
                                   windows(vs).reshape(*flat, keys, d),
                                   bias if bias.dim() == 2 else bias.view(*flat, c, keys),
                                   1.0 / math.sqrt(d))
        n = nc * c
        # the fused kernel's output and log-sum-exp need not be contiguous in this shape: reshape
        return self._merge(out.reshape(b, h, rounds, n, d), lse.float().reshape(b, h, rounds, n),
                           slot, qs.dtype)

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

    # decode (module docstring, "Decoding")

    decode_graphs = True

    def _hash_chunked(self, key: torch.Tensor) -> torch.Tensor:
        """``hash`` a chunk of tokens at a time: (B, H, N, D) -> (B, H, R, N)."""
        b, h, n, _ = key.shape
        chunk = max(1, 2**27 // max(1, b * h * self.n_hashes * max(self.n_buckets // 2, 1)))
        return torch.cat([self.hash(key[:, :, s:s + chunk]) for s in range(0, n, chunk)], dim=-1)

    def init_state(self, q, k, v, capacity=None):
        b, h, n, _ = q.shape
        rounds, c, nb = self.n_hashes, self.bucket_size, self.n_buckets
        key = shared_keys(q.to(torch.promote_types(q.dtype, torch.float32)))
        cache = DeviceKVCache(key.to(q.dtype), v, capacity, multiple=1)
        buckets = self._hash_chunked(key)  # (B, H, R, N)
        pos = torch.arange(n, device=q.device)
        order = (buckets * n + pos).argsort(dim=-1)  # by bucket, then position
        in_order = buckets.gather(-1, order)  # (B, H, R, N): bucket of each sorted slot
        counts = torch.zeros(b, h, rounds, nb, dtype=torch.long, device=q.device)
        counts.scatter_add_(-1, buckets, torch.ones_like(buckets))
        first = counts.cumsum(-1) - counts  # (B, H, R, nb): first slot of each bucket
        rank = pos - first.gather(-1, in_order)  # place of each sorted token within its bucket
        keep = rank >= counts.gather(-1, in_order) - c  # the last c of every bucket
        ring = torch.where(keep, in_order * c + rank % c, nb * c)  # past the end: discarded
        table = torch.full((b, h, rounds, nb * c + 1), -1, dtype=torch.int32, device=q.device)
        table.scatter_(-1, ring, order.int())
        return {"cache": cache, "table": table[..., :-1].reshape(b, h, rounds, nb, c).contiguous(),
                "counts": counts}

    def step(self, q_t, k_t, v_t, state: dict):
        b, h, _, d = q_t.shape
        rounds, c = self.n_hashes, self.bucket_size
        acc = torch.promote_types(q_t.dtype, torch.float32)
        cache, table, counts = state["cache"], state["table"], state["counts"]
        key_t = shared_keys(q_t.to(acc))  # (B, H, 1, D)
        bucket = self.hash(key_t)  # (B, H, R, 1)
        cand = table.gather(3, bucket[..., None].expand(b, h, rounds, 1, c)).view(b, h, rounds * c)
        cand = cand.long()  # (B, H, R·c): earlier tokens of t's bucket in each round, -1 = none
        valid = cand >= 0
        at = cand.clamp_min(0)[..., None]
        keys = cache.k.gather(2, at.expand(b, h, rounds * c, d))  # (B, H, R·c, D)
        vals = cache.v.gather(2, at.expand(b, h, rounds * c, v_t.shape[-1]))
        s = (q_t @ keys.transpose(-1, -2)).to(acc).mul_(1.0 / math.sqrt(d)).squeeze(-2)  # (B, H, R·c)
        if self.dedup and rounds > 1:  # a key found in m rounds counts once: -log m on each copy
            found = ((cand[..., :, None] == cand[..., None, :]) & valid[..., None, :]).sum(-1)
            s = s - found.clamp_min(1).to(acc).log()
        s = s.masked_fill(~valid, float("-inf"))
        own = SELF_SCORE + (0.0 if self.dedup else math.log(rounds))  # itself, in every round
        logits = torch.cat([s, torch.full_like(s[..., :1], own)], dim=-1)  # (B, H, R·c + 1)
        probs = torch.softmax(logits, dim=-1)[..., None, :]  # (B, H, 1, R·c + 1)
        out = (probs @ torch.cat([vals, v_t], dim=-2).to(acc)).to(v_t.dtype)  # (B, H, 1, D)
        # push t into its bucket's ring in every round, then into the cache
        slot = bucket * c + counts.gather(3, bucket) % c  # (B, H, R, 1)
        flat = table.view(b, h, rounds, -1)
        flat.scatter_(3, slot, cache.length.to(torch.int32).expand(b, h, rounds, 1))
        counts.scatter_add_(3, bucket, torch.ones_like(bucket))
        cache.append(key_t.to(q_t.dtype), v_t)
        return out, state

    def stats(self) -> dict:
        return dict(self._stats)

    def flops(self, q, k, v) -> float:
        b, h, n, d = q.shape
        keys = n if n == self.bucket_size else 2 * self.bucket_size
        return 4.0 * b * h * self.n_hashes * n * keys * d


def _lsh_constraint(p: LSHParams, ctx: BuildContext) -> str | None:
    if p.n_hashes < 1:
        return f"n_hashes={p.n_hashes} must be >= 1"
    if p.bucket_size < 1 or ctx.n % p.bucket_size:
        return f"n={ctx.n} must be divisible by bucket_size={p.bucket_size}"
    if p.kernel == "triton":
        return _triton_reason(p, ctx)
    return None


def _triton_reason(p: LSHParams, ctx: BuildContext) -> str | None:
    """Why the Triton kernels cannot serve this cell (None: they can)."""
    from attnbench.kernels import triton_available, triton_interpreting
    from attnbench.methods.lsh import lsh_triton

    if not triton_available():
        return "unavailable: kernel='triton' needs triton (pip install triton)"
    if ctx.device.type != "cuda" and not (ctx.device.type == "cpu" and triton_interpreting()):
        return (f"kernel='triton' needs a CUDA device, not {ctx.device.type} (on CPU only under "
                f"TRITON_INTERPRET=1); kernel='auto' picks what the device has")
    if p.bucket_size > lsh_triton.MAX_BUCKET or ctx.head_dim > lsh_triton.MAX_HEAD_DIM:
        return (f"kernel='triton' takes bucket_size <= {lsh_triton.MAX_BUCKET} and head_dim <= "
                f"{lsh_triton.MAX_HEAD_DIM}, not {p.bucket_size} and {ctx.head_dim}")
    return None


# One bucket of n: no hashing, one chunk holding every token, exact shared-QK attention (the module's
# exact_reference) whatever n_hashes is.
LIMIT = Limit(params=lambda ctx: {"bucket_size": ctx.n},
              note="bucket_size = n: one bucket, one chunk; exact against shared-QK attention")


@register_method("lsh", family="lsh", exact=False, params=LSHParams, causal=True, backward=True,
                 budget="n_hashes", constraints=(_lsh_constraint,), limit=LIMIT, decode=True)
def build_lsh(p: LSHParams, ctx: BuildContext) -> nn.Module:
    """Reformer LSH attention: shared-QK, hashed buckets, chunked sorted attention, n_hashes rounds."""
    return LSHAttention(p, ctx)
