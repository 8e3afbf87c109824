"""Reference forms of the linear-recurrent attentions that fla's kernels compute, in plain torch.

Each function is the operator's own definition, written chunk by chunk so that float64 runs at the
sequence lengths the harness measures error at, and differentiable (autograd) so that its gradients
are the float64 reference gradients. They are what ``ref_rel_err`` and ``grad_rel_err`` of the
``recurrent`` family are measured against: these operators are not approximations of softmax
attention, so the only meaningful reference is the same operator in higher precision.

Layout is ours, (B, H, N, D); per-position gates are (B, H, N) (scalar per head) or (B, H, N, Dk)
(per key channel), always log-decays (<= 0). The state S is (B, H, Dk, Dv); "scale" multiplies q.

- :func:`gated_linear` — GLA (Yang et al., 2023, https://arxiv.org/abs/2312.06635):
  S_t = diag(exp gk_t) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t. A scalar gate broadcast over Dk is
  simple GLA, and a constant one per head is RetNet's retention (https://arxiv.org/abs/2307.08621);
  zero gates are causal linear attention.
- :func:`delta_rule` — DeltaNet (Schlag et al., 2021; Yang et al., 2024,
  https://arxiv.org/abs/2406.06484) and Gated DeltaNet (Yang et al., 2024,
  https://arxiv.org/abs/2412.06464): S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ.
- :func:`normalized_linear` — Σ_{j<=i} (q_i·k_j) v_j / Σ_{j<=i} q_i·k_j (Katharopoulos et al., 2020).
- :func:`based` — Based (Arora et al., 2024, https://arxiv.org/abs/2402.18668): the 2nd-order Taylor
  kernel 1 + s + s²/2 of s = scale·q·k, causal and normalised.
- :func:`nsa` — Native Sparse Attention (Yuan et al., 2025, https://arxiv.org/abs/2502.11089), its
  compressed and selected branches as fla computes them (mean-pooled key blocks; top-k blocks by the
  group's mean compressed attention, the first, current and previous block always kept).

Within a chunk of c positions the decays enter as exp(G_i − G_j) with G the cumulative log-decay, so
no factor exceeds 1 except exp(−G_j) in :func:`gated_linear`, at most exp(Σ|g|) over one chunk: far
inside float64's range for the gate laws the harness draws (results/README.md, "Notes from the method
modules").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK = 64
L2_EPS = 1e-6  # fla's l2norm: x / sqrt(Σx² + eps)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(Σ x² + 1e-6) over the last axis, as fla's in-kernel q/k normalisation does."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2_EPS)


def gated_linear(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor | None,
                 scale: float, chunk: int = CHUNK) -> torch.Tensor:
    """GLA: o_t = scale · qᵀ S_t with S_t = diag(exp gk_t) S_{t-1} + k_t v_tᵀ. ``gk``: (B, H, N, Dk),
    (B, H, N) (one decay per head and position: simple GLA, RetNet) or None (no decay)."""
    b, h, n, dk = q.shape
    if gk is None:
        gk = q.new_zeros(b, h, n, 1)
    elif gk.dim() == 3:
        gk = gk[..., None]
    state = q.new_zeros(b, h, dk, v.shape[-1])  # (B, H, Dk, Dv)
    outs = []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        qc, kc, vc = q[..., s:e, :] * scale, k[..., s:e, :], v[..., s:e, :]
        cum = gk[..., s:e, :].cumsum(-2).expand(b, h, e - s, dk)  # (B, H, c, Dk): G_i
        qg, kg = qc * cum.exp(), kc * (-cum).exp()
        scores = (qg @ kg.transpose(-1, -2)).tril()  # (B, H, c, c): Σ_d q_id k_jd exp(G_id − G_jd)
        outs.append(qg @ state + scores @ vc)
        last = cum[..., -1:, :]  # (B, H, 1, Dk)
        state = state * last.transpose(-1, -2).exp() + (kc * (last - cum).exp()).transpose(-1, -2) @ vc
    return torch.cat(outs, dim=-2)


def normalized_linear(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor,
                      eps: float = 0.0) -> torch.Tensor:
    """Causal linear attention with its normaliser:
    Σ_{j<=i}(qf_i·kf_j) v_j / (Σ_{j<=i} qf_i·kf_j + eps)."""
    vv = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, H, N, Dv+1): last column = normaliser
    out = gated_linear(qf, kf, vv, None, 1.0)
    return out[..., :-1] / (out[..., -1:] + eps)


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: torch.Tensor | None, scale: float, chunk: int = CHUNK) -> torch.Tensor:
    """(Gated) delta rule: S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,
    o_t = scale · S_tᵀ q_t.
    ``beta``, ``g``: (B, H, N); g None is DeltaNet (no decay).

    Within a chunk the new values u_j = β_j (v_j − k_jᵀ Ŝ_j), Ŝ_j the decayed state before step j,
    solve the unit lower-triangular system (I + L) u = β ⊙ (v − e^{G} K S_0), L_ij = β_i e^{G_i − G_j}
    k_i·k_j for j < i; then S_i = e^{G_i} S_0 + Σ_{j<=i} e^{G_i − G_j} k_j u_jᵀ."""
    b, h, n, dk = q.shape
    g = q.new_zeros(b, h, n) if g is None else g
    state = q.new_zeros(b, h, dk, v.shape[-1])  # (B, H, Dk, Dv)
    outs = []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        c = e - s
        qc, kc, vc, bc = q[..., s:e, :] * scale, k[..., s:e, :], v[..., s:e, :], beta[..., s:e]
        cum = g[..., s:e].cumsum(-1)  # (B, H, c): G_i
        incl = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        strict = incl.tril(-1)
        decay = torch.where(incl, cum[..., :, None] - cum[..., None, :], float("-inf")).exp()  # (B, H, c, c)
        lower = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * decay).masked_fill(~strict, 0.0)
        system = lower + torch.eye(c, dtype=q.dtype, device=q.device)
        rhs = bc[..., None] * (vc - cum.exp()[..., None] * (kc @ state))  # (B, H, c, Dv)
        u = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        outs.append(cum.exp()[..., None] * (qc @ state) + ((qc @ kc.transpose(-1, -2)) * decay) @ u)
        last = cum[..., -1]  # (B, H)
        state = last.exp()[..., None, None] * state + \
            (kc * (last[..., None] - cum).exp()[..., None]).transpose(-1, -2) @ u
    return torch.cat(outs, dim=-2)


def _by_query_chunks(fn, q: torch.Tensor, chunk: int, *rest) -> torch.Tensor:
    """``fn(start, q_chunk, *rest)`` over query chunks, concatenated; under autograd each chunk is
    recomputed in the backward (checkpoint), so the (chunk, N) score blocks are never all kept."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, *rest)
                                           if isinstance(t, torch.Tensor))
    outs = []
    for s in range(0, q.shape[-2], chunk):
        qc = q[..., s:s + chunk, :]
        outs.append(checkpoint(fn, s, qc, *rest, use_reentrant=False) if grad else fn(s, qc, *rest))
    return torch.cat(outs, dim=-2)


def based(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, eps: float = 1e-6,
          chunk: int = 256) -> torch.Tensor:
    """Based: φ(s) = 1 + s + s²/2 of s = scale·q_i·k_j, o_i = Σ_{j<=i} φ v_j / (Σ_{j<=i} φ + eps)."""
    n = k.shape[-2]

    def rows(start, qc, k, v):
        s = (qc @ k.transpose(-1, -2)) * scale  # (B, H, c, N)
        pos = torch.arange(start, start + qc.shape[-2], device=q.device)
        phi = (1 + s + 0.5 * s * s).masked_fill(torch.arange(n, device=q.device) > pos[:, None], 0.0)
        return (phi @ v) / (phi.sum(-1, keepdim=True) + eps)

    return _by_query_chunks(rows, q, chunk, k, v)


def mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, N, D) -> (B, H, ceil(N/block), D): the mean of each block (the last one may be short)."""
    n = x.shape[-2]
    blocks = -(-n // block)
    padded = F.pad(x, (0, 0, 0, blocks * block - n)).unflatten(-2, (blocks, block)).sum(-2)
    counts = torch.full((blocks,), float(block), dtype=x.dtype, device=x.device)
    counts[-1] = n - (blocks - 1) * block
    return padded / counts[:, None]


def nsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g_cmp: torch.Tensor, g_slc: torch.Tensor,
        block_size: int, block_counts: int, scale: float, chunk: int = 256) -> torch.Tensor:
    """NSA's compressed + selected branches. q (B, HQ, N, D); k, v (B, H, N, D), HQ = H·G (a group of
    G query heads shares one key/value head); g_cmp, g_slc (B, HQ, N). A query at t sees compressed
    block c once it is complete ((c+1)·bs − 1 <= t); it attends, token by token and causally, to the
    ``block_counts`` blocks of highest group-mean compressed probability, blocks 0, t//bs and t//bs − 1
    always among them."""
    b, hq, n, _ = q.shape
    hk = k.shape[1]
    group, bs = hq // hk, block_size
    k_cmp = mean_pool(k, bs).repeat_interleave(group, dim=1)  # (B, HQ, TC, D)
    v_cmp = mean_pool(v, bs).repeat_interleave(group, dim=1)
    tc = k_cmp.shape[-2]
    k_all, v_all = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    cols = torch.arange(tc, device=q.device)

    def rows(start, qc, k_cmp, v_cmp, k_all, v_all, g_cmp, g_slc):
        c = qc.shape[-2]
        pos = torch.arange(start, start + c, device=q.device)  # (c,)
        seen = (cols + 1) * bs - 1 <= pos[:, None]  # (c, TC): complete compressed blocks
        p = torch.softmax(((qc @ k_cmp.transpose(-1, -2)) * scale).masked_fill(~seen, float("-inf")),
                          dim=-1).nan_to_num(0.0)  # (B, HQ, c, TC); no block complete yet: zeros
        o_cmp = p @ v_cmp
        own = pos[:, None] // bs
        forced = (cols == own) | (cols == 0) | (cols == own - 1)  # (c, TC)
        score = torch.where(forced, 1.0, p.detach().unflatten(1, (hk, group)).mean(2))  # (B, H, c, TC)
        top = score.topk(min(block_counts, tc), dim=-1).indices
        keep = (seen | forced).expand(b, hk, c, tc).gather(-1, top)
        chosen = torch.zeros(b, hk, c, tc, dtype=torch.bool, device=q.device).scatter(-1, top, keep)
        keys = chosen.repeat_interleave(bs, dim=-1)[..., :n] & \
            (torch.arange(n, device=q.device) <= pos[:, None])  # (B, H, c, N)
        keys = keys.repeat_interleave(group, dim=1)  # (B, HQ, c, N)
        s = ((qc @ k_all.transpose(-1, -2)) * scale).masked_fill(~keys, float("-inf"))
        o_slc = torch.softmax(s, dim=-1) @ v_all
        rng = slice(start, start + c)
        return g_slc[..., rng, None] * o_slc + g_cmp[..., rng, None] * o_cmp

    return _by_query_chunks(rows, q, chunk, k_cmp, v_cmp, k_all, v_all, g_cmp, g_slc)


def retnet_log_decay(heads: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """RetNet's fixed per-head decays, log(1 − 2^(−5 − h)) for h = 0..H−1 (fla's chunk_retention)."""
    return torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(heads, dtype=torch.float64))).to(device, dtype)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
