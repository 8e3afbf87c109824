"""Bidirectional FAVOR+ (Choromanski et al., 2020, https://arxiv.org/abs/2009.14794), stabilised for
fp16/bf16 with every shift folded into the matmuls.

:func:`favor_bidirectional` takes q, k, v (B, H, N, D) and the constants :func:`favor_constants`
builds once per ω (m, d), dtype and device; key and query exponents (B, H, N, m) each come out of
one matmul with their shifts folded in, and the key state (B, H, m, D') is normalised per feature.
How and why the shifts cancel: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class FavorConstants(NamedTuple):
    """What ``favor_bidirectional`` multiplies with, built once per ω, dtype and device (no host to
    device copies per call, so the forward can be captured in a CUDA graph).

    Keys and queries share one projection matrix: rows 0..d−1 ωᵀ·d^(-1/4), rows d, d+1 the constant
    −d^(-1/2)/2 in two parts, row d+2 the key maxima M, zeros up to row Kk = pad8(d+3) (the keys' width),
    row Kk the log denominators L, zeros up to Kq = Kk + 8 (the queries' width). Keys
    [k, ‖k‖², ‖k‖², −1, 0…] use the first Kk rows; queries [q, 0, 0, 1, 0…, 1, 0…] all Kq rows, so they
    skip the constant and add M + L. L sits past the keys' rows so that the key product never reads
    it, not even as 0 times a value left by an earlier call."""

    proj: torch.Tensor  # (Kq, m), rows M and L zero
    q_tail: torch.Tensor  # (Kq − d,): 1 at the M and L rows, else 0
    k_tail: torch.Tensor  # (Kk − d − 2,): [−1, 0…], the key columns after [k, ‖k‖², ‖k‖²]
    v_tail: torch.Tensor  # (D' − d,): [1, 0…], D' = d + 1 rounded up to a multiple of 8
    alpha: float  # value scale: 2^-14 in fp16, else 1
    views: dict  # (B, H, N) -> the expanded views of the above that one call needs (saves dispatch)
    work: dict  # (B, H) -> a (B, H, Kq, m) copy of proj whose M and L rows calls without autograd
    #             overwrite in place (two concatenations fewer per call)


def _pad8(width: int) -> int:
    return -(-width // 8) * 8


def _widths(d: int) -> tuple[int, int]:
    """(Kk, Kq): the keys' and the queries' augmented widths."""
    kk = _pad8(d + 3)
    return kk, kk + 8


def favor_constants(omega: torch.Tensor, dtype: torch.dtype) -> FavorConstants:
    """The shared projection (layout in :class:`FavorConstants`): rows d and d+1 are −d^(-1/2)/2 split
    into its value in ``dtype`` and the remainder (the keys carry ‖k‖² in two columns, so the constant
    is applied to about twice the dtype's precision); rows M and L are zeros, replaced per call by the
    stabilising shifts."""
    m, d = omega.shape
    kk, kq = _widths(d)
    acc = torch.promote_types(dtype, torch.float32)
    scale = d ** -0.25
    c = torch.tensor(-scale * scale / 2, dtype=torch.float64)
    c_hi = c.to(dtype)
    proj = torch.zeros(kq, m, dtype=dtype, device=omega.device)
    proj[:d] = (omega.to(acc) * scale).t().to(dtype)
    proj[d] = c_hi
    proj[d + 1] = (c - c_hi.double()).to(dtype)
    alpha = 2.0 ** -14 if dtype == torch.float16 else 1.0
    q_tail = torch.zeros(kq - d, dtype=dtype, device=omega.device)
    q_tail[2] = q_tail[kk - d] = 1.0  # the M and L rows

    def row(values, size):
        return torch.tensor(values + [0.0] * (size - len(values)), dtype=dtype, device=omega.device)

    return FavorConstants(proj, q_tail, row([-1.0], kk - d - 2), row([1.0], _pad8(d + 1) - d), alpha,
                          {}, {})


def _expand(proj, q_tail, k_tail, v_tail, b: int, h: int, n: int, d: int):
    """The views of the constants that one (B, H, N, d) call multiplies and concatenates with: the
    keys' rows transposed (for the column maxima), then the expanded tails and row blocks."""
    width, m = proj.shape
    kk = _widths(d)[0]
    rows = proj.expand(b, h, width, m)
    return (proj[:kk].t(), k_tail.expand(b, h, n, -1), v_tail.expand(b, h, n, -1),
            q_tail.expand(b, h, n, -1), rows[:, :, :d + 2], rows[:, :, d + 3:kk], rows[:, :, kk + 1:])


def _cached(cache: dict, key, make):
    """``cache[key]``, made on first use; a cache past 16 shapes starts over."""
    found = cache.get(key)
    if found is None:
        if len(cache) > 16:
            cache.clear()
        found = cache[key] = make()
    return found


def _views(consts: FavorConstants, b: int, h: int, n: int, d: int):
    return _cached(consts.views, (b, h, n), lambda: _expand(consts.proj, consts.q_tail, consts.k_tail,
                                                              consts.v_tail, b, h, n, d))


def _work(consts: FavorConstants, b: int, h: int, d: int):
    """(the shared (B, H, Kq, m) matrix, its first Kk rows, its M row, its L row) for calls without
    autograd. Each call rewrites M and L before it reads them; calls on one module must not overlap
    (one stream, as a module's calls are)."""
    def make():
        kk = _widths(d)[0]
        mat = consts.proj.expand(b, h, *consts.proj.shape).clone()
        return mat, mat[:, :, :kk], mat[:, :, d + 2], mat[:, :, kk]

    return _cached(consts.work, (b, h), make)


def favor_compilable(q, k, v, proj, q_tail, k_tail, v_tail, alpha: float) -> torch.Tensor:
    """``favor_bidirectional`` on plain tensor arguments (no view cache), for torch.compile."""
    b, h, n, d = q.shape
    out = _favor(q, k, v, alpha, *_expand(proj, q_tail, k_tail, v_tail, b, h, n, d))
    return out[..., :d] / out[..., d:d + 1]


def _key_state(kf, vv, alpha: float, d: int, log_out: torch.Tensor | None = None):
    """The per-feature state α·Σ_j φ(k_j)[v_j, 1, 0…] (α keeps fp16 sums over n keys in range, bound
    in results/README.md's notes) divided by exp(L_l), L_l its log denominator rounded to the dtype, so that
    the queries can add exactly the same L_l; the denominator column of the result is ≈ 1. ``log_out``,
    a (B, H, m) view, receives L when given."""
    if alpha == 1.0:
        kv = kf.transpose(-1, -2) @ vv  # (B, H, m, D')
    else:  # α applied to the fp32 product, one launch (α·vv first would round v·α to subnormals)
        b, h, n, m = kf.shape
        kv = torch.baddbmm(kf.new_zeros(()), kf.reshape(b * h, n, m).transpose(1, 2),
                           vv.reshape(b * h, n, -1), beta=0.0, alpha=alpha).view(b, h, m, -1)
    if log_out is None:
        log_sum = torch.log(kv[..., d:d + 1])  # (B, H, m, 1)
    else:
        log_sum = torch.log(kv[..., d], out=log_out)[..., None]
    scale = torch.exp(log_sum)
    return kv / scale, log_sum, scale


class _KeyState(torch.autograd.Function):
    """``_key_state`` with a backward that applies α/exp(L_l) = 1/S_l ≤ 1 to the incoming gradient
    before the two matmuls; autograd through the separate steps would first multiply it by
    1/exp(L_l), up to 2^14 in fp16, and overflow."""

    @staticmethod
    def forward(ctx, kf, vv, alpha: float, d: int):
        kvn, log_sum, scale = _key_state(kf, vv, alpha, d)
        ctx.save_for_backward(kf, vv, scale)
        ctx.alpha = alpha
        ctx.mark_non_differentiable(log_sum)
        return kvn, log_sum

    @staticmethod
    def backward(ctx, grad, _grad_log_sum):
        kf, vv, scale = ctx.saved_tensors
        acc = torch.promote_types(grad.dtype, torch.float32)
        # under autocast the forward's matmul ran in bf16/fp16 while log and exp made its output fp32:
        # the gradient can arrive in fp32 beside half-precision kf and vv. The matmuls run in the
        # operands' dtype and each gradient leaves in its input's dtype.
        work = torch.promote_types(kf.dtype, vv.dtype)
        g = (grad.to(acc) * (ctx.alpha / scale.to(acc))).to(work)  # (B, H, m, D'): grad/S_l
        grad_kf = grad_vv = None
        if ctx.needs_input_grad[0]:
            grad_kf = (vv.to(work) @ g.transpose(-1, -2)).to(kf.dtype)  # (B, H, N, m)
        if ctx.needs_input_grad[1]:
            grad_vv = (kf.to(work) @ g).to(vv.dtype)  # (B, H, N, D')
        return grad_kf, grad_vv, None, None


def favor_bidirectional(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        consts: FavorConstants) -> torch.Tensor:
    """Bidirectional FAVOR+ from q, k, v (B, H, N, D) and ``favor_constants``, in the form results/README.md's
    notes describe: each exponent comes out of one matmul with its shifts folded in, so the
    (B, H, N, m) tensors see a projection and a column max (keys, no autograd), a projection, exp and
    the state matmul (keys), a projection, a row softmax and the readout matmul (queries)."""
    b, h, n, d = q.shape
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    work = None if grad else _work(consts, b, h, d)
    out = _favor(q, k, v, consts.alpha, *_views(consts, b, h, n, d), work=work)
    if grad:
        return out[..., :d] / out[..., d:d + 1]
    # without autograd the quotient goes straight into (B, N, H, D) memory, whose (B, H, N, D) view
    # this returns: a layer's output projection then reads it without a transposing copy
    res = out.new_empty(b, n, h, d).transpose(1, 2)
    return torch.div(out[..., :d], out[..., d:d + 1], out=res)


def _favor(q, k, v, alpha, proj_kt, k_tail, v_tail, q_tail, rows_lo, rows_mid, rows_hi, work=None):
    """``work`` (from ``_work``, calls without autograd): the M and L rows are written into the shared
    matrix in place; otherwise the key and query matrices are concatenated around them."""
    d = q.shape[-1]
    # keys: [k, ‖k‖², ‖k‖², −1, 0…] against [ω·s; c_hi; c_lo; M; 0…] is ωᵀk·s − s²‖k‖²/2 − M_l
    sq = (k * k).sum(-1, keepdim=True)  # (B, H, N, 1), accumulated in fp32 by the reduction
    ka = torch.cat([k, sq, sq, k_tail], dim=-1)  # (B, H, N, Kk)
    # M_l, the column maxima, as row maxima of the transposed product: a reduction along rows runs
    # one output per warp, where the same reduction down columns leaves most of the GPU idle
    scores_t = proj_kt @ ka.detach().transpose(-1, -2)  # (B, H, m, N), M row still 0
    if work is None:
        top = scores_t.amax(dim=-1)[..., None, :]  # (B, H, 1, m)
        proj_k = torch.cat([rows_lo, top, rows_mid], dim=-2)  # (B, H, Kk, m)
    else:
        proj_q, proj_k, m_row, l_row = work
        torch.amax(scores_t, dim=-1, out=m_row)
    kf = torch.matmul(ka, proj_k).exp_()  # (B, H, N, m): ≤ 1, a 1 in every column
    vv = torch.cat([v, v_tail], dim=-1)  # (B, H, N, D'): [v, 1, 0…]
    if torch.is_grad_enabled() and (kf.requires_grad or vv.requires_grad):
        kvn, log_sum = _KeyState.apply(kf, vv, alpha, d)
    else:
        kvn, log_sum, _ = _key_state(kf, vv, alpha, d, None if work is None else l_row)
    # queries: [q, 0, 0, 1, 0…, 1, 0…] against [ω·s; c_hi; c_lo; M; 0…; L; 0…]; −‖q‖²/2 and the row
    # maxima are constants per query, which cancel: the row softmax removes both in one pass
    qa = torch.cat([q, q_tail], dim=-1)  # (B, H, N, Kq)
    if work is None:
        proj_q = torch.cat([rows_lo, top, rows_mid, log_sum.transpose(-1, -2), rows_hi], dim=-2)
    qf = torch.softmax(torch.matmul(qa, proj_q), dim=-1)  # (B, H, N, m): ≤ 1, rows sum to 1
    return qf @ kvn  # (B, H, N, D'): numerators, then the denominator column
