"""The model a ``train`` cell trains: a small pre-LN Transformer encoder whose every layer's attention
is the cell's method.

Token and position embeddings (learned, or with ``positions = "sinusoidal"`` the fixed sin/cos table
of Vaswani et al., https://arxiv.org/abs/1706.03762, times one learned gain: every position then has
its place without needing gradient of its own, which learned positions get less of as n grows at a
fixed number of tokens per step) (plus, with ``token_shift``, a learned projection of the previous
token's embedding at each position: the one-step shift that H3, https://arxiv.org/abs/2212.14052, and
Zoology's models put before attention so that a single attention layer can do associative recall; it
looks only backwards, so a causal model stays causal), L layers of ``x + attn(LN(x))`` then ``x + FFN(LN(x))`` (GELU),
a final LayerNorm and a task head: per position (token tasks) or on the mean over the non-padding
positions (pooled tasks). Each layer builds its attention through the method's factory with its layer
index and one :class:`~attnbench.registry.SharedScope` for the whole model, so Linformer's
``sharing = "layerwise"`` is one E for every layer (registered on each as the same Parameter). A
method registered without a core level (a whole self-attention layer, e.g. a community module) is
the layer's attention as it is; any other gets :class:`attnbench.levels.SelfAttention`'s q, k, v and
output projections around it.

Attention is bidirectional unless ``causal`` (each position then sees itself and earlier ones: the
method is built causal). Parameters are kept in fp32 (bf16 runs under autocast); the method's own
parameters are built in fp32 too, from the cell's seed, as at the ``model`` level.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.levels import SelfAttention
from attnbench.methodspec import BuildContext, MethodSpec, SharedScope


class PreLNLayer(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, attn: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = attn  # forward(x): (B, N, d_model) -> (B, N, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ffn_dim)
        self.ff2 = nn.Linear(ffn_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


def sinusoids(n: int, d_model: int) -> torch.Tensor:
    """(n, d_model) fixed positions: sin at even features, cos at odd, wavelengths 2π to 10000·2π."""
    pos = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table.float()


class TrainModel(nn.Module):
    """forward(ids): (B, N) token ids -> logits (B, N, outputs), or (B, outputs) when ``pooled``."""

    def __init__(self, *, vocab: int, outputs: int, n: int, d_model: int, ffn_dim: int,
                 attns: list[nn.Module], pooled: bool, pad: int | None, token_shift: bool = False,
                 positions: str = "learned"):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        if positions == "learned":
            self.pos = nn.Embedding(n, d_model)
        else:  # fixed table, scaled to the learned embeddings' initial size (RMS 0.02), gain learned
            self.pos = None
            self.register_buffer("pos_table", sinusoids(n, d_model), persistent=False)
            self.pos_gain = nn.Parameter(torch.tensor(0.02 * math.sqrt(2.0)))
        self.shift = nn.Linear(d_model, d_model, bias=False) if token_shift else None
        self.layers = nn.ModuleList(PreLNLayer(d_model, ffn_dim, a) for a in attns)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, outputs)
        self.pooled, self.pad = pooled, pad
        for emb in (self.tok, self.pos):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        tok = self.tok(ids)  # (B, N, d_model)
        x = tok + (self.pos.weight[:n] if self.pos is not None else self.pos_gain * self.pos_table[:n])
        if self.shift is not None:  # position i also gets token i-1 (nothing at position 0)
            x = x + self.shift(F.pad(tok, (0, 0, 1, 0))[:, :n])
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        if not self.pooled:
            return self.head(x)  # (B, N, outputs)
        keep = (ids != self.pad).unsqueeze(-1) if self.pad is not None else torch.ones_like(x[..., :1])
        keep = keep.to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, d_model)
        return self.head(pooled)  # (B, outputs)


def build_model(spec: MethodSpec, params: Any, *, vocab: int, outputs: int, n: int, d_model: int,
                heads: int, layers: int, ffn_dim: int, pooled: bool, pad: int | None,
                device: torch.device, seed: int, batch: int, causal: bool = False,
                token_shift: bool = False, positions: str = "learned",
                amp: torch.dtype | None = None) -> TrainModel:
    """The model for one cell, in fp32 on ``device``; the same seed builds the same weights. ``amp``:
    the autocast dtype training runs it under (methods that warm kernels up at build warm those)."""
    scope = SharedScope()
    head_dim = d_model // heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attns = []
        for i in range(layers):
            ctx = BuildContext(n=n, heads=heads, head_dim=head_dim, dtype=torch.float32,
                               device=device, batch=batch, causal=causal, seed=seed, layer=i,
                               num_layers=layers, scope=scope, amp=amp)
            method = spec.build(params, ctx)
            attns.append(method if spec.takes_hidden else
                         SelfAttention(d_model, heads, method))
        model = TrainModel(vocab=vocab, outputs=outputs, n=n, d_model=d_model, ffn_dim=ffn_dim,
                           attns=attns, pooled=pooled, pad=pad, token_shift=token_shift,
                           positions=positions)
    return model.to(device)


def method_modules(model: TrainModel) -> list[nn.Module]:
    """The method's own modules, one per layer (inside the q, k, v projections where there are)."""
    return [layer.attn.attn if isinstance(layer.attn, SelfAttention) else layer.attn
            for layer in model.layers]


def parameter_counts(model: TrainModel) -> dict[str, int]:
    """Distinct parameters (a shared one counted once): the whole model, and the method's own."""
    own = {id(p): p.numel() for m in method_modules(model) for p in m.parameters()}
    return {"n_params": sum(p.numel() for p in model.parameters()),
            "n_attn_params": sum(own.values())}
