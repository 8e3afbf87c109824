"""The decode state of kernel attention ("Transformers are RNNs", Katharopoulos et al., 2020,
https://arxiv.org/abs/2006.16236): S = Σ_j φ(k_j)[v_j, 1] of shape (B, H, F, D+1), kept in fp32 (or
float64) whatever n is, with the frame that keeps FAVOR+'s exponentials in range; shared by the
``performer`` and ``linear`` modules' ``init_state``/``step``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
