"""Input regimes: how a cell's q, k, v (core level) or x (layer and model levels) are drawn.

Inputs depend only on the seed, the shape and the regime, never on the method, so every method of a
sweep sees the same tensors. They are drawn on the CPU in float32 from a seeded generator and then moved
to the cell's device and dtype, so a CPU run and a GPU run of one suite see the same numbers.

How sharp the exact attention is decides whether an approximation beats a constant (uniform attention):
random-feature and low-rank methods do well on flat attention, sparse and LSH methods on peaked
attention. So the regime is a sweep axis, and each regime has a ``sample`` param that changes the draw
(the suite has one ``seed``; a list of samples gives several draws of the same regime, for a mean and a
spread). ``sample = 0`` reproduces the draws made before the param existed.

- ``gaussian``: q, k, v i.i.d. normal, q and k scaled by ``qk_scale`` (the sharpness knob).
- ``peaked``: each query has about ``planted`` keys that match it strongly (clusters of positions that
  share a direction), on a Gaussian background; ``layout = "local"`` puts a cluster's positions next
  to each other (block-diagonal attention, which suits sliding windows), ``"random"`` scatters them.
- ``real``: Q, K, V captured from MiniLM-L6 on English text (:mod:`attnbench.real`): 12 heads,
  head_dim 32, n ≤ 512, one of 6 layers. Needs the optional ``real`` extra.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from attnbench.methodspec import Unsupported


@dataclass(frozen=True)
class GaussianInput:
    qk_scale: float = 1.0  # q and k are N(0, qk_scale²): larger = sharper attention
    sample: int = 0  # which draw: another sample is another independent draw of the same regime


@dataclass(frozen=True)
class PeakedInput:
    planted: int = 4  # positions per cluster: each query has about this many strongly matching keys
    strength: float = 8.0  # score q·k/√d of a query with a key of its own cluster, on top of background
    qk_scale: float = 0.5  # background: q and k also get N(0, qk_scale²) noise (score spread qk_scale²)
    layout: Literal["random", "local"] = "random"  # cluster members scattered, or contiguous positions
    sample: int = 0  # which draw


@dataclass(frozen=True)
class RealInput:
    layer: int = 0  # MiniLM-L6 layer (0..5) whose projections are captured
    sample: int = 0  # which draw of text windows (a batch of distinct 512-token windows)


@dataclass(frozen=True)
class Regime:
    name: str
    params: type
    make: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    description: str = ""
    # False: the generator depends on the seed and sample only, not on the shape, so cells of
    # different n see prefixes of the same sequences (real text windows)
    shape_salted: bool = True


def _gaussian(shape: tuple[int, int, int, int], p: GaussianInput, g: torch.Generator):
    q = torch.randn(shape, generator=g) * p.qk_scale  # (B, H, N, D)
    k = torch.randn(shape, generator=g) * p.qk_scale
    v = torch.randn(shape, generator=g)
    return q, k, v


def _peaked(shape: tuple[int, int, int, int], p: PeakedInput, g: torch.Generator):
    """Clusters of ``planted`` positions; a position's query and key both point along its cluster's
    unit direction u with length a = √(strength·√d), so q_i·k_j/√d ≈ strength inside a cluster and
    strength·(u·u') ≈ N(0, strength²/d) across clusters (random directions are not orthogonal)."""
    if p.planted < 1 or p.strength < 0 or p.qk_scale < 0:
        raise ValueError(f"peaked regime: planted={p.planted} must be >= 1, strength={p.strength} and "
                         f"qk_scale={p.qk_scale} must be >= 0")
    b, h, n, d = shape
    clusters = math.ceil(n / p.planted)
    if p.layout == "local":
        member = (torch.arange(n) // p.planted).expand(b, h, n)  # (B, H, N) cluster of each position
    else:
        member = torch.argsort(torch.rand(b, h, n, generator=g), dim=-1) // p.planted  # (B, H, N)
    dirs = torch.randn(b, h, clusters, d, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)  # (B, H, C, D) unit directions
    length = math.sqrt(p.strength * math.sqrt(d))
    centre = torch.gather(dirs, 2, member[..., None].expand(b, h, n, d)) * length  # (B, H, N, D)
    q = centre + p.qk_scale * torch.randn(shape, generator=g)
    k = centre + p.qk_scale * torch.randn(shape, generator=g)
    v = torch.randn(shape, generator=g)
    return q, k, v


def _real(shape: tuple[int, int, int, int], p: RealInput, g: torch.Generator):
    """Captured MiniLM-L6 projections; a shape or installation that cannot give them is Unsupported
    (a result row with the reason), never a crash."""
    from attnbench import real

    b, h, n, d = shape
    try:
        real.check_shape(n, h, d, p.layer)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    if not real.extra_available():
        raise Unsupported(f"unavailable: {real.INSTALL_HINT}")
    window_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))  # cell seed and sample, not n
    return real.real_qkv(n, b, h, d, layer=p.layer, seed=window_seed)


REGIMES: dict[str, Regime] = {
    "gaussian": Regime("gaussian", GaussianInput, _gaussian, "q, k, v i.i.d. normal; q, k scaled"),
    "peaked": Regime("peaked", PeakedInput, _peaked,
                     "each query matches a cluster of ~planted keys strongly, on a Gaussian background"),
    "real": Regime("real", RealInput, _real,
                   "Q, K, V captured from MiniLM-L6 on text (12 heads, head_dim 32, n <= 512)",
                   shape_salted=False),
}


def register_regime(regime: Regime) -> None:
    if regime.name in REGIMES:
        raise ValueError(f"duplicate input regime {regime.name!r}")
    REGIMES[regime.name] = regime


def _generator(seed: int, *salt: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(hash((seed, *salt)) % (2**63))
    return g


# How core-level q, k, v (all seen as (B, H, N, D)) are stored: "bhnd" contiguous, the default;
# "bnhd" as (B, N, H, D), the way a layer's input projection leaves them (FlashAttention's layout).
STORAGES = ("bhnd", "bnhd")


def make_qkv(input_spec: dict[str, Any], *, batch: int, heads: int, n: int, head_dim: int,
             dtype: torch.dtype, device: torch.device, seed: int):
    """q, k, v of shape (B, H, N, D) for a core-level cell; the spec's ``storage`` (default "bhnd")
    picks their memory layout, never their values."""
    spec = dict(input_spec)
    regime = REGIMES[spec.pop("regime", "gaussian")]
    storage = spec.pop("storage", STORAGES[0])
    spec.pop("lengths", None)  # packed documents (attnbench.varlen): the same tokens, split
    params = regime.params(**spec)
    sample = getattr(params, "sample", 0)
    shape = (batch, heads, n, head_dim) if regime.shape_salted else (-1,)
    g = _generator(seed, *shape, *((sample,) if sample else ()))
    q, k, v = regime.make((batch, heads, n, head_dim), params, g)
    if storage == "bnhd":  # the same values, stored (B, N, H, D) and seen as (B, H, N, D)
        return tuple(t.to(device=device, dtype=dtype).transpose(1, 2).contiguous().transpose(1, 2)
                     for t in (q, k, v))
    return tuple(t.to(device=device, dtype=dtype).contiguous() for t in (q, k, v))


def make_hidden(*, batch: int, n: int, d_model: int, dtype: torch.dtype, device: torch.device,
                seed: int) -> torch.Tensor:
    """x of shape (B, N, d_model) for layer- and model-level cells (unit-variance, like embeddings
    after layer norm)."""
    g = _generator(seed, batch, n, d_model, 17)
    return torch.randn(batch, n, d_model, generator=g).to(device=device, dtype=dtype)
