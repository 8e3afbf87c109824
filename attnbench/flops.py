"""FLOP counts that mean something: the arithmetic a method must do, masks discounted.

Softmax attention costs 4·d FLOPs per (query, key) pair it scores (2·d for q·k, 2·d for p·v), so a
count is 4·b·h·d times the number of *allowed* pairs: n·m without a mask, n(n+1)/2 causal (half of
the dense count plus the diagonal's share, 1/(2n) of it), the pattern's allowed pairs for a fixed
sparse pattern (its density times n²). Work a kernel does on masked-out pairs inside a partly
allowed block is not counted: the rows' ``tflops_per_s`` is useful work per second, comparable
across kernels (attention-gym and FlashAttention count the same pairs for causal and block masks;
FlashAttention's n²/2 omits the diagonal's share).

``flops`` hooks return forward FLOPs; the harness counts a ``fwd_bwd`` call as 3× (the backward's
dq, dk, dv and dP products are twice the forward's; FlashAttention's benchmarks count 2.5× for the
backward because its recomputation of P is included).

The recurrent (chunked) operators are counted as their chunked algorithm with chunk c: per position
and head 2·dk·dv to update the state, 2·dk·dv to read it, and (c+1)·(dk + dv) for the causal half of
the c×c intra-chunk block; the delta rule adds its WY correction.
"""
from __future__ import annotations


def causal_pairs(n: int, m: int | None = None) -> int:
    """Pairs (i, j) with j <= i + (m − n), the causal mask of n queries on m keys (bottom-right)."""
    m = n if m is None else m
    offset = m - n
    # query i sees min(m, max(0, i + 1 + offset)) keys
    return sum(min(m, max(0, i + 1 + offset)) for i in range(n)) if offset else n * (n + 1) // 2


def dense_pairs(n: int, m: int, causal: bool) -> int:
    return causal_pairs(n, m) if causal else n * m


def window_pairs(n: int, window: int, causal: bool) -> int:
    """Pairs with |i − j| < window (causal: 0 <= i − j < window) on n positions."""
    w = min(window, n)
    behind = w * (w + 1) // 2 + (n - w) * w  # Σ_i min(i + 1, w): j <= i in the window, diagonal too
    return behind if causal else 2 * behind - n


def attention_flops(batch: int, heads: int, head_dim: int, pairs: float,
                    value_dim: int | None = None) -> float:
    """4·d FLOPs per scored pair (2·d for q·k and 2·d_v for p·v)."""
    dv = head_dim if value_dim is None else value_dim
    return 2.0 * batch * heads * pairs * (head_dim + dv)


def chunked_linear_flops(batch: int, heads: int, n: int, dk: int, dv: int, chunk: int = 64,
                         delta: bool = False) -> float:
    """The chunked linear-recurrence algorithm: state update and read (4·dk·dv per position) and the
    causal half of each c×c intra-chunk block ((c+1)·(dk+dv)); ``delta`` adds the delta rule's WY
    correction (k·kᵀ in the chunk, the triangular solve applied to k and v, and w·S: (c+1)·dk +
    2c·(dk+dv) + 2·dk·dv)."""
    c = min(chunk, n)
    per = 4.0 * dk * dv + (c + 1) * (dk + dv)
    if delta:
        per += (c + 1) * dk + 2.0 * c * (dk + dv) + 2.0 * dk * dv
    return batch * heads * n * per


def based_flops(batch: int, heads: int, n: int, dk: int, dv: int) -> float:
    """Based's parallel form: every causal pair scores q·k (2·dk), the polynomial (4) and weighs
    values and the normaliser (2·(dv+1))."""
    return batch * heads * causal_pairs(n) * (2.0 * dk + 4 + 2.0 * (dv + 1))


def nsa_flops(batch: int, heads: int, n: int, d: int, block_size: int, block_counts: int) -> float:
    """NSA's compressed branch (each query against the complete compressed blocks before it) and
    selected branch (each query against up to ``block_counts`` blocks, causal inside its own)."""
    cmp_pairs = sum((i + 1) // block_size for i in range(n))
    slc_pairs = sum(min(block_counts * block_size, i + 1) for i in range(n))
    return attention_flops(batch, heads, d, cmp_pairs + slc_pairs)
