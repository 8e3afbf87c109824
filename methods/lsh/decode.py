"""Decoding of Reformer's LSH attention (https://arxiv.org/abs/2001.04451), causal, one token a step.

The state keeps the shared keys and values of every token, (B, H, L, D), and per round and bucket a
ring of the last ``bucket_size`` positions, (B, H, R, n_buckets, bucket_size); a step hashes the new
token, scores its R·bucket_size candidates and pushes its position into its buckets' rings. Fixed
shapes, positions on the device: a step replays in a CUDA graph. Why these candidates:
results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import math

import torch

from attnbench.decode_state import DeviceKVCache
from attnbench.methods.lsh.reference import SELF_SCORE, shared_keys


class LSHDecode:
    """``init_state``/``step`` of :class:`attnbench.methods.lsh.attention.LSHAttention` (a mixin: it
    uses the module's ``hash``, ``n_hashes``, ``bucket_size``, ``n_buckets`` and ``dedup``)."""

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
