"""Causal linear attention by chunks (Katharopoulos et al., 2020, https://arxiv.org/abs/2006.16236),
for ``performer`` and ``linear`` with ``causal=True``.

Σ_{j≤i} φ(q_i)ᵀφ(k_j)[v_j, 1] is taken chunk by chunk: a masked c×c product inside each chunk plus a
prefix state of the earlier chunks' sums, so only (n/chunk, m, d) chunk sums exist, never an
(n, m, d) tensor; features (B, H, N, F), values with their ones column (B, H, N, D+1). The frames
that keep fp16/bf16 in range: results/README.md, "Notes from the method modules" (Performer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_chunked(qf, kf, vv, logscale, chunk_size):
    """Causal Σ_{j≤i} by chunks: a masked c×c product inside each chunk plus the prefix state before it."""
    b, h, n, f = qf.shape
    c = max(1, min(chunk_size, n))
    t = -(-n // c)
    pad = t * c - n
    if pad:
        qf, kf, vv = (F.pad(x, (0, 0, 0, pad)) for x in (qf, kf, vv))
        if logscale is not None:
            logscale = F.pad(logscale, (0, pad))  # padded keys have zero features; value is moot
    e = vv.shape[-1]
    qc = qf.reshape(b, h, t, c, f)
    kc = kf.reshape(b, h, t, c, f)
    vc = vv.reshape(b, h, t, c, e)
    tril = torch.ones(c, c, dtype=torch.bool, device=qf.device).tril()
    scores = qc @ kc.transpose(-1, -2)  # (B, H, T, c, c)
    if logscale is None:
        intra = scores.masked_fill(~tril, 0.0) @ vc  # (B, H, T, c, D+1)
        sums = kc.transpose(-1, -2) @ vc  # (B, H, T, F, D+1): each chunk's Σ φ(k) [v, 1]ᵀ
        state = torch.cumsum(sums, dim=2) - sums  # exclusive prefix: keys of earlier chunks
        return (intra + qc @ state).reshape(b, h, t * c, e)[:, :, :n]
    ls = logscale.reshape(b, h, t, c)
    run_max = torch.cummax(logscale.detach(), dim=-1).values.reshape(b, h, t, c)  # P_i, causal
    pair = ls[..., None, :] - run_max[..., :, None]  # (B, H, T, c, c): r_j − P_i ≤ 0 for j ≤ i
    intra = (scores * torch.exp(pair.masked_fill(~tril, float("-inf")))) @ vc
    end = run_max[..., -1]  # (B, H, T): P at each chunk's last position
    weighted = kc * torch.exp(ls - end[..., None])[..., None]  # (B, H, T, c, F), all ≤ its feature
    sums = weighted.transpose(-1, -2) @ vc  # (B, H, T, F, D+1), relative to exp(end_t)
    states = [torch.zeros_like(sums[:, :, 0])]
    for i in range(1, t):  # state before chunk i, relative to exp(end_{i-1})
        decay = torch.exp(end[..., i - 2] - end[..., i - 1]) if i > 1 else None
        prev = states[-1] * decay[..., None, None] if decay is not None else states[-1]
        states.append(prev + sums[:, :, i - 1])
    state = torch.stack(states, dim=2)  # (B, H, T, F, D+1)
    prev_end = torch.cat([end[..., :1], end[..., :-1]], dim=-1)  # chunk 0's state is zero anyway
    inter = (qc @ state) * torch.exp(prev_end[..., None] - run_max)[..., None]  # (B, H, T, c, D+1)
    return (intra + inter).reshape(b, h, t * c, e)[:, :, :n]


def lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp in the input dtype, keepdim; only its range matters (it is a cancelling shift)."""
    top = x.amax(dim=dim, keepdim=True)
    return top + torch.log(torch.exp(x - top).sum(dim=dim, keepdim=True))


def positive_causal(q_exp, k_exp, vv, chunk_size):
    b, h, n, m = q_exp.shape
    c = max(1, min(chunk_size, n))
    t = -(-n // c)
    pad = t * c - n
    if pad:  # padded keys come after every real query and carry zero values
        q_exp, k_exp, vv = (F.pad(x, (0, 0, 0, pad)) for x in (q_exp, k_exp, vv))
    e = vv.shape[-1]
    aq = q_exp.reshape(b, h, t, c, m)
    ak = k_exp.reshape(b, h, t, c, m)
    vc = vv.reshape(b, h, t, c, e)
    tril = torch.ones(c, c, dtype=torch.bool, device=vv.device).tril()

    # inside a chunk: scalar frames, exactly causal. The pair weights exp(r_j − P_i) span more range
    # than fp16 has, so they and the c×c reduction are taken in (at least) fp32
    acc = torch.promote_types(vv.dtype, torch.float32)
    rho = aq.detach().amax(-1).to(acc)  # (B, H, T, c): query row maxima
    r = ak.detach().amax(-1)  # (B, H, T, c): key row maxima
    scores = torch.exp(aq - rho[..., None].to(aq.dtype)) @ torch.exp(ak - r[..., None]).transpose(-1, -2)
    r = r.to(acc)
    run_max = torch.cummax(r.reshape(b, h, t * c), dim=-1).values.reshape(b, h, t, c)  # P_i
    pair = (r[..., None, :] - run_max[..., :, None]).masked_fill(~tril, float("-inf"))  # (B, H, T, c, c)
    intra = (scores.to(acc) * torch.exp(pair)) @ vc.to(acc)  # (B, H, T, c, D+1), times exp(−rho − P)

    # earlier chunks: per-feature frames E_t = logsumexp of the keys up to chunk t's end
    chunk_lse = lse(ak.detach(), dim=-2).squeeze(-2)  # (B, H, T, m)
    frame = torch.logcumsumexp(chunk_lse.float(), dim=2).to(ak.dtype)  # (B, H, T, m)
    sums = torch.exp(ak - frame[..., None, :]).transpose(-1, -2) @ vc  # (B, H, T, m, D+1)
    states = [torch.zeros_like(sums[:, :, 0])]
    for i in range(1, t):  # state before chunk i, in frame i−1
        prev = states[-1] * torch.exp(frame[:, :, i - 2] - frame[:, :, i - 1])[..., None] if i > 1 \
            else states[-1]
        states.append(prev + sums[:, :, i - 1])
    state = torch.stack(states, dim=2)  # (B, H, T, m, D+1)
    prev_frame = torch.cat([torch.zeros_like(frame[:, :, :1]), frame[:, :, :-1]], dim=2)
    q_shifted = aq + prev_frame[..., None, :]  # (B, H, T, c, m)
    beta = q_shifted.detach().amax(-1)  # (B, H, T, c)
    inter = torch.exp(q_shifted - beta[..., None]) @ state  # (B, H, T, c, D+1), times exp(−beta)
    beta = beta.to(acc)
    beta = torch.cat([torch.full_like(beta[:, :, :1], float("-inf")), beta[:, :, 1:]], dim=2)

    alpha = rho + run_max
    top = torch.maximum(alpha, beta)  # per query: the larger of the two parts' scales
    out = intra * torch.exp(alpha - top)[..., None] + inter.to(acc) * torch.exp(beta - top)[..., None]
    return out.reshape(b, h, t * c, e)[:, :, :n]  # in acc; the caller divides and casts back
