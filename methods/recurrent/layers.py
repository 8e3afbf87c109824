"""Whole layers of the recurrent family on fla-core's kernels (layer and model level): ``gla_layer``
(GLA, https://arxiv.org/abs/2312.06635), ``deltanet_layer`` (DeltaNet,
https://arxiv.org/abs/2406.06484), ``gated_deltanet_layer`` (Gated DeltaNet,
https://arxiv.org/abs/2412.06464) and ``nsa_layer`` (NSA, https://arxiv.org/abs/2502.11089).

The operators of :mod:`attnbench.methods.recurrent.ops` with the projections their models give them,
so that gates and betas come from the hidden states as in training instead of being drawn: x
(B, N, d_model) -> (B, N, d_model), q, k, v and gates in fla's (B, N, H, ...) layout.
``exact_reference(x)`` runs the same layer with the same weights in float64 with the operator's
reference form (:mod:`attnbench.recurrences`). Each layer's projections and gates, and what fla's
layers add that is left out: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.flaops import prepare
from attnbench.methods.recurrent.core import COMMON, NsaParams, RecurrentCore, _nsa_shape, causal_only
from attnbench.methods.recurrent.ops import DeltaOp, GatedDeltaOp, GlaOp, NsaOp, Op, heads_first
from attnbench.registry import BuildContext, NoParams, Unsupported, register_method

GLA_GATE_RANK = 16
NORM_EPS = 1e-5


def _lin(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer`` applied in ``x``'s dtype (a float64 reference reuses the low-precision weights)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


class RecurrentLayer(nn.Module):
    """Projections, gates, the fla operator and the output path of one recurrent model's layer."""

    def __init__(self, op: Op, ctx: BuildContext):
        super().__init__()
        h, d = ctx.heads, ctx.head_dim
        self.op, self.heads, self.kv_heads, self.head_dim = op, h, op.kv_heads(h), d
        self.core = RecurrentCore(op, ctx)  # holds the kernel, the gate check's state and stats
        d_model = h * d
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed * 1_000_003 + ctx.layer * 7919 + 0x1A7E)
            self.q_proj = nn.Linear(d_model, h * d, bias=False)
            self.k_proj = nn.Linear(d_model, self.kv_heads * d, bias=False)
            self.v_proj = nn.Linear(d_model, self.kv_heads * d, bias=False)
            self.o_proj = nn.Linear(h * d, d_model, bias=False)
            self._gate_params(op, d_model, h, d)
        self.to(device=ctx.device, dtype=ctx.dtype)
        if isinstance(op, GatedDeltaOp):  # decay parameters stay in fp32, as in Gated DeltaNet
            self.A_log.data, self.dt_bias.data = self.A_log.data.float(), self.dt_bias.data.float()

    def _gate_params(self, op: Op, d_model: int, h: int, d: int) -> None:
        if isinstance(op, GlaOp):
            self.gk_down = nn.Linear(d_model, GLA_GATE_RANK, bias=False)
            self.gk_up = nn.Linear(GLA_GATE_RANK, h * d, bias=True)
        if isinstance(op, DeltaOp):
            self.b_proj = nn.Linear(d_model, h, bias=False)
        if isinstance(op, GatedDeltaOp):
            self.a_proj = nn.Linear(d_model, h, bias=False)
            self.A_log = nn.Parameter(torch.empty(h).uniform_(1, 16).log())
            dt = torch.exp(torch.empty(h).uniform_(math.log(1e-3), math.log(1e-1)))
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        if isinstance(op, NsaOp):
            self.g_proj = nn.Linear(d_model, 2 * h, bias=False)
        if isinstance(op, (GlaOp, GatedDeltaOp)):
            self.g_proj = nn.Linear(d_model, h * d, bias=False)
        if isinstance(op, (GlaOp, DeltaOp)):
            self.norm_weight = nn.Parameter(torch.ones(d))

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The operator's gates from the hidden states, fla layout (B, N, H[, D])."""
        b, n, _ = x.shape
        op, h = self.op, self.heads
        if isinstance(op, GlaOp):
            return {"gk": F.logsigmoid(_lin(self.gk_up, _lin(self.gk_down, x))).view(b, n, h, -1) / 16}
        if isinstance(op, NsaOp):
            g = torch.sigmoid(_lin(self.g_proj, x)).view(b, n, h, 2)
            return {"g_cmp": g[..., 0].contiguous(), "g_slc": g[..., 1].contiguous()}
        out = {"beta": torch.sigmoid(_lin(self.b_proj, x))}  # (B, N, H)
        if isinstance(op, GatedDeltaOp):
            wide = torch.promote_types(x.dtype, torch.float32)
            out["g"] = -self.A_log.to(wide).exp() * F.softplus(_lin(self.a_proj, x).to(wide) +
                                                                self.dt_bias.to(wide))
        return out

    def _run(self, x: torch.Tensor, reference: bool) -> torch.Tensor:
        b, n, _ = x.shape
        h, hk, d = self.heads, self.kv_heads, self.head_dim
        q = _lin(self.q_proj, x).view(b, n, h, d)  # (B, N, H, D): fla's layout, no copy
        k, v = _lin(self.k_proj, x).view(b, n, hk, d), _lin(self.v_proj, x).view(b, n, hk, d)
        if isinstance(self.op, DeltaOp):
            q, k = F.silu(q), F.silu(k)
        gates = self.gates(x)
        if reference:
            o = heads_first(self.op.reference(*map(heads_first, (q, k, v)),
                                              **{name: heads_first(t) for name, t in gates.items()}))
        else:
            o = self.op.kernel(self.core.kernel, q, k, v, **gates).to(x.dtype)
        if hasattr(self, "norm_weight") or isinstance(self.op, GatedDeltaOp):
            weight = self.norm_weight.to(o.dtype) if hasattr(self, "norm_weight") else None
            o = F.rms_norm(o, (d,), weight, eps=NORM_EPS)
        if isinstance(self.op, (GlaOp, GatedDeltaOp)):
            o = o * F.silu(_lin(self.g_proj, x).view(b, n, h, d))
        return _lin(self.o_proj, o.reshape(b, n, h * d))  # (B, N, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        status, why = self.core.backward_status
        if torch.is_grad_enabled() and status != "ok":
            if status == "refused":
                raise Unsupported(f"fla refuses the backward of {self.op.name} here: {why}")
            raise RuntimeError(f"the backward of {self.op.name} failed at build: {why}")
        return self._run(x, reference=False)

    def exact_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer, same weights, in ``x``'s precision with the operator's reference form."""
        return self._run(x, reference=True)

    def stats(self) -> dict:
        return {**self.core.stats(), "layout": "projections write fla's (B,N,H,D) layout directly"}


def build_layer(op: Op, ctx: BuildContext) -> RecurrentLayer:
    layer = RecurrentLayer(op, ctx)

    def inputs(b, n):
        g = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 31)
        return (torch.randn((b, n, ctx.heads * ctx.head_dim), generator=g, device=ctx.device)
                .to(ctx.dtype),)

    prepare(layer, layer.core, ctx, inputs)
    return layer


LAYER = dict(COMMON, levels=("layer", "model"))


@register_method("gla_layer", params=NoParams, constraints=(causal_only,), **LAYER)
def build_gla_layer(p: NoParams, ctx: BuildContext) -> nn.Module:
    """GLA layer: projections, low-rank gate, RMSNorm and swish output gate around chunk_gla."""
    return build_layer(GlaOp(), ctx)


@register_method("deltanet_layer", params=NoParams, constraints=(causal_only,),
                 **dict(LAYER, dtypes=("fp16", "bf16")))
def build_deltanet_layer(p: NoParams, ctx: BuildContext) -> nn.Module:
    """DeltaNet layer: SiLU q, k, projected β, RMSNorm output around chunk_delta_rule."""
    return build_layer(DeltaOp(), ctx)


@register_method("gated_deltanet_layer", params=NoParams, constraints=(causal_only,), **LAYER)
def build_gated_deltanet_layer(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Gated DeltaNet layer: projected β and decay, gated RMSNorm output."""
    return build_layer(GatedDeltaOp(), ctx)


@register_method("nsa_layer", params=NsaParams, constraints=(causal_only, _nsa_shape), **LAYER)
def build_nsa_layer(p: NsaParams, ctx: BuildContext) -> nn.Module:
    """NSA layer: GQA projections and projected branch gates around parallel_nsa."""
    return build_layer(NsaOp(p.group, p.block_size, p.block_counts), ctx)
