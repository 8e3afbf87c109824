"""Reformer's LSH attention (Kitaev, Kaiser & Levskaya, 2020, https://arxiv.org/abs/2001.04451).

Queries double as keys (shared-QK: key j is query j scaled to unit length); random rotations hash the
keys into buckets, tokens are sorted by (bucket, position) and each fixed-size chunk of the sorted order
attends within itself and the chunk before, so similar tokens meet without an n × n score matrix.
q, v (B, H, N, D) -> (B, H, N, D); ``n_hashes`` rounds R, n / ``bucket_size`` buckets.

``attention.py`` the module and its torch and sdpa kernels, ``lsh_triton.py`` the Triton forward,
``decode.py`` one token a step, ``reference.py`` exact shared-QK attention. Definitions, the three
kernels and their timings: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

from torch import nn

from attnbench.methods.lsh.attention import (LSHAttention, LSHParams, _triton_reason, default_kernel,
                                             num_buckets)
from attnbench.methods.lsh.reference import shared_keys, shared_qk_attention
from attnbench.registry import BuildContext, Limit, register_method

__all__ = ["LSHAttention", "LSHParams", "default_kernel", "num_buckets", "shared_keys",
           "shared_qk_attention"]


def _lsh_constraint(p: LSHParams, ctx: BuildContext) -> str | None:
    if p.n_hashes < 1:
        return f"n_hashes={p.n_hashes} must be >= 1"
    if p.bucket_size < 1 or ctx.n % p.bucket_size:
        return f"n={ctx.n} must be divisible by bucket_size={p.bucket_size}"
    if p.kernel == "triton":
        return _triton_reason(p, ctx)
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
