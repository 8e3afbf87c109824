"""What a timed cell is made of: its module (built at the cell's level, packed for packed documents),
its seeded inputs (and cheaper ones drawn on the device for capacity probes), the output shape the
contract expects, and the optional hooks a module may have (``stats``, ``flops``).
"""
from __future__ import annotations

from typing import Any

import torch

from attnbench.case import Case
from attnbench.inputs import make_hidden, make_qkv
from attnbench.levels import attention_modules, build_level
from attnbench.methodspec import MethodSpec
from attnbench.varlen import documents_for, pack_level


def make_inputs(case: Case, batch: int, dtype: torch.dtype, device: torch.device):
    """The cell's seeded inputs: q, k, v at core level, hidden states x above it."""
    if case.level == "core":
        return make_qkv(case.input_dict, batch=batch, heads=case.heads, n=case.n,
                        head_dim=case.head_dim, dtype=dtype, device=device, seed=case.seed)
    return (make_hidden(batch=batch, n=case.n, d_model=case.heads * case.head_dim, dtype=dtype,
                        device=device, seed=case.seed),)


def probe_inputs(case: Case, batch: int, dtype: torch.dtype, device: torch.device):
    """Inputs for capacity probes, drawn on the device: drawing hundreds of sequences on the host
    for each probe would dominate the search. Only their memory matters; they are normal draws (never
    zeros), and the timed step at the found batch uses the regular seeded inputs."""
    g = torch.Generator(device=device).manual_seed(case.seed)
    if case.level == "core":
        shape = (batch, case.heads, case.n, case.head_dim)
        return tuple(torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
    shape = (batch, case.n, case.heads * case.head_dim)
    return (torch.randn(shape, generator=g, device=device, dtype=dtype),)


def build_module(spec: MethodSpec, params: Any, case: Case, dtype: torch.dtype, device: torch.device):
    """The method at the cell's level (a layer or model around it), packed when its inputs are
    packed documents; built untimed."""
    module = build_level(spec, params, case.level, n=case.n, heads=case.heads,
                         head_dim=case.head_dim, layers=case.layers, ffn_dim=case.ffn_dim,
                         dtype=dtype, device=device, causal=case.causal, seed=case.seed,
                         batch=case.batch)
    if (docs := documents_for(case)) is not None:  # packed documents (attnbench.varlen)
        module = pack_level(module, docs)
    return module


def module_flops(module: torch.nn.Module, inputs) -> float | None:
    """Forward FLOPs of one call from the module's ``flops`` hook (None without one, or if it fails)."""
    hook = getattr(module, "flops", None)
    if hook is None or len(inputs) != 3:
        return None
    try:
        return float(hook(*inputs))
    except Exception:  # noqa: BLE001 - a FLOP count is optional
        return None


def module_stats(module: torch.nn.Module) -> dict:
    """The method's own columns from its ``stats`` hook (of the attention inside a layer or model)."""
    hook = getattr(module, "stats", None)
    if hook is None:
        mods = attention_modules(module)
        hook = getattr(mods[0], "stats", None) if mods and mods[0] is not module else None
    try:
        return dict(hook()) if hook else {}
    except Exception:  # noqa: BLE001
        return {}


def out_shape(case: Case, batch: int) -> tuple[int, ...]:
    """The output shape the contract expects: (B, H, N, D) at core level, (B, N, d_model) above."""
    if case.level == "core":
        return (batch, case.heads, case.n, case.head_dim)
    return (batch, case.n, case.heads * case.head_dim)
