"""Feature maps of kernel attention, and attention through them: FAVOR+ (Choromanski et al., 2020,
https://arxiv.org/abs/2009.14794) and elu+1 (Katharopoulos et al., 2020, https://arxiv.org/abs/2006.16236).

:func:`draw_omega` draws the (m, d) projection rows of FAVOR+ (orthogonal blocks with chi lengths, or
iid Gaussian), :func:`favor_features` gives the unstabilised features φ(x) (B, H, N, m) or (.., 2m) for
tests and reading, :func:`kernel_attention` normalised attention from any (B, H, N, F) features and
:func:`favor_positive_attention` the same from FAVOR+ exponents, with shifts that keep fp16/bf16 in
range (the causal sums in :mod:`attnbench.methods.performer.causal_linear`).
"""
from __future__ import annotations

import math

import torch

from attnbench.methods.performer.causal_linear import causal_chunked, lse, positive_causal


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
