"""The CPU kernel of the fixed sparse patterns (Sparse Transformer, https://arxiv.org/abs/1904.10509;
BigBird, https://arxiv.org/abs/2007.14062): softmax attention over the pairs a pattern allows.

:func:`plan` turns a pattern's parts into gathered key lists and masks, once; :func:`blocked_attention`
scores each part's query groups densely against their gathered keys, (B, H, G, gs, m), and merges the
parts' softmaxes with their log-sum-exp weights into (B, H, N, D): nothing of size n × n is formed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.methods.sparse.patterns import Pattern


@dataclass
class _Part:
    rows: torch.Tensor  # (G, gs) query positions
    cols: torch.Tensor  # (G, m) key positions, padding clamped to 0
    mask: torch.Tensor  # (G, gs, m) which gathered pairs are scored
    whole: bool = False  # rows are all positions in order: the part alone is the answer


def plan(pattern: Pattern) -> list[_Part]:
    """The CPU kernel's schedule: gathered key lists deduplicated, masks evaluated once."""
    out = []
    for rows, cols, pred in pattern.parts():
        cols = cols.sort(dim=-1).values
        fresh = torch.ones_like(cols, dtype=torch.bool)
        fresh[:, 1:] = cols[:, 1:] != cols[:, :-1]
        valid = fresh & (cols >= 0)  # (G, m)
        cols = cols.clamp_min(0)
        mask = pred(rows[:, :, None], cols[:, None, :]) & valid[:, None, :]  # (G, gs, m)
        if mask.any():
            out.append(_Part(rows, cols, mask))
    if len(out) == 1:
        out[0].whole = bool(torch.equal(out[0].rows.flatten(), torch.arange(pattern.n)))
    return out


def blocked_attention(q, k, v, parts: list[_Part], scale: float) -> torch.Tensor:
    """Softmax attention restricted to the parts' pairs, merged across parts by log-sum-exp weights."""
    b, h, n, d = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax precision: fp32 or better
    maxes, sums, outs = [], [], []
    for p in parts:
        g, gs = p.rows.shape
        qg = q.index_select(2, p.rows.flatten()).view(b, h, g, gs, d)
        kg = k.index_select(2, p.cols.flatten()).view(b, h, g, -1, d)  # (B, H, G, m, D)
        vg = v.index_select(2, p.cols.flatten()).view(b, h, g, -1, d)
        # in place from here on: one score-sized buffer, none of these ops saves its input
        s = (qg @ kg.transpose(-1, -2)).to(acc).mul_(scale)  # (B, H, G, gs, m)
        s.masked_fill_(~p.mask, float("-inf"))
        mx = s.detach().amax(-1, keepdim=True)  # (B, H, G, gs, 1); -inf for rows with no pair here
        e = s.sub_(torch.where(mx.isinf(), 0.0, mx)).exp_()
        o = (e.to(v.dtype) @ vg).to(acc)  # (B, H, G, gs, D)
        if p.whole:
            return (o / e.sum(-1, keepdim=True)).view(b, h, n, d).to(q.dtype)
        idx = p.rows.flatten()
        maxes.append(torch.full((b, h, n), float("-inf"), device=q.device, dtype=acc).index_copy(
            2, idx, mx.view(b, h, -1)))
        sums.append(q.new_zeros((b, h, n), dtype=acc).index_copy(
            2, idx, e.sum(-1).view(b, h, -1)))
        outs.append(q.new_zeros((b, h, n, d), dtype=acc).index_copy(
            2, idx, o.view(b, h, -1, d)))
    top = torch.stack(maxes).amax(0)  # (B, H, N)
    num = torch.zeros_like(outs[0])
    den = torch.zeros_like(sums[0])
    for mx, l, o in zip(maxes, sums, outs):
        w = torch.exp(mx - top)  # (B, H, N): 0 where this part holds nothing for the query
        num = num + w[..., None] * o
        den = den + w * l
    return (num / den.clamp_min(torch.finfo(acc).tiny)[..., None]).to(q.dtype)
