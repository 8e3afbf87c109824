"""Input regimes: how a cell's q, k, v (core level) or x (layer and model levels) are drawn.

Inputs depend only on the seed, the shape and the regime, never on the method, so every method of a
sweep sees the same tensors. They are drawn on the CPU in float32 from a seeded generator and then moved
to the cell's device and dtype, so a CPU run and a GPU run of one suite see the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class GaussianInput:
    qk_scale: float = 1.0  # q and k are N(0, qk_scale²): larger = sharper attention


@dataclass(frozen=True)
class Regime:
    name: str
    params: type
    make: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    description: str = ""


def _gaussian(shape: tuple[int, int, int, int], p: GaussianInput, g: torch.Generator):
    q = torch.randn(shape, generator=g) * p.qk_scale  # (B, H, N, D)
    k = torch.randn(shape, generator=g) * p.qk_scale
    v = torch.randn(shape, generator=g)
    return q, k, v


REGIMES: dict[str, Regime] = {
    "gaussian": Regime("gaussian", GaussianInput, _gaussian, "q, k, v i.i.d. normal; q, k scaled"),
}


def register_regime(regime: Regime) -> None:
    if regime.name in REGIMES:
        raise ValueError(f"duplicate input regime {regime.name!r}")
    REGIMES[regime.name] = regime


def _generator(seed: int, *salt: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(hash((seed, *salt)) % (2**63))
    return g


def make_qkv(input_spec: dict[str, Any], *, batch: int, heads: int, n: int, head_dim: int,
             dtype: torch.dtype, device: torch.device, seed: int):
    """q, k, v of shape (B, H, N, D) for a core-level cell."""
    spec = dict(input_spec)
    regime = REGIMES[spec.pop("regime", "gaussian")]
    g = _generator(seed, batch, heads, n, head_dim)
    q, k, v = regime.make((batch, heads, n, head_dim), regime.params(**spec), g)
    return tuple(t.to(device=device, dtype=dtype).contiguous() for t in (q, k, v))


def make_hidden(*, batch: int, n: int, d_model: int, dtype: torch.dtype, device: torch.device,
                seed: int) -> torch.Tensor:
    """x of shape (B, N, d_model) for layer- and model-level cells (unit-variance, like embeddings
    after layer norm)."""
    g = _generator(seed, batch, n, d_model, 17)
    return torch.randn(batch, n, d_model, generator=g).to(device=device, dtype=dtype)
