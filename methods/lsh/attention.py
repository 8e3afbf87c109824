"""Reformer's LSH attention (Kitaev, Kaiser & Levskaya, 2020, https://arxiv.org/abs/2001.04451): the
module, its params and its torch and fused (sdpa) kernels; the Triton kernels are in
:mod:`attnbench.methods.lsh.lsh_triton`.

q, v (B, H, N, D) -> (B, H, N, D) (k is unused: shared QK). Each round's sorted order is cut into
chunks of ``bucket_size``; a chunk's queries attend to 2·bucket_size candidate keys, (B, H, R, chunks,
bucket_size, 2·bucket_size) scores in the torch kernel, and the rounds are merged by their
log-sum-exps. Definitions and kernel choice: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attnbench.methods.lsh.decode import LSHDecode
from attnbench.methods.lsh.reference import SELF_SCORE, shared_keys, shared_qk_attention
from attnbench.params import Positive
from attnbench.registry import BuildContext

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


class LSHAttention(LSHDecode, nn.Module):
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

    # decode: init_state and step come from LSHDecode (attnbench.methods.lsh.decode)

    def stats(self) -> dict:
        return dict(self._stats)

    def flops(self, q, k, v) -> float:
        b, h, n, d = q.shape
        keys = n if n == self.bucket_size else 2 * self.bucket_size
        return 4.0 * b * h * self.n_hashes * n * keys * d


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
