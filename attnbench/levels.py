"""Levels at which a method is measured.

- ``core``: the attention op alone, ``forward(q, k, v)`` on (B, H, N, D).
- ``layer``: multi-head self-attention with input and output projections, input (B, N, d_model) with
  d_model = heads · head_dim.
- ``model``: an L-layer post-norm Transformer encoder (attention + feed-forward + layer norms, as in
  BERT/RoBERTa; RoBERTa-base is 12 layers, d_model 768, 12 heads, FFN 3072). Every layer builds its
  attention through the method's factory with its layer index and one shared scope, so a method can
  share parameters across layers (Linformer's layerwise sharing).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.methodspec import BuildContext, MethodSpec, SharedScope
from attnbench.reference import reference_attention


class SelfAttention(nn.Module):
    """Input projection to q, k, v, the method's attention, output projection."""

    def __init__(self, d_model: int, heads: int, attn: nn.Module):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d_model = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d_model // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D)
        o = self.attn(q, k, v)  # (B, H, N, D)
        return self.out(o.transpose(1, 2).reshape(b, n, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ffn_dim: int, attn: nn.Module):
        super().__init__()
        self.attn = SelfAttention(d_model, heads, attn)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ffn_dim)
        self.ff2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ff2(F.gelu(self.ff1(x))))


class Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ExactStandIn(nn.Module):
    """Exact float64 attention standing in for a method inside a reference copy of a layer or model."""

    def __init__(self, original: nn.Module, causal: bool):
        super().__init__()
        self.hook = getattr(original, "exact_reference", None)
        self.causal = causal

    def forward(self, q, k, v):
        if self.hook is not None:
            return self.hook(q.double(), k.double(), v.double()).double()
        return reference_attention(q, k, v, causal=self.causal)


class HiddenExactStandIn(nn.Module):
    """The exact counterpart of a whole self-attention module (its ``exact_reference(x)`` hook)."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.hook = getattr(original, "exact_reference", None)
        if self.hook is None:
            raise NoExactCounterpart(f"{type(original).__name__} has no exact_reference(x) hook")

    def forward(self, x):
        return self.hook(x.double()).double()


class NoExactCounterpart(Exception):
    """The method's output has no exact reference to compare with (error is left out)."""


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The method's attention modules inside a core module, layer or model, in layer order."""
    if isinstance(model, Encoder):
        return [layer.attn.attn if isinstance(layer.attn, SelfAttention) else layer.attn
                for layer in model.layers]
    if isinstance(model, SelfAttention):
        return [model.attn]
    return [model]


def build_level(spec: MethodSpec, params: Any, level: str, *, n: int, heads: int, head_dim: int,
                layers: int, ffn_dim: int, dtype: torch.dtype, device: torch.device, causal: bool,
                seed: int, batch: int = 1, checked: bool = False) -> nn.Module:
    """Build the module measured at ``level``; setup only, nothing is timed here."""
    scope = SharedScope()
    num_layers = layers if level == "model" else 1

    def attn(layer: int) -> nn.Module:
        ctx = BuildContext(n=n, heads=heads, head_dim=head_dim, dtype=dtype, device=device,
                           batch=batch, causal=causal, seed=seed, layer=layer,
                           num_layers=num_layers, scope=scope)
        return spec.build(params, ctx, checked=checked)

    if level == "core":
        return attn(0)
    if spec.takes_hidden and level == "layer":
        return attn(0)
    d_model = heads * head_dim
    attns = [attn(i) for i in range(num_layers)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if level == "layer":
            wrapper = SelfAttention(d_model, heads, nn.Identity())
        else:
            wrapper = Encoder([EncoderLayer(d_model, heads, ffn_dim, nn.Identity())
                               for _ in range(num_layers)])
    wrapper = wrapper.to(device=device, dtype=dtype)
    if spec.takes_hidden:  # the method is the whole self-attention of each encoder layer
        for layer, a in zip(wrapper.layers, attns):
            layer.attn = a
        return wrapper
    selfattns = [m for m in wrapper.modules() if isinstance(m, SelfAttention)]
    for sa, a in zip(selfattns, attns):
        sa.attn = a
    return wrapper


def reference_model(model: nn.Module, causal: bool):
    """The exact float64 counterpart of ``model`` as a callable on float64 inputs: same weights, exact
    attention (the method's ``exact_reference`` hook where it has one). Differentiable: the float64
    reference gradients (:mod:`attnbench.gradient`) come from it."""
    if not isinstance(model, (SelfAttention, Encoder)):
        hook = getattr(model, "exact_reference", None)
        if hook is not None:
            return lambda *inputs: hook(*(t.double() for t in inputs)).double()
        return lambda *inputs: _core_reference(inputs, causal, type(model).__name__)
    originals = attention_modules(model)
    memo = {id(a): nn.Identity() for a in originals}  # don't copy the method's own state
    ref = copy.deepcopy(model, memo)
    if isinstance(ref, Encoder) and not isinstance(ref.layers[0].attn, SelfAttention):
        for layer, original in zip(ref.layers, originals):
            layer.attn = HiddenExactStandIn(original)
    for sa, original in zip([m for m in ref.modules() if isinstance(m, SelfAttention)], originals):
        sa.attn = ExactStandIn(original, causal)
    ref = ref.double()
    return lambda *inputs: ref(*(t.double() for t in inputs))


def _core_reference(inputs, causal: bool, name: str) -> torch.Tensor:
    if len(inputs) != 3:
        raise NoExactCounterpart(f"{name} has no exact_reference(x) hook")
    return reference_attention(*inputs, causal=causal)


def reference_output(model: nn.Module, inputs: tuple[torch.Tensor, ...], causal: bool) -> torch.Tensor:
    """The exact float64 counterpart of ``model`` on ``inputs``: same weights, exact attention."""
    forward = reference_model(model, causal)
    with torch.no_grad():
        return forward(*inputs)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Distinct parameters (shared ones counted once) in total and inside the attention methods."""
    total = sum(p.numel() for p in model.parameters())
    attn_params = {id(p): p.numel() for a in attention_modules(model) for p in a.parameters()}
    return {"n_params": total, "n_attn_params": sum(attn_params.values())}
