"""Attention of a few queries over many keys, with the keys split into ranges folded into the batch:
Nyströmformer's m landmark queries over all n keys (https://arxiv.org/abs/2102.03902).

Fused attention kernels (SDPA's flash and memory-efficient ones) give each thread block a block of
queries and walk it over every key. With few queries (softmax(Q̃Kᵀ)V, m = 256) that is a handful of
blocks a head: at batch 1 and 8 heads about 32 for the whole GPU, each walking all n keys alone.
:func:`split_key_attention` cuts the keys into ``splits`` equal ranges, runs one attention call over
``batch × splits`` (a free view when the keys' batch stride is ``splits`` times a range's, as for a
layer's (B, N, H, D) storage), and merges the ranges with their log-sum-exps: the output (B, H, m, D)
is Σ_r softmax_r(lse_r)·out_r, exact up to rounding. Public SDPA does not return the log-sum-exp, so
on CUDA the call goes to the op behind it (``aten._scaled_dot_product_efficient_attention`` for fp32,
``aten._scaled_dot_product_flash_attention`` for fp16/bf16); :func:`attend_with_lse` is that choice,
and a test passes its own ``attend`` (an explicit float64 one) to check the merging on the CPU.
"""
from __future__ import annotations

from typing import Callable

import torch

AttendWithLse = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float],
                         tuple[torch.Tensor, torch.Tensor]]

# Per dtype, the rule that picks the number of key ranges (measured on an H100 at m = 256 queries,
# 8 heads, head_dim 64; times with CUDA-graph replay):
#   query_block: query rows one thread block of the fused kernel takes (memory-efficient fp32: 64,
#     flash fp16/bf16: 128);
#   blocks_per_sm: ranges are doubled while the call stays within this many blocks a multiprocessor;
#   min_range: keys a range keeps at least (shorter ones spend more on merging than they save).
# fp32, batch 1: 0.042 (8 ranges) against 0.046 ms for two explicit products at n = 1024, 0.097
# against 0.238 at 4096, 0.31 against 0.88 at 16384; batch 8 (256 blocks) gains nothing, so stays one
# call. fp16, batch 1: 0.058 (4 ranges) against 0.143 ms for one flash call at n = 16384, equal at
# 4096, and slower at 1024 (0.027 against 0.016), where the merge costs more than the call.
SPLIT_RULES = {
    torch.float32: dict(query_block=64, blocks_per_sm=2.0, min_range=128),
    torch.float16: dict(query_block=128, blocks_per_sm=0.5, min_range=1024),
    torch.bfloat16: dict(query_block=128, blocks_per_sm=0.5, min_range=1024),
}


def attend_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ·scale)·v and the natural-log log-sum-exp per query row, (B, H, m): the fused
    kernels SDPA dispatches to on CUDA (memory-efficient for fp32, flash for fp16/bf16)."""
    m = q.shape[-2]
    if q.dtype == torch.float32:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)[:2]
    return out, lse[..., :m]


def choose_splits(batch_heads: int, m: int, n: int, multiprocessors: int,
                  dtype: torch.dtype = torch.float32) -> int:
    """Key ranges for one call of m queries over n keys (1: no split), by :data:`SPLIT_RULES`:
    doubled while the call stays within ``blocks_per_sm`` query blocks a multiprocessor, each range
    keeps ``min_range`` keys, and n stays divisible."""
    rule = SPLIT_RULES.get(dtype)
    if rule is None:
        return 1
    blocks = batch_heads * -(-m // rule["query_block"])
    target = rule["blocks_per_sm"] * multiprocessors
    splits = 1
    while (blocks * 2 * splits <= target and n % (2 * splits) == 0
           and n // (2 * splits) >= rule["min_range"]):
        splits *= 2
    return splits


def split_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        splits: int, attend: AttendWithLse | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v for q (B, H, m, D) over k, v (B, H, N, D), N divisible by ``splits``, as
    ``splits`` attention calls over key ranges merged by their log-sum-exps. ``attend``: the call
    returning (out, lse) (default :func:`attend_with_lse`). Returns (B, H, m, D) in q's dtype."""
    b, h, m, d = q.shape
    n = k.shape[-2]
    if n % splits:
        raise ValueError(f"n={n} keys do not split into {splits} equal ranges")
    attend = attend or attend_with_lse
    length = n // splits

    def ranges(x: torch.Tensor) -> torch.Tensor:  # (B, H, N, D) -> (B·S, H, N/S, D)
        return x.unflatten(2, (splits, length)).transpose(1, 2).reshape(b * splits, h, length, d)

    qs = q.unsqueeze(1).expand(b, splits, h, m, d).reshape(b * splits, h, m, d)
    out, lse = attend(qs, ranges(k), ranges(v), scale)
    weights = torch.softmax(lse.float().view(b, splits, h, m), dim=1)  # each range's share of a row
    merged = (out.view(b, splits, h, m, d).float() * weights[..., None]).sum(1)
    return merged.to(q.dtype)
