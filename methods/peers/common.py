"""What the community adapters share (Linformer, https://arxiv.org/abs/2006.04768, and the other
papers of :mod:`attnbench.methods.peers`): the ``Peer`` module around a PyPI package's own module,
whose stats name the distribution and its version; build seeds drawn from the cell seed and layer
under ``torch.random.fork_rng``; the ``pip install 'attnbench[peers]'`` hint; and the float64
layer-reference helpers, x (B, N, d_model) <-> heads (B, H, N, D).
"""
from __future__ import annotations

import importlib.metadata

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import BuildContext

HINT = "pip install 'attnbench[peers]'"
# modules the packages import on import, so a missing one reads "unavailable" rather than an error row
LOCAL_DEPS = ("local_attention", "einops", "hyper_connections", "torch_einops_utils")


def _seed(ctx: BuildContext, salt: int, *, per_layer: bool = True) -> int:
    """A build seed from the cell seed (and the layer, unless the object is shared across layers)."""
    return ctx.generator(salt).initial_seed() if per_layer else (ctx.seed * 1_000_003 + salt) % 2**63


def _seeded(make, seed: int):
    """Call ``make()`` with the global CPU RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


class Peer(nn.Module):
    """An adapter around a community module ``peer`` from the distribution ``dist``."""

    def __init__(self, peer: nn.Module, dist: str):
        super().__init__()
        self.peer = peer
        self.dist = dist

    def stats(self) -> dict:
        return {"peer": f"{self.dist}=={importlib.metadata.version(self.dist)}"}


def _linear64(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(x, layer.weight.double(), bias)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)  # (B, N, H·D) -> (B, H, N, D)


def _merge(o: torch.Tensor) -> torch.Tensor:
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)  # (B, H, N, D) -> (B, N, H·D)
