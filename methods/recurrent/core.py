"""The recurrent family's core-level module (fla-core's kernels; GLA, https://arxiv.org/abs/2312.06635,
and the others of :mod:`attnbench.methods.recurrent.ops`) and what its registrations share.

``RecurrentCore`` runs an ``Op`` on q, k, v (B, H, N, D), copied to fla's (B, N, H, D) layout inside
the call, with gates drawn once per cell and shape; ``build_core`` checks fla's kernel against fla's
naive reference and autotunes it before anything is timed. Every method of the family is causal by
construction (``causal_only``) and approximates nothing: its limit is its own float64 recurrence
(``OWN``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attnbench import flaops
from attnbench.methods.recurrent.ops import Op, heads_first
from attnbench.params import Positive
from attnbench.registry import BuildContext, Limit, Unsupported


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
        # q, k, v arrive from projections: in the autocast dtype where the cell runs under one
        return tuple(torch.randn((b, ctx.heads, n, ctx.head_dim), generator=g, device=ctx.device)
                     .to(ctx.work_dtype) for _ in range(3))

    flaops.prepare(module, module, ctx, inputs)
    return module

