"""Kernel feature-map attention: Performer's FAVOR+ and elu+1 linear attention.

``performer``: Rethinking Attention with Performers (Choromanski et al., 2020),
https://arxiv.org/abs/2009.14794. The softmax kernel exp(qᵀk/√d) is written as the expectation of a
product of random features, φ(x) = exp(ωᵀx − ‖x‖²/2)/√m with ω ~ N(0, I_d) and x scaled by d^(-1/4), so
attention becomes φ(Q)(φ(K)ᵀV) and costs O(n·m·d) instead of O(n²·d).

``linear``: Transformers are RNNs (Katharopoulos et al., 2020), https://arxiv.org/abs/2006.16236. The
same factorisation with the deterministic feature map elu(x)+1; it is its own attention rather than an
estimate of softmax, so its error column measures how far it lands from softmax attention.

Numerics. A positive constant common to the keys a query sees, and any positive constant per query row,
cancel between the numerator φ(q)ᵀΣφ(k)vᵀ and the denominator φ(q)ᵀΣφ(k); so does a per-feature factor
moved from the keys to the queries. FAVOR+ uses that freedom so fp16/bf16 neither overflow nor lose the
keys that matter to a query:

- bidirectional (``favor_bidirectional``): the exponents come out of matmuls with their shifts folded
  in, accumulated in fp32. ω carries the d^(-1/4) input scale; key rows are extended with
  [‖k‖², ‖k‖², −1] against [−d^(-1/2)/2 in two parts, M_l], M_l the column maximum of the key exponents,
  so key features exp(ωᵀk − ‖k‖²/2 − M_l) are ≤ 1 with a 1 in every column. The state Σ_j φ(k_j)[v_j, 1]
  is taken with values scaled by α (2^-14 in fp16, else 1): column sums S_l ∈ [1, n] become
  α·S_l ≥ 2^-14, a normal fp16 number, and nothing overflows while n·max|v| < 65504·2^14 ≈ 10^9.
  Each feature of the state is divided by exp(L_l), L_l = log(α·S_l) rounded to the dtype, and the
  query rows, extended with [1, 1] against [M_l, L_l], get exactly M_l + L_l added. A softmax over
  each query row then removes the row maximum and ‖q‖²/2 (constants per query, which cancel): query
  features are ≤ 1 and sum to 1, the state's denominator column is ≈ 1, so every denominator is ≈ 1
  and whatever underflows is negligible next to that query's own largest term. The state's backward
  divides the incoming gradient by S_l before its matmuls (through the separate steps autograd would
  multiply it by 1/α first and overflow fp16). ``compile=true`` runs the same function under
  torch.compile, compiled and warmed in the factory;
- causal, earlier chunks: the running state keeps a per-feature frame, the logsumexp over the keys
  of all earlier chunks only (M_l + L_l above is that over all keys, up to log α), rescaled as later
  chunks extend it (as online softmax does);
- causal, inside a chunk: a masked c×c product in which key j weighs exp(r_j − P_i) ≤ 1, r_j its row
  maximum and P_i the running maximum of r over positions ≤ i; these weights and the c×c reduction are
  taken in fp32, whose range they need. Nothing from the future enters any output; only
  (n/chunk, m, d) chunk sums exist, never an (n, m, d) tensor.

Trigonometric features and elu+1 are handled by the same chunked sums with one log-scale per key
(exp(‖k‖²/2) for the former) and both feature maps multiplied by n^(-1/2), so sums over n keys stay
O(features). The stabilising shifts are detached: the output does not depend on them.

Decoding (causal, the contract in :mod:`attnbench.registry`): both keep the recurrent state of
"Transformers are RNNs", S = Σ_j φ(k_j)[v_j, 1] of shape (B, H, F, D+1), in fp32 (or float64), whatever
n is; a step adds the new key's term and reads φ(q_t)·S. FAVOR+ positive features keep a per-feature
frame beside it, the running maximum M_l of the key exponents, and S relative to exp(M_l), rescaled
when M_l grows (as online softmax does); trigonometric features one scalar frame of the key
log-scales. The prefix is folded in by the same update, a chunk of keys at a time. Fixed shapes and no
host syncs: a step replays in a CUDA graph.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.compiling import allow_recompiles, compile_failure
from attnbench.methods.performer.causal_linear import causal_chunked, lse, positive_causal
from attnbench.params import NonNegative, Positive
from attnbench.registry import BuildContext, Limit, Unsupported, register_method


def resolve_nb_features(nb_features: int, head_dim: int) -> int:
    """``nb_features`` = 0 means the paper's suggested m = round(d·ln d) (at least 1)."""
    return nb_features if nb_features > 0 else max(1, round(head_dim * math.log(head_dim)))


def draw_omega(m: int, d: int, orthogonal: bool, generator: torch.Generator) -> torch.Tensor:
    """(m, d) projection rows, each marginally N(0, I_d), drawn on the CPU in float64.

    Orthogonal: rows come in blocks of d mutually orthogonal directions (the Q of a Gaussian block's QR,
    signs fixed so Q is Haar-distributed) and each row gets an independent chi_d length, the norm a
    Gaussian row would have; the last block is truncated when d does not divide m.
    """
    if not orthogonal:
        return torch.randn(m, d, generator=generator, dtype=torch.float64)
    blocks = []
    for _ in range(-(-m // d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        blocks.append(q * torch.sign(torch.diagonal(r)))  # Haar: columns times sign(diag R)
    directions = torch.cat(blocks, dim=0)[:m]  # (m, d), unit rows, orthogonal within a block
    lengths = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1)  # chi_d
    return directions * lengths[:, None]


def favor_features(x: torch.Tensor, omega: torch.Tensor, positive: bool = True) -> torch.Tensor:
    """Unstabilised random features with E[φ(x)ᵀφ(y)] = exp(xᵀy); ``x`` is already scaled by d^(-1/4).

    ``omega`` is (m, d) or a batch (S, m, d). Positive: exp(ωᵀx − ‖x‖²/2)/√m, shape (..., m).
    Trigonometric: exp(‖x‖²/2)/√m·[sin ωᵀx, cos ωᵀx], shape (..., 2m). For tests and for reading; attention uses the stabilised form in the module.
    """
    m = omega.shape[-2]
    proj = x @ omega.transpose(-1, -2)  # (..., m); a batch of draws (S, m, d) broadcasts
    sq = (x * x).sum(-1, keepdim=True) / 2
    if positive:
        return torch.exp(proj - sq) / math.sqrt(m)
    return torch.exp(sq) / math.sqrt(m) * torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def kernel_attention(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor,
                     key_logscale: torch.Tensor | None = None, *, causal: bool = False,
                     chunk_size: int = 128) -> torch.Tensor:
    """Normalised linear attention Σ_j (qf_i·kf_j)·s_j·v_j / Σ_j (qf_i·kf_j)·s_j with s_j = exp(logscale_j).

    ``qf``, ``kf``: (B, H, N, F) features; ``key_logscale``: (B, H, N) or None (s = 1); ``v``: (B, H, N, D).
    A query whose weights all vanish (underflow) returns zeros instead of 0/0.
    """
    ones = torch.ones_like(v[..., :1])
    vv = torch.cat([v, ones], dim=-1)  # (B, H, N, D+1): the last column accumulates the denominator
    if not causal:
        if key_logscale is not None:
            shift = key_logscale.detach().amax(dim=-1, keepdim=True)  # (B, H, 1), cancels exactly
            kf = kf * torch.exp(key_logscale - shift)[..., None]
        kv = kf.transpose(-1, -2) @ vv  # (B, H, F, D+1)
        out = qf @ kv  # (B, H, N, D+1)
    else:
        out = causal_chunked(qf, kf, vv, key_logscale, chunk_size)
    num, den = out[..., :-1], out[..., -1:]
    return num / den.masked_fill(den == 0, 1.0)


def favor_positive_attention(q_exp: torch.Tensor, k_exp: torch.Tensor, v: torch.Tensor, *,
                             causal: bool = False, chunk_size: int = 128) -> torch.Tensor:
    """Σ_j φ(q_i)ᵀφ(k_j) v_j / Σ_j φ(q_i)ᵀφ(k_j) with φ = exp(exponent), from (B, H, N, m) exponents
    ωᵀx − ‖x‖²/2. The causal path of the module; bidirectional, this is the earlier form (a logsumexp
    per key feature, shifted exponent tensors), kept as the reference that ``favor_bidirectional`` is
    tested and benchmarked against."""
    vv = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, H, N, D+1): last column = denominator
    if not causal:
        shift = lse(k_exp.detach(), dim=-2)  # (B, H, 1, m): per-feature log column sum
        kf = torch.exp(k_exp - shift)  # (B, H, N, m), columns sum to 1
        q_shifted = q_exp + shift
        qf = torch.exp(q_shifted - q_shifted.detach().amax(-1, keepdim=True))  # (B, H, N, m)
        out = qf @ (kf.transpose(-1, -2) @ vv)  # (B, H, N, D+1)
    else:
        out = positive_causal(q_exp, k_exp, vv, chunk_size)
    num, den = out[..., :-1], out[..., -1:]
    return (num / den.masked_fill(den == 0, 1.0)).to(v.dtype)


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
    in the module docstring) divided by exp(L_l), L_l its log denominator rounded to the dtype, so that
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
        g = (grad.to(acc) * (ctx.alpha / scale.to(acc))).to(grad.dtype)  # (B, H, m, D'): grad/S_l
        grad_kf = vv @ g.transpose(-1, -2) if ctx.needs_input_grad[0] else None  # (B, H, N, m)
        grad_vv = kf @ g if ctx.needs_input_grad[1] else None  # (B, H, N, D')
        return grad_kf, grad_vv, None, None


def favor_bidirectional(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        consts: FavorConstants) -> torch.Tensor:
    """Bidirectional FAVOR+ from q, k, v (B, H, N, D) and ``favor_constants``, in the form the module
    docstring describes: each exponent comes out of one matmul with its shifts folded in, so the
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


@dataclass(frozen=True)
class PerformerParams:
    nb_features: NonNegative = 0  # m, random features; 0 = auto = round(d·ln d) (266 at d=64, 111 at d=32)
    orthogonal: bool = True  # ω in orthogonal blocks with chi lengths (ORF); False = iid Gaussian rows
    positive: bool = True  # FAVOR+ positive features; False = trigonometric sin/cos (2m features)
    redraw_interval: NonNegative = 0  # training mode: redraw ω every this many forward calls; 0 = fixed by seed
    chunk_size: Positive = 128  # causal: prefix sums are taken over chunks of this many positions
    compile: bool = False  # bidirectional positive: torch.compile the whole feature pipeline (fuses the
    #                        small elementwise steps), compiled and warmed in the factory


@dataclass(frozen=True)
class LinearParams:
    chunk_size: Positive = 128  # causal: prefix sums are taken over chunks of this many positions


class PerformerAttention(nn.Module):
    """FAVOR+ attention; ω is a buffer drawn at build time from the cell's generator."""

    def __init__(self, p: PerformerParams, ctx: BuildContext):
        super().__init__()
        self.p = p
        self.causal = ctx.causal
        self.m = resolve_nb_features(p.nb_features, ctx.head_dim)
        self._redraw_gen = ctx.generator(salt=1)  # a separate stream, so redraws never repeat ω₀
        self._calls = 0
        omega = draw_omega(self.m, ctx.head_dim, p.orthogonal, ctx.generator(salt=0))
        self.register_buffer("omega", omega.to(ctx.device, ctx.dtype))
        self._consts: tuple | None = None  # (key, FavorConstants) for the last ω, dtype and device
        self._stats = {"nb_features_used": self.m}
        self._compiled = None
        if p.compile:
            reason = _compile_knob(p, ctx)
            if reason:
                raise Unsupported(reason)
            self._compiled = self._compile(ctx)

    def _compile(self, ctx: BuildContext):
        """``favor_compilable`` under torch.compile, warmed at the cell's shape (forward, and backward
        on CUDA) so that compilation is not timed; as FlexAttention in ``sparse``."""
        def sync():
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)

        try:
            allow_recompiles()
            fn = torch.compile(favor_compilable, dynamic=False)
            consts = self.constants(ctx.dtype)[:5]
            shape = (ctx.batch, ctx.heads, ctx.n, ctx.head_dim)
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(shape, generator=g).to(ctx.device, ctx.dtype) for _ in range(3))
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(q, k, v, *consts)
            sync()
            t1 = time.perf_counter()
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            fn(q, k, v, *consts).sum().backward()
            sync()
        except Exception as exc:  # noqa: BLE001 - inductor/triton fail in many ways
            raise compile_failure("torch.compile", exc) from exc
        self._stats.update(compiled=True, compile_s=t1 - t0, compile_bwd_s=time.perf_counter() - t1)
        return fn

    @torch.no_grad()
    def redraw(self) -> None:
        omega = draw_omega(self.m, self.omega.shape[1], self.p.orthogonal, self._redraw_gen)
        self.omega.copy_(omega.to(self.omega))

    def constants(self, dtype: torch.dtype) -> FavorConstants:
        """``favor_constants`` of the current ω in ``dtype``, rebuilt after a redraw or a move."""
        om = self.omega
        key = (dtype, om.device, om.data_ptr(), om._version)
        if self._consts is None or self._consts[0] != key:
            self._consts = (key, favor_constants(om, dtype))
        return self._consts[1]

    def exponents(self, q, k):
        """FAVOR+ exponents ωᵀx − ‖x‖²/2 of the scaled queries and keys, each (B, H, N, m)."""
        scale = q.shape[-1] ** -0.25
        qs, ks = q * scale, k * scale
        omega = self.omega.to(q.dtype)
        q_exp = qs @ omega.t() - (qs * qs).sum(-1, keepdim=True) / 2  # (B, H, N, m)
        k_exp = ks @ omega.t() - (ks * ks).sum(-1, keepdim=True) / 2  # (B, H, N, m)
        return q_exp, k_exp

    def trig_features(self, q, k):
        """[sin, cos] features (B, H, N, 2m) and the key log-scales ‖k‖²/2 (B, H, N); the query factor
        exp(‖q‖²/2) is a per-row constant and cancels."""
        scale = q.shape[-1] ** -0.25
        qs, ks = q * scale, k * scale
        omega = self.omega.to(q.dtype)
        norm = q.shape[-2] ** -0.5  # keeps Σ over n keys O(m) in fp16
        q_proj, k_proj = qs @ omega.t(), ks @ omega.t()  # (B, H, N, m)
        qf = torch.cat([torch.sin(q_proj), torch.cos(q_proj)], dim=-1) * norm
        kf = torch.cat([torch.sin(k_proj), torch.cos(k_proj)], dim=-1) * norm
        return qf, kf, (ks * ks).sum(-1) / 2

    def forward(self, q, k, v):
        if self.training and self.p.redraw_interval > 0:
            if self._calls > 0 and self._calls % self.p.redraw_interval == 0:
                self.redraw()
            self._calls += 1
        if self._compiled is not None:
            return self._compiled(q, k, v, *self.constants(q.dtype)[:5])
        if self.p.positive and not self.causal:
            return favor_bidirectional(q, k, v, self.constants(q.dtype))
        if self.p.positive:
            q_exp, k_exp = self.exponents(q, k)
            return favor_positive_attention(q_exp, k_exp, v, causal=self.causal,
                                            chunk_size=self.p.chunk_size)
        qf, kf, logscale = self.trig_features(q, k)
        return kernel_attention(qf, kf, v, logscale, causal=self.causal, chunk_size=self.p.chunk_size)

    @torch.no_grad()
    def attention_matrix(self, q, k) -> torch.Tensor:
        """The implied (B, H, N, N) attention weights, materialised without the stabilised sums: for
        tests and plots at small n (use float64 inputs)."""
        if self.p.positive:
            q_exp, k_exp = self.exponents(q, k)
            log_scores = torch.logsumexp(q_exp[..., :, None, :] + k_exp[..., None, :, :], dim=-1)
            scores = torch.exp(log_scores - log_scores.amax(-1, keepdim=True))  # (B, H, N, N)
        else:
            qf, kf, logscale = self.trig_features(q, k)
            key_weight = torch.exp(logscale - logscale.amax(-1, keepdim=True))  # (B, H, N)
            scores = (qf @ kf.transpose(-1, -2)) * key_weight[..., None, :]  # (B, H, N, N)
        if self.causal:
            scores = scores.tril()
        return scores / scores.sum(-1, keepdim=True)

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        f = self.m * (1 if self.p.positive else 2)
        total = 2.0 * 2 * n * self.m * d + 2.0 * 2 * n * f * (d + 1)  # projections, state, readout
        if self.causal:
            total += 2.0 * n * min(self.p.chunk_size, n) * (f + d + 1)  # in-chunk masked products
        return b * h * total

    def stats(self):
        return dict(self._stats)

    # decode: the recurrent state (module docstring, "Decoding")

    decode_graphs = True

    def init_state(self, q, k, v, capacity=None):
        b, h, _, d = k.shape
        acc = _acc(k.dtype)
        width = self.m if self.p.positive else 2 * self.m
        state = FeatureState(k.new_zeros(b, h, width, d + 1, dtype=acc))
        state.frame = (torch.full((b, h, width), float("-inf"), dtype=acc, device=k.device)
                       if self.p.positive else torch.full((b, h), float("-inf"), dtype=acc,
                                                          device=k.device))
        return _fold_prefix(self._advance, state, k, v)

    def _features(self, x: torch.Tensor):
        """(projection ωᵀx·s, ‖x·s‖²/2) of x (B, H, c, D) in fp32 or better, s = d^(-1/4)."""
        acc = _acc(x.dtype)
        xs = x.to(acc) * x.shape[-1] ** -0.25
        return xs @ self.omega.to(acc).t(), (xs * xs).sum(-1) / 2  # (B, H, c, m), (B, H, c)

    def _advance(self, state: FeatureState, k, v) -> None:
        """Fold keys and values (B, H, c, D) into the state, in place."""
        proj, sq = self._features(k)
        vv = _with_ones(v, proj.dtype)
        if self.p.positive:
            k_exp = proj - sq[..., None]  # (B, H, c, m)
            top = torch.maximum(state.frame, k_exp.amax(dim=-2))  # (B, H, m)
            state.S.mul_(torch.exp(state.frame - top)[..., None])
            state.S.add_(torch.exp(k_exp - top[..., None, :]).transpose(-1, -2) @ vv)
        else:
            kf = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)  # (B, H, c, 2m)
            top = torch.maximum(state.frame, sq.amax(dim=-1))  # (B, H): key log-scales ‖k‖²/2
            state.S.mul_(torch.exp(state.frame - top)[..., None, None])
            state.S.add_((kf * torch.exp(sq - top[..., None])[..., None]).transpose(-1, -2) @ vv)
        state.frame.copy_(top)

    def step(self, q_t, k_t, v_t, state: FeatureState):
        self._advance(state, k_t, v_t)
        proj, sq = self._features(q_t)
        if self.p.positive:
            a = proj + state.frame[..., None, :]  # (B, H, 1, m); −‖q‖²/2 and the row max cancel
            qf = torch.exp(a - a.amax(dim=-1, keepdim=True))
        else:
            qf = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        return _readout(qf @ state.S, v_t.dtype), state


@dataclass
class FeatureState:
    """The recurrent state of kernel attention: ``S`` (B, H, F, D+1), Σ_j w_j φ(k_j)[v_j, 1] with key
    weights w_j relative to ``frame`` (per feature (B, H, F), per head (B, H), or None)."""

    S: torch.Tensor
    frame: torch.Tensor | None = None


PREFIX_CHUNK = 4096  # prefix tokens folded into a state per update (bounds the (B, H, c, F) features)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _with_ones(v: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    v = v.to(acc)
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, H, c, D+1)


def _readout(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    num, den = out[..., :-1], out[..., -1:]
    return (num / den.masked_fill(den == 0, 1.0)).to(dtype)


def _fold_prefix(advance, state: FeatureState, k, v) -> FeatureState:
    for start in range(0, k.shape[-2], PREFIX_CHUNK):
        advance(state, k[..., start:start + PREFIX_CHUNK, :], v[..., start:start + PREFIX_CHUNK, :])
    return state




# Issue 22 ("same math, best kernel"): from this n on, causal `linear` on CUDA runs fla's chunked
# kernel (fla-core installed) on its own elu+1 features; rows say which kernel ran (`kernel`).
FLA_LINEAR_MIN_N = 4096


def _fla_linear(ctx: BuildContext):
    """fla's chunk_linear_attn where it applies (causal, CUDA, n >= FLA_LINEAR_MIN_N, fla-core
    installed), else None."""
    import importlib.util

    if not (ctx.causal and ctx.device.type == "cuda" and ctx.n >= FLA_LINEAR_MIN_N
            and importlib.util.find_spec("fla") is not None):
        return None
    from attnbench import flaops

    flaops.enable_autotune_cache()
    try:
        return flaops.load("fla.ops.linear_attn:chunk_linear_attn")
    except ImportError:
        return None


class LinearAttention(nn.Module):
    """elu(x)+1 feature-map attention, bidirectional or causal."""

    def __init__(self, p: LinearParams, ctx: BuildContext):
        super().__init__()
        self.p = p
        self.causal = ctx.causal
        self.fla = _fla_linear(ctx)

    def forward(self, q, k, v):
        norm = q.shape[-2] ** -0.5  # keeps Σ over n keys O(d) in fp16
        qf = (F.elu(q) + 1) * norm  # (B, H, N, D)
        kf = (F.elu(k) + 1) * norm
        if self.fla is not None:  # fla's layout is (B, N, H, D)
            qf, kf, vt = (t.transpose(1, 2).contiguous() for t in (qf, kf, v))
            return self.fla(qf, kf, vt, normalize=True)[0].transpose(1, 2)
        return kernel_attention(qf, kf, v, None, causal=self.causal, chunk_size=self.p.chunk_size)

    def stats(self) -> dict:
        if self.fla is not None:
            return {"kernel": f"fla chunk_linear_attn (causal, n >= {FLA_LINEAR_MIN_N})"}
        return {"kernel": "torch chunked" if self.causal else "torch"}

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        total = 2.0 * 2 * n * d * (d + 1)
        if self.causal:
            total += 2.0 * n * min(self.p.chunk_size, n) * (2 * d + 1)
        return b * h * total

    # decode: S = Σ_j φ(k_j)[v_j, 1], φ = elu + 1 (the n^(-1/2) of the forward cancels in the ratio)

    decode_graphs = True

    def init_state(self, q, k, v, capacity=None):
        b, h, _, d = k.shape
        state = FeatureState(k.new_zeros(b, h, d, v.shape[-1] + 1, dtype=_acc(k.dtype)))
        return _fold_prefix(self._advance, state, k, v)

    def _advance(self, state: FeatureState, k, v) -> None:
        kf = F.elu(k.to(state.S.dtype)) + 1  # (B, H, c, D)
        state.S.add_(kf.transpose(-1, -2) @ _with_ones(v, state.S.dtype))

    def step(self, q_t, k_t, v_t, state: FeatureState):
        self._advance(state, k_t, v_t)
        qf = F.elu(q_t.to(state.S.dtype)) + 1  # (B, H, 1, D)
        return _readout(qf @ state.S, v_t.dtype), state


def _positive_knobs(p, ctx):
    bad = [f"{name}={getattr(p, name)}" for name, low in
           (("nb_features", 0), ("redraw_interval", 0), ("chunk_size", 1)) if getattr(p, name, low) < low]
    return f"invalid knobs: {', '.join(bad)}" if bad else None


def _compile_knob(p, ctx):
    if p.compile and (ctx.causal or not p.positive):
        return "compile=true applies to the bidirectional positive-feature path only"
    return None


def _implied_attention(module: PerformerAttention, q, k, v) -> torch.Tensor:
    """The attention weights that the module's fixed features imply, materialised, times v."""
    return module.attention_matrix(q, k) @ v  # (B, H, N, D)


def linear_reference(module: LinearAttention, q, k, v) -> torch.Tensor:
    """elu+1 kernel attention by its definition: the (n, n) weights materialised and normalised."""
    qf, kf = (F.elu(x) + 1 for x in (q, k))
    scores = qf @ kf.transpose(-1, -2)  # (B, H, N, N)
    if module.causal:
        scores = scores.tril()
    return (scores / scores.sum(-1, keepdim=True)) @ v


# Random features have no exact limit (m → ∞ only in expectation): the stabilised, chunked forward must
# equal the attention its own fixed ω implies, and the error against softmax attention must fall as m
# grows (Monte Carlo error ~ 1/√m, so each 4× more features roughly halves it).
PERFORMER_LIMIT = Limit(params={}, reference=_implied_attention, converges=(8, 32, 128, 512),
                        note="random features: no exact limit; equals the attention its ω implies, "
                             "and its error falls as m grows")
# elu(x)+1 is not a softmax kernel: linear attention is exact against its own definition.
LINEAR_LIMIT = Limit(params={}, reference=linear_reference,
                     note="its own attention: normalised elu(q)+1 · elu(k)+1 weights, not softmax")


def _performer_rank(p: PerformerParams, stats: dict, head_dim: int) -> int:
    """φ(Q)φ(K)ᵀ has m (positive) or 2m (sin, cos) features: rank at most that."""
    m = int(stats.get("nb_features_used", resolve_nb_features(p.nb_features, head_dim)))
    return m if p.positive else 2 * m


def _linear_rank(p: LinearParams, stats: dict, head_dim: int) -> int:
    """elu+1 features have head_dim columns."""
    return int(head_dim)


@register_method("performer", family="kernel", exact=False, params=PerformerParams, causal=True,
                 constraints=(_positive_knobs, _compile_knob), budget="nb_features",
                 limit=PERFORMER_LIMIT, rank=_performer_rank, decode=True)
def build_performer(p: PerformerParams, ctx: BuildContext) -> nn.Module:
    """Performer FAVOR+: positive orthogonal random features, O(n·m·d)."""
    return PerformerAttention(p, ctx)


@register_method("linear", family="kernel", exact=False, params=LinearParams, causal=True,
                 constraints=(_positive_knobs,), limit=LINEAR_LIMIT, rank=_linear_rank, decode=True)
def build_linear(p: LinearParams, ctx: BuildContext) -> nn.Module:
    """Linear attention with the elu(x)+1 feature map, O(n·d²)."""
    return LinearAttention(p, ctx)
