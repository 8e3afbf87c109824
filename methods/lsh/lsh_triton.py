"""Triton kernels for Reformer LSH attention's forward (https://arxiv.org/abs/2001.04451;
:mod:`attnbench.methods.lsh`, ``kernel="triton"``): three launches and an argsort.

:func:`hash_keys` fuses the hash's argmax into the rotation product and writes each token's sort key
bucket·n + position, (B·H, R, n) int32; :func:`chunk_attention` attends every sorted chunk of c
queries to its 2c candidates read straight from q and v through the sorted order (the self rule, the
causal test and -log N_ij computed in the kernel), writing each round's output (B·H, R, n, D) and
log-sum-exp (B·H, R, n) at the tokens' own positions; :func:`merge_rounds` merges the rounds into
(B, H, n, D). Scores, softmax and merge are fp32; the products take the input dtype (fp32: no TF32).
Forward only. Under ``TRITON_INTERPRET=1`` (set before this module is first imported) the kernels run
on the CPU for the tests; without Triton the module imports and a call raises ``RuntimeError``. Why
these kernels, and what we measured: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import math

import torch

from attnbench.kernels import TRITON_MISSING, device_reason, triton_available

try:  # guarded: the package and the torch kernels must work without Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_BUCKET = 128  # chunk tiles are (c, c) in registers; larger chunks take the sdpa/torch kernels
MAX_HEAD_DIM = 128


def _pow2(x: int, low: int = 16) -> int:
    return max(low, triton.next_power_of_2(x)) if triton is not None else max(low, x)


def unsupported_reason(q: torch.Tensor, v: torch.Tensor, bucket_size: int) -> str | None:
    """Why the kernels cannot run these inputs (None if they can)."""
    if not triton_available():
        return TRITON_MISSING
    if q.device != v.device:
        return f"q on {q.device}, v on {v.device}"
    if (why := device_reason(q.device)) is not None:
        return why
    if q.dtype not in DTYPES or v.dtype != q.dtype:
        return f"dtypes q {q.dtype}, v {v.dtype}: the kernels take one of {DTYPES}"
    if q.dim() != 4 or v.shape != q.shape:
        return f"expected (B, H, N, D) q and v alike; got {tuple(q.shape)}, {tuple(v.shape)}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head_dim={q.shape[-1]} > {MAX_HEAD_DIM}"
    if bucket_size > MAX_BUCKET:
        return f"bucket_size={bucket_size} > {MAX_BUCKET} (the chunk tiles live in registers)"
    if q.shape[-2] * max(2, q.shape[-2] // bucket_size) >= 2**31:
        return "n·n_buckets >= 2**31 (int32 sort keys)"
    return None


if triton is not None:

    @triton.jit
    def _hash_kernel(X, ROT, OUT, n, nb2, H, n_blocks,
                     sx_b, sx_h, sx_n, sx_d, sr_r, sr_d, sr_k,
                     ROUNDS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, IEEE: tl.constexpr):
        """OUT[bh, r, i] = argmax([x_i R_r, -x_i R_r])·n + i, int32; OUT contiguous (B·H, R, n)."""
        pid = tl.program_id(0)
        bh = pid // n_blocks
        blk = pid % n_blocks
        b = bh // H
        h = bh % H
        offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        n_ok = offs_n < n
        d_ok = offs_d < D
        x = tl.load(X + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h + offs_n[:, None] * sx_n
                    + offs_d[None, :] * sx_d, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        out_base = OUT + bh.to(tl.int64) * ROUNDS * n
        for r in range(ROUNDS):
            best_pos = tl.full((BLOCK_N,), float("-inf"), tl.float32)
            best_neg = tl.full((BLOCK_N,), float("-inf"), tl.float32)
            arg_pos = tl.zeros((BLOCK_N,), tl.int32)
            arg_neg = tl.zeros((BLOCK_N,), tl.int32)
            for start in range(0, nb2, BLOCK_B):
                offs_b = start + tl.arange(0, BLOCK_B)
                b_ok = offs_b < nb2
                rot = tl.load(ROT + r * sr_r + offs_d[:, None] * sr_d + offs_b[None, :] * sr_k,
                              mask=d_ok[:, None] & b_ok[None, :], other=0.0)
                if IEEE:
                    s = tl.dot(x, rot.to(x.dtype), input_precision="ieee")  # (BLOCK_N, BLOCK_B)
                else:
                    s = tl.dot(x, rot.to(x.dtype))  # (BLOCK_N, BLOCK_B) fp32
                sp = tl.where(b_ok[None, :], s, float("-inf"))
                sn = tl.where(b_ok[None, :], -s, float("-inf"))
                mp = tl.max(sp, 1)
                mn = tl.max(sn, 1)
                ap = tl.argmax(sp, 1, tie_break_left=True).to(tl.int32) + start
                an = tl.argmax(sn, 1, tie_break_left=True).to(tl.int32) + start
                # strictly greater: an earlier tile keeps a tie, as argmax over the whole row does
                up = mp > best_pos
                un = mn > best_neg
                best_pos = tl.where(up, mp, best_pos)
                arg_pos = tl.where(up, ap, arg_pos)
                best_neg = tl.where(un, mn, best_neg)
                arg_neg = tl.where(un, an, arg_neg)
            # [x, -x]: the first half wins a tie
            bucket = tl.where(best_pos >= best_neg, arg_pos, arg_neg + nb2)
            tl.store(out_base + r * n + offs_n, bucket * n + offs_n, mask=n_ok)

    @triton.jit
    def _unit(x):
        """Rows of x over their length (at least 1e-6), in x's dtype: Reformer's shared keys."""
        xf = x.to(tl.float32)
        norm = tl.sqrt(tl.sum(xf * xf, 1))
        return (xf / tl.maximum(norm, 1e-6)[:, None]).to(x.dtype)

    @triton.jit
    def _count_pairs(SLOT, SKEY, bh, qtok, ktok, n, nc,
                     C: tl.constexpr, ROUNDS: tl.constexpr, CAUSAL: tl.constexpr):
        """N_ij for the (queries, keys) tile: in how many rounds key j is a candidate of query i."""
        count = tl.zeros((qtok.shape[0], ktok.shape[0]), tl.float32)
        base = bh.to(tl.int64) * ROUNDS * n
        for r in range(ROUNDS):
            sq = tl.load(SLOT + base + r * n + qtok)
            sk = tl.load(SLOT + base + r * n + ktok)
            if CAUSAL:
                bq = tl.load(SKEY + base + r * n + qtok) // n
                bk = tl.load(SKEY + base + r * n + ktok) // n
                back = sq[:, None] - sk[None, :]
                hit = (bq[:, None] == bk[None, :]) & (back >= 0) & (back <= C)
            else:
                d = sq[:, None] // C - sk[None, :] // C
                hit = (d == 0) | (d == 1) | (d == 1 - nc)
            count += hit.to(tl.float32)
        return count

    @triton.jit
    def _scores(q, k, qtok, ktok, q_slot, k_slot, k_ok, SKEY, SLOT, bh, r, n, nc, scale, self_score,
                C: tl.constexpr, ROUNDS: tl.constexpr, CAUSAL: tl.constexpr, DEDUP: tl.constexpr,
                IEEE: tl.constexpr):
        """One (queries, keys) score tile of round r, with every rule applied (natural-log units)."""
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        else:
            s = tl.dot(q, tl.trans(k)) * scale  # fp32
        s = tl.where(qtok[:, None] == ktok[None, :], self_score, s)
        ok = k_ok[None, :]
        if CAUSAL:
            base = bh.to(tl.int64) * ROUNDS * n + r * n
            bq = tl.load(SKEY + base + qtok) // n
            bk = tl.load(SKEY + base + ktok) // n
            back = q_slot[:, None] - k_slot[None, :]
            ok = ok & (bq[:, None] == bk[None, :]) & (back >= 0) & (back <= C)
        if DEDUP:
            count = _count_pairs(SLOT, SKEY, bh, qtok, ktok, n, nc, C, ROUNDS, CAUSAL)
            s = s - tl.log(tl.maximum(count, 1.0))
        return tl.where(ok, s, float("-inf"))

    @triton.jit
    def _chunk_kernel(Q, V, ORDER, SKEY, SLOT, O, LSE, n, nc, H, scale, self_score,
                      sq_b, sq_h, sq_n, sq_d, sv_b, sv_h, sv_n, sv_d,
                      C: tl.constexpr, BLOCK_C: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                      ROUNDS: tl.constexpr, TWO: tl.constexpr, CAUSAL: tl.constexpr,
                      DEDUP: tl.constexpr, IEEE: tl.constexpr):
        """O[bh, r, token], LSE[bh, r, token] for the c queries of one sorted chunk in round r.

        ORDER (B·H, R, n): the token at each sorted slot; SKEY: bucket·n + position per token; SLOT:
        each token's slot (read only for the duplicate count). O (B·H, R, n, D), LSE (B·H, R, n)."""
        pid = tl.program_id(0)
        chunk = pid % nc
        rest = pid // nc
        r = rest % ROUNDS
        bh = rest // ROUNDS
        b = bh // H
        h = bh % H
        rows = tl.arange(0, BLOCK_C)
        row_ok = rows < C
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        round_base = bh.to(tl.int64) * ROUNDS * n + r * n
        q_slot = chunk * C + rows
        qtok = tl.load(ORDER + round_base + q_slot, mask=row_ok, other=0)
        q_base = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
        v_base = V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
        tile_ok = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + qtok[:, None] * sq_n + offs_d[None, :] * sq_d, mask=tile_ok, other=0.0)
        v_own = tl.load(v_base + qtok[:, None] * sv_n + offs_d[None, :] * sv_d, mask=tile_ok, other=0.0)
        s_own = _scores(q, _unit(q), qtok, qtok, q_slot, q_slot, row_ok, SKEY, SLOT, bh, r, n, nc,
                        scale, self_score, C, ROUNDS, CAUSAL, DEDUP, IEEE)
        m = tl.max(s_own, 1)
        if TWO:  # the chunk before (cyclic): its c tokens are the other half of the keys
            prev = (chunk + nc - 1) % nc
            p_slot = prev * C + rows
            ptok = tl.load(ORDER + round_base + p_slot, mask=row_ok, other=0)
            k_prev = _unit(tl.load(q_base + ptok[:, None] * sq_n + offs_d[None, :] * sq_d,
                                   mask=tile_ok, other=0.0))
            v_prev = tl.load(v_base + ptok[:, None] * sv_n + offs_d[None, :] * sv_d, mask=tile_ok,
                             other=0.0)
            s_prev = _scores(q, k_prev, qtok, ptok, q_slot, p_slot, row_ok, SKEY, SLOT, bh, r, n,
                             nc, scale, self_score, C, ROUNDS, CAUSAL, DEDUP, IEEE)
            m = tl.maximum(m, tl.max(s_prev, 1))
        # every query has a finite score (its own, at worst): m is finite on valid rows; padded rows
        # (all keys masked) get m = -inf, which the where below keeps out of the arithmetic
        m = tl.where(row_ok, m, 0.0)
        p = tl.exp(s_own - m[:, None])
        total = tl.sum(p, 1)
        if IEEE:
            acc = tl.dot(p, v_own, input_precision="ieee")
        else:
            acc = tl.dot(p.to(v_own.dtype), v_own)
        if TWO:
            p2 = tl.exp(s_prev - m[:, None])
            total += tl.sum(p2, 1)
            if IEEE:
                acc = tl.dot(p2, v_prev, acc, input_precision="ieee")
            else:
                acc = tl.dot(p2.to(v_prev.dtype), v_prev, acc)
        total = tl.where(row_ok, total, 1.0)
        out = acc / total[:, None]
        o_ptrs = O + (round_base + qtok[:, None]) * D + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=tile_ok)
        tl.store(LSE + round_base + qtok, m + tl.log(total), mask=row_ok)

    @triton.jit
    def _merge_kernel(O, LSE, OUT, n, H, n_blocks, so_b, so_h, so_n, so_d,
                      ROUNDS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_N: tl.constexpr):
        """OUT[b, h, i] = Σ_r softmax_r(LSE[bh, :, i]) · O[bh, r, i]."""
        pid = tl.program_id(0)
        bh = pid // n_blocks
        blk = pid % n_blocks
        b = bh // H
        h = bh % H
        offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        n_ok = offs_n < n
        tile_ok = n_ok[:, None] & (offs_d < D)[None, :]
        base = bh.to(tl.int64) * ROUNDS * n
        top = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        for r in range(ROUNDS):
            top = tl.maximum(top, tl.load(LSE + base + r * n + offs_n, mask=n_ok, other=0.0))
        total = tl.zeros((BLOCK_N,), tl.float32)
        acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        for r in range(ROUNDS):
            w = tl.exp(tl.load(LSE + base + r * n + offs_n, mask=n_ok, other=0.0) - top)
            o = tl.load(O + (base + r * n + offs_n[:, None]) * D + offs_d[None, :], mask=tile_ok,
                        other=0.0)
            total += w
            acc += w[:, None] * o.to(tl.float32)
        out = acc / total[:, None]
        tl.store(OUT + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + offs_n[:, None] * so_n
                 + offs_d[None, :] * so_d, out.to(OUT.dtype.element_ty), mask=tile_ok)


def _check(q, v, bucket_size):
    if triton is None:
        raise RuntimeError("attnbench.methods.lsh.lsh_triton needs triton (pip install triton)")
    if (why := unsupported_reason(q, v, bucket_size)) is not None:
        raise ValueError(f"LSH Triton kernels cannot run this: {why}")


def hash_keys(q: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Sort keys ``bucket·n + position`` (int32, (B·H, R, n)) of every token in every round.

    ``rotations`` (R, D, n_buckets/2), any float dtype: the bucket of x in round r is
    argmax([x R_r, -x R_r]), as :meth:`attnbench.methods.lsh.LSHAttention.hash`."""
    b, h, n, d = q.shape
    rounds, _, nb2 = rotations.shape
    out = torch.empty((b * h, rounds, n), device=q.device, dtype=torch.int32)
    block_n = 64 if n >= 64 else 16
    n_blocks = triton.cdiv(n, block_n)
    _hash_kernel[(b * h * n_blocks,)](
        q, rotations, out, n, nb2, h, n_blocks, *q.stride(), *rotations.stride(),
        ROUNDS=rounds, D=d, BLOCK_D=_pow2(d), BLOCK_N=block_n, BLOCK_B=min(128, _pow2(nb2)),
        IEEE=q.dtype == torch.float32, num_warps=4)
    return out


def chunk_attention(q: torch.Tensor, v: torch.Tensor, order: torch.Tensor, skey: torch.Tensor,
                    slot: torch.Tensor | None, bucket_size: int, *, causal: bool, dedup: bool,
                    self_score: float, scale: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every round's attention within the sorted chunks: output (B·H, R, n, D) in q's dtype and
    log-sum-exp (B·H, R, n) fp32, both at the tokens' positions.

    ``order`` (B·H, R, n): token at each sorted slot; ``skey``: :func:`hash_keys`'s keys; ``slot``:
    each token's slot, needed for ``dedup`` only; ``self_score``: the score of a query against itself
    (Reformer's -1e5)."""
    b, h, n, d = q.shape
    rounds = order.shape[1]
    c = bucket_size
    nc = n // c
    dedup = dedup and rounds > 1
    if dedup and slot is None:
        raise ValueError("dedup needs each token's slot")
    o = torch.empty((b * h, rounds, n, d), device=q.device, dtype=q.dtype)
    lse = torch.empty((b * h, rounds, n), device=q.device, dtype=torch.float32)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    block_c = _pow2(c)
    _chunk_kernel[(b * h * rounds * nc,)](
        q, v, order, skey, order if slot is None else slot, o, lse, n, nc, h, scale, self_score,
        *q.stride(), *v.stride(),
        C=c, BLOCK_C=block_c, D=d, BLOCK_D=_pow2(d), ROUNDS=rounds, TWO=nc > 1, CAUSAL=causal,
        DEDUP=dedup, IEEE=q.dtype == torch.float32, num_warps=4 if block_c * _pow2(d) <= 64 * 64 else 8)
    return o, lse


def merge_rounds(o: torch.Tensor, lse: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Rounds merged with their log-sum-exp weights into ``out`` (B, H, n, D), returned."""
    b, h, n, d = out.shape
    rounds = o.shape[1]
    block_n = 64 if n >= 64 else 16
    n_blocks = triton.cdiv(n, block_n)
    _merge_kernel[(b * h * n_blocks,)](o, lse, out, n, h, n_blocks, *out.stride(), ROUNDS=rounds,
                                       D=d, BLOCK_D=_pow2(d), BLOCK_N=block_n, num_warps=4)
    return out


def lsh_forward(q: torch.Tensor, v: torch.Tensor, rotations: torch.Tensor, bucket_size: int, *,
                causal: bool, dedup: bool, self_score: float,
                skey: torch.Tensor | None = None) -> torch.Tensor:
    """LSH attention (shared QK, the self rule, R rounds of sorted chunks) of q (B, H, n, D) over v.

    ``rotations`` (R, D, n_buckets/2); with ``n_buckets == 1`` (``bucket_size == n``) there is no
    hash. ``skey`` overrides the hash (tests: equal buckets for two kernels). Forward only."""
    _check(q, v, bucket_size)
    b, h, n, d = q.shape
    rounds = rotations.shape[0]
    if skey is None:
        if n == bucket_size:  # one bucket: the sorted order is the positions
            skey = torch.arange(n, device=q.device, dtype=torch.int32).expand(b * h, rounds, n)
        else:
            skey = hash_keys(q, rotations)
    skey = skey.contiguous()
    order = skey.argsort(dim=-1)  # (B·H, R, n) int64: keys are unique, no stable sort needed
    slot = None
    if dedup and rounds > 1:
        pos = torch.arange(n, device=q.device).expand_as(order)
        slot = torch.empty_like(order).scatter_(-1, order, pos)
    o, lse = chunk_attention(q, v, order, skey, slot, bucket_size, causal=causal, dedup=dedup,
                             self_score=self_score)
    return merge_rounds(o, lse, torch.empty_like(q, memory_format=torch.contiguous_format))
