"""The linear-recurrent attentions people train today, on fla-core's Triton kernels (core level).

- ``gla``: Gated Linear Attention (Yang et al., 2023, https://arxiv.org/abs/2312.06635), ``chunk_gla``.
- ``deltanet``: DeltaNet (Schlag et al., 2021, https://arxiv.org/abs/2102.11174; parallelised by Yang
  et al., 2024, https://arxiv.org/abs/2406.06484), ``chunk_delta_rule`` with q, k L2-normalised.
- ``gated_deltanet``: Gated DeltaNet (Yang et al., 2024, https://arxiv.org/abs/2412.06464),
  ``chunk_gated_delta_rule`` with q, k L2-normalised.
- ``retnet``: RetNet's retention (Sun et al., 2023, https://arxiv.org/abs/2307.08621), fla's
  ``chunk_retention`` (simple GLA with the fixed decays γ_h = 1 − 2^(−5−h)).
- ``based``: Based (Arora et al., 2024, https://arxiv.org/abs/2402.18668), ``parallel_based``: the
  Taylor kernel 1 + s + s²/2 on the full head_dim (the paper projects q, k to 16 features first).
- ``fla_linear``: causal linear attention (Katharopoulos et al., 2020, https://arxiv.org/abs/2006.16236)
  on fla's ``chunk_linear_attn``, with our ``linear``'s elu(x)+1 feature map: the same math as
  ``linear``, for ``report --pairs linear=fla_linear``.
- ``nsa``: Native Sparse Attention (Yuan et al., 2025, https://arxiv.org/abs/2502.11089),
  ``parallel_nsa`` with its compressed and selected branches (its sliding-window branch needs
  flash-attn and is left out). NSA shares keys and values across a group of ≥ 16 query heads (GQA);
  at core level the group's key/value head is the first head of the group in k, v.

Each is causal by construction (a recurrence over positions): non-causal cells are ``unsupported``.
None of them approximates softmax attention (``approximates=None``): rows carry ``ref_rel_err``
against the operator itself in float64 (:mod:`attnbench.recurrences`, its ``exact_reference`` hook)
instead of a ``rel_err`` against softmax; their quality is a training question.

Gates are seeded inputs, drawn once per cell (device generator, the cell seed) in fla's (B, N, H, ...)
layout; the laws follow each model's own initialisation scale:
- GLA's per-channel log-decay gk = logsigmoid(z)/16, z ~ N(0, 1) (GLA's gate normaliser 16);
- DeltaNet's and Gated DeltaNet's β = sigmoid(z), z ~ N(0, 1), one per head and position;
- Gated DeltaNet's log-decay g = logsigmoid(z)/16, z ~ N(0, 1), one per head and position
  (mean ≈ −0.05: per-step decays ≈ 0.95, within the range GDN's A·dt initialisation gives);
- NSA's branch gates g_cmp, g_slc = sigmoid(z), z ~ N(0, 1), per query head and position.

Before anything is timed the factory checks fla's kernel against fla's own naive fp32 reference on
small seeded inputs (``fla_gate_rel_err``; a disagreement is an ``error`` row), runs forward and
backward once at the cell's shape (autotuning, outside the timed region; ``autotune`` says when) and
records whether fla refuses the backward on this stack (``fla_backward``): a refused backward makes
``fwd_bwd`` cells ``unsupported`` with fla's own reason. The op is applied to q, k, v transposed to
fla's (B, N, H, D) layout and copied to contiguous memory inside the timed call (``layout``), as
fla's own input guard would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench import flaops
from attnbench import flops as fl
from attnbench import recurrences as ref
from attnbench.params import Positive
from attnbench.registry import BuildContext, Limit, NoParams, Unsupported, register_method


def heads_first(t: torch.Tensor) -> torch.Tensor:
    """(B, N, H, ...) <-> (B, H, N, ...)."""
    return t.transpose(1, 2)


class Op:
    """One fla operator as the harness calls it: q, k, v in fla's (B, N, H, D) layout plus gates."""

    name = ""
    kernel_path = ""
    naive_path = ""

    def kv_heads(self, heads: int) -> int:
        return heads

    def gate_n(self) -> int:
        """Positions of the gate check's inputs (at most the cell's n)."""
        return flaops.GATE_N

    def draw(self, b: int, n: int, heads: int, dk: int, dtype: torch.dtype,
             gen: torch.Generator, device) -> dict[str, torch.Tensor]:
        """Seeded gates (fla layout) for a (b, n) call; none by default."""
        return {}

    def kernel(self, fn, q, k, v, **gates) -> torch.Tensor:
        raise NotImplementedError

    def naive(self, fn, q, k, v, **gates) -> torch.Tensor:
        """fla's naive reference, in fp32 on fp32 inputs (fla layout)."""
        raise NotImplementedError

    def reference(self, q, k, v, **gates) -> torch.Tensor:
        """The operator in the inputs' precision (float64 for the harness), our (B, H, N, D) layout,
        gates heads-first."""
        raise NotImplementedError

    def pre(self, q, k):
        """What the operator does to q, k before the recurrence (here: nothing)."""
        return q, k

    def flops(self, b: int, h: int, n: int, dk: int, dv: int) -> float:
        """Forward FLOPs (:mod:`attnbench.flops`): the chunked linear recurrence by default."""
        return fl.chunked_linear_flops(b, h, n, dk, dv)


def _normal(shape, gen, device) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)


class GlaOp(Op):
    name, kernel_path, naive_path = "gla", "fla.ops.gla:chunk_gla", "fla.ops.gla.naive:naive_recurrent_gla"

    def draw(self, b, n, heads, dk, dtype, gen, device):
        return {"gk": F.logsigmoid(_normal((b, n, heads, dk), gen, device)) / 16}

    def kernel(self, fn, q, k, v, gk):
        return fn(q, k, v, g=gk, scale=q.shape[-1] ** -0.5)[0]

    def naive(self, fn, q, k, v, gk):
        return fn(q, k, v, gk)[0]

    def reference(self, q, k, v, gk):
        return ref.gated_linear(q, k, v, gk, ref.default_scale(q.shape[-1]))


class DeltaOp(Op):
    name, kernel_path, naive_path = ("deltanet", "fla.ops.delta_rule:chunk_delta_rule",
                                     "fla.ops.delta_rule.naive:delta_rule_recurrence")
    gated = False

    def draw(self, b, n, heads, dk, dtype, gen, device):
        out = {"beta": torch.sigmoid(_normal((b, n, heads), gen, device)).to(dtype)}
        if self.gated:
            out["g"] = F.logsigmoid(_normal((b, n, heads), gen, device)) / 16
        return out

    def kernel(self, fn, q, k, v, beta, g=None):
        extra = {} if g is None else {"g": g}
        return fn(q, k, v, beta=beta, scale=q.shape[-1] ** -0.5, use_qk_l2norm_in_kernel=True,
                  **extra)[0]

    def pre(self, q, k):
        return ref.l2norm(q), ref.l2norm(k)

    def flops(self, b, h, n, dk, dv):
        return fl.chunked_linear_flops(b, h, n, dk, dv, delta=True)

    def naive(self, fn, q, k, v, beta, g=None):
        q, k = self.pre(q, k)
        if g is None:  # fla's delta_rule_recurrence takes (B, H, N, D)
            return heads_first(fn(*map(heads_first, (q, k, v, beta)))[0])
        return fn(q, k, v, beta, g)[0]

    def reference(self, q, k, v, beta, g=None):
        q, k = self.pre(q, k)
        return ref.delta_rule(q, k, v, beta, g, ref.default_scale(q.shape[-1]))


class GatedDeltaOp(DeltaOp):
    name, kernel_path, naive_path = (
        "gated_deltanet", "fla.ops.gated_delta_rule:chunk_gated_delta_rule",
        "fla.ops.gated_delta_rule.naive:naive_recurrent_gated_delta_rule")
    gated = True


class RetentionOp(Op):
    name, kernel_path, naive_path = ("retnet", "fla.ops.retention:chunk_retention",
                                     "fla.ops.simple_gla.naive:naive_recurrent_simple_gla")

    def kernel(self, fn, q, k, v):
        return fn(q, k, v, scale=q.shape[-1] ** -0.5)[0]

    def naive(self, fn, q, k, v):
        b, n, h, _ = q.shape
        g = ref.retnet_log_decay(h, q.device, torch.float32).expand(b, n, h)
        return fn(q, k, v, g)[0]

    def reference(self, q, k, v):
        b, h, n, _ = q.shape
        g = ref.retnet_log_decay(h, q.device, q.dtype)[:, None].expand(b, h, n)
        return ref.gated_linear(q, k, v, g, ref.default_scale(q.shape[-1]))


class BasedOp(Op):
    name, kernel_path, naive_path = ("based", "fla.ops.based:parallel_based",
                                     "fla.ops.based.naive:naive_parallel_based")

    def kernel(self, fn, q, k, v):
        return fn(q, k, v, scale=q.shape[-1] ** -0.5, use_norm=True)

    def naive(self, fn, q, k, v):  # fla's naive takes (B, H, N, D)
        return heads_first(fn(*map(heads_first, (q, k, v)), use_norm=True))

    def reference(self, q, k, v):
        return ref.based(q, k, v, ref.default_scale(q.shape[-1]))

    def flops(self, b, h, n, dk, dv):
        return fl.based_flops(b, h, n, dk, dv)


class LinearOp(Op):
    """elu(x)+1 features times n^(-1/2) (inside the timed call, exactly as our ``linear`` makes
    them: the factor cancels in the normalisation and keeps the sums in fp16's range), then fla's
    normalised chunked linear attention."""
    name, kernel_path, naive_path = ("fla_linear", "fla.ops.linear_attn:chunk_linear_attn",
                                     "fla.ops.linear_attn.naive:naive_recurrent_linear_attn")

    @staticmethod
    def features(q, k, n: int):
        return (F.elu(q) + 1) * n ** -0.5, (F.elu(k) + 1) * n ** -0.5

    def kernel(self, fn, q, k, v):  # fla layout: n is axis 1
        return fn(*self.features(q, k, q.shape[1]), v, normalize=True)[0]

    def naive(self, fn, q, k, v):
        return fn(*self.features(q, k, q.shape[1]), v, normalize=True)[0]

    def reference(self, q, k, v):  # our layout: n is axis 2
        return ref.normalized_linear(*self.features(q, k, q.shape[-2]), v)

    def flops(self, b, h, n, dk, dv):
        return fl.chunked_linear_flops(b, h, n, dk, dv + 1)  # the normaliser rides along as a column


class NsaOp(Op):
    name, kernel_path, naive_path = "nsa", "fla.ops.nsa:parallel_nsa", "fla.ops.nsa.naive:naive_nsa_topk"

    def __init__(self, group: int = 16, block_size: int = 64, block_counts: int = 16):
        self.group, self.block_size, self.block_counts = group, block_size, block_counts

    def kv_heads(self, heads):
        return heads // self.group

    def gate_n(self) -> int:
        return self.block_counts * self.block_size  # the gate check selects from every block

    def draw(self, b, n, heads, dk, dtype, gen, device):
        return {name: torch.sigmoid(_normal((b, n, heads), gen, device)).to(dtype)
                for name in ("g_cmp", "g_slc")}

    def kernel(self, fn, q, k, v, g_cmp, g_slc):
        return fn(q, k, v, g_cmp=g_cmp, g_slc=g_slc, block_counts=self.block_counts,
                  block_size=self.block_size, scale=q.shape[-1] ** -0.5)

    def naive(self, fn, q, k, v, g_cmp, g_slc):
        """fla's naive compression, top-k and selection (its naive_nsa pools keys with a Triton
        kernel; the pooling here is plain torch so the check also runs without a GPU)."""
        from fla.ops.nsa.naive import naive_nsa_compression, naive_nsa_selection

        bs, scale = self.block_size, q.shape[-1] ** -0.5
        k_cmp, v_cmp = (heads_first(ref.mean_pool(heads_first(x), bs)) for x in (k, v))
        o_cmp, _ = naive_nsa_compression(q, k_cmp, v_cmp, bs, scale)
        idx = fn(q, k_cmp, self.block_counts, bs, scale)
        o_slc = naive_nsa_selection(q, k, v, idx, bs, scale)
        return o_slc * g_slc[..., None] + o_cmp * g_cmp[..., None]

    def reference(self, q, k, v, g_cmp, g_slc):
        return ref.nsa(q, k, v, g_cmp, g_slc, self.block_size, self.block_counts,
                       ref.default_scale(q.shape[-1]))

    def flops(self, b, h, n, dk, dv):
        return fl.nsa_flops(b, h, n, dk, self.block_size, self.block_counts)


class RecurrentCore(nn.Module):
    """An fla operator on (B, H, N, D) q, k, v with seeded gates; ``kernel`` is fla's function (or,
    in tests, a stand-in with its signature)."""

    def __init__(self, op: Op, ctx: BuildContext, kernel=None):
        super().__init__()
        self.op, self.seed, self.kernel = op, ctx.seed, kernel
        self._gates: dict = {}
        self._stats: dict = {"layout": "(B,H,N,D) -> fla (B,N,H,D), copied in the call"}
        self.backward_status: tuple[str, str | None] = ("ok", None)

    def gates(self, b: int, n: int, heads: int, dk: int, dtype, device) -> dict:
        """The seeded gates for this call's shape, drawn on its first call (in ``dtype`` where the
        operator mixes them in) and reused by every later call and by the references; only the
        latest shape's are kept."""
        key = (b, n, heads, dk, str(device))
        if key not in self._gates:
            gen = torch.Generator(device=device).manual_seed(self.seed * 7919 + 0x61A7E)
            self._gates = {key: self.op.draw(b, n, heads, dk, dtype, gen, device)}
        return self._gates[key]

    def _split(self, q, k, v):
        if (kvh := self.op.kv_heads(q.shape[1])) != q.shape[1]:
            k, v = k[:, ::q.shape[1] // kvh], v[:, ::q.shape[1] // kvh]  # the group's first head
        return q, k, v

    def forward(self, q, k, v):
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if grad and self.backward_status[0] != "ok":
            status, why = self.backward_status
            if status == "refused":
                raise Unsupported(f"fla refuses the backward of {self.op.name} here: {why}")
            raise RuntimeError(f"the backward of {self.op.name} failed at build: {why}")
        q, k, v = self._split(q, k, v)
        b, h, n, d = q.shape
        gates = self.gates(b, n, h, d, q.dtype, q.device)
        # fla's kernels index (B, N, H, D) memory: the copy its input guard would make, made here
        out = self.op.kernel(self.kernel, *(heads_first(t).contiguous() for t in (q, k, v)), **gates)
        return heads_first(out).to(q.dtype)

    def exact_reference(self, q, k, v):
        """The operator itself in the inputs' precision (float64 for the harness), on the gates the
        kernel saw: what ``ref_rel_err`` and ``grad_rel_err`` compare with."""
        q, k, v = self._split(q, k, v)
        b, h, n, d = q.shape
        gates = self.gates(b, n, h, d, q.dtype, q.device)
        return self.op.reference(q, k, v, **{name: heads_first(t).to(q.dtype)
                                             for name, t in gates.items()})

    def naive(self, naive_fn, q, k, v):
        """fla's naive reference in fp32 on these (B, H, N, D) inputs and this module's gates."""
        q, k, v = self._split(q, k, v)
        b, h, n, d = q.shape
        gates = self.gates(b, n, h, d, q.dtype, q.device)
        out = self.op.naive(naive_fn, *(heads_first(t).float() for t in (q, k, v)),
                            **{name: t.float() for name, t in gates.items()})
        return heads_first(out)

    def stats(self) -> dict:
        return dict(self._stats)

    def flops(self, q, k, v) -> float:
        b, h, n, d = q.shape
        return self.op.flops(b, h, n, d, v.shape[-1])


def causal_only(p, ctx: BuildContext) -> str | None:
    if ctx.causal:
        return None
    return "causal by construction (a recurrence over positions): non-causal cells are not defined"


@dataclass(frozen=True)
class NsaParams:
    group: Literal[16, 32, 64] = 16  # query heads sharing one key/value head (fla: a power of 2 >= 16)
    block_size: Positive = 64  # positions per compressed / selected block
    block_counts: Positive = 16  # blocks each query attends to (the paper's 16)


def _nsa_shape(p: NsaParams, ctx: BuildContext) -> str | None:
    if ctx.heads % p.group:
        return f"heads={ctx.heads} must be a multiple of group={p.group} (NSA's GQA group)"
    if ctx.head_dim > 256:
        return f"head_dim={ctx.head_dim} > 256 (fla's NSA kernels)"
    return None


def _based_dim(p, ctx: BuildContext) -> str | None:
    return None if ctx.head_dim <= 128 else f"head_dim={ctx.head_dim} > 128 (fla's parallel_based)"


OWN = Limit(params={}, note="not an approximation: its own recurrence in float64 (exact_reference)")
COMMON = dict(family="recurrent", exact=False, approximates=None, causal=True, devices=("cuda",),
              requires=flaops.REQUIRES, install_hint=flaops.INSTALL_HINT, limit=OWN)


def build_core(op: Op, ctx: BuildContext) -> RecurrentCore:
    module = RecurrentCore(op, ctx)

    def inputs(b, n):
        g = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 29)
        return tuple(torch.randn((b, ctx.heads, n, ctx.head_dim), generator=g, device=ctx.device)
                     .to(ctx.dtype) for _ in range(3))

    flaops.prepare(module, module, ctx, inputs)
    return module


@register_method("gla", params=NoParams, constraints=(causal_only,), levels=("core",), **COMMON)
def build_gla(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Gated Linear Attention (fla chunk_gla): per-channel data-dependent decay."""
    return build_core(GlaOp(), ctx)


@register_method("deltanet", params=NoParams, constraints=(causal_only,), levels=("core",),
                 dtypes=("fp16", "bf16"), **COMMON)
def build_deltanet(p: NoParams, ctx: BuildContext) -> nn.Module:
    """DeltaNet (fla chunk_delta_rule): the delta rule with L2-normalised q, k."""
    return build_core(DeltaOp(), ctx)


@register_method("gated_deltanet", params=NoParams, constraints=(causal_only,), levels=("core",),
                 **COMMON)
def build_gated_deltanet(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Gated DeltaNet (fla chunk_gated_delta_rule): delta rule with a scalar decay."""
    return build_core(GatedDeltaOp(), ctx)


@register_method("retnet", params=NoParams, constraints=(causal_only,), **COMMON)
def build_retnet(p: NoParams, ctx: BuildContext) -> nn.Module:
    """RetNet retention (fla chunk_retention = simple GLA with fixed per-head decays)."""
    return build_core(RetentionOp(), ctx)


@register_method("based", params=NoParams, constraints=(causal_only, _based_dim), **COMMON)
def build_based(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Based (fla parallel_based): 2nd-order Taylor kernel attention, normalised."""
    return build_core(BasedOp(), ctx)


@register_method("fla_linear", params=NoParams, constraints=(causal_only,), **COMMON)
def build_fla_linear(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Causal elu+1 linear attention on fla's chunk_linear_attn (pairs with `linear`)."""
    return build_core(LinearOp(), ctx)


@register_method("nsa", params=NsaParams, constraints=(causal_only, _nsa_shape), levels=("core",),
                 **COMMON)
def build_nsa(p: NsaParams, ctx: BuildContext) -> nn.Module:
    """Native Sparse Attention (fla parallel_nsa): compressed + top-k selected blocks, GQA."""
    return build_core(NsaOp(p.group, p.block_size, p.block_counts), ctx)


from attnbench.methods.recurrent import layers  # noqa: E402,F401 - registers the *_layer methods
