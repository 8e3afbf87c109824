"""Exact softmax attention context-parallel over G processes, one GPU each: ring attention (Liu et
al., 2023, https://arxiv.org/abs/2310.01889) through PyTorch's ``context_parallel``.

The sequence is cut into 2G chunks and rank r holds chunks r and 2G-1-r, so every rank does the same
causal work; each rank computes its queries against every key and the output is assembled on every
rank (:mod:`attnbench.context_parallel` has the layout, both implementations and the counts).

``sdpa_cp`` runs only in a process group (``torchrun --nproc-per-node G -m attnbench.cp_run SUITE``):
in the ordinary single-process harness its cells are ``unsupported`` with that launch line.
``impl``: ``ring`` is torch's ring attention (CUDA with NCCL, causal, forward only); ``allgather``
gathers K and V on every rank (any device, causal or not, with a backward); ``auto`` takes ``ring``
where it applies and ``allgather`` elsewhere. Rows carry the communication volume per rank
(``stats``: ``cp_kv_bytes``, ``cp_out_bytes``, ``cp_bwd_bytes``, ``cp_comm_bytes``) and the per-rank
shard size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attnbench import context_parallel as cp
from attnbench.flops import attention_flops
from attnbench.registry import BuildContext, Unsupported, register_method

Impl = Literal["auto", "ring", "allgather"]
Rotate = Literal["allgather", "alltoall"]
CPU_RING = ("torch's ring attention dispatches only CUDA kernels (flash, efficient, cuDNN); on "
            "the CPU its SDPA fails with 'Operator "
            "aten._scaled_dot_product_flash_attention_for_cpu.default does not have a sharding "
            "strategy registered'; use impl = allgather")


@dataclass(frozen=True)
class SdpaCpParams:
    impl: Impl = "auto"  # ring: torch's context_parallel (CUDA, causal, fwd); allgather: K/V gathered
    # on every rank (any device, causal or not, fwd and bwd); auto: ring where it applies
    rotate: Rotate = "allgather"  # ring only: how torch passes K/V shards (its set_rotate_method)


def resolve_impl(p: SdpaCpParams, ctx: BuildContext, group: cp.Group) -> str:
    if p.impl != "auto":
        return p.impl
    ring = ctx.device.type == "cuda" and ctx.causal and "nccl" in group.backend
    return "ring" if ring else "allgather"


def _group_fits(p: SdpaCpParams, ctx: BuildContext) -> str | None:
    """The process group, the device and n agree (checked when cells are planned)."""
    group = cp.current_group()
    if group is None:
        return cp.no_group_reason()
    if (why := cp.check_divisible(ctx.n, group.world)) is not None:
        return why
    needs = {"cuda": "nccl", "cpu": "gloo"}[ctx.device.type]
    if needs not in group.backend:
        return (f"the process group's backend is {group.backend}; {ctx.device.type} tensors need "
                f"{needs} (cp_run picks it from --device)")
    impl = resolve_impl(p, ctx, group)
    if impl == "ring" and ctx.device.type != "cuda":
        return CPU_RING
    if impl == "ring" and not ctx.causal:
        return ("impl = ring: torch's context_parallel balances load for causal masks and refuses "
                "non-causal SDPA ('Load balancing requires is_causal=True'); use impl = allgather")
    return None


class ContextParallelAttention(nn.Module):
    """forward(q, k, v): (B, H, N, D) on every rank -> the full (B, H, N, D) output on every rank,
    computed one shard per rank."""

    def __init__(self, impl: str, rotate: str, causal: bool, group: cp.Group, mesh=None):
        super().__init__()
        self.impl, self.rotate, self.causal = impl, rotate, causal
        self.group, self.mesh = group, mesh
        self._last: tuple | None = None  # (shape, element size, any call with a backward)

    def forward(self, q, k, v):
        rank, world = self.group.rank, self.group.world
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        # a fwd_bwd cell also makes forward-only calls (its output check): stats keep the backward
        before = bool(self._last and self._last[2])
        self._last = (tuple(q.shape), q.element_size(), backward or before)
        if self.impl == "allgather":
            return cp.allgather_attention(q, k, v, rank=rank, world=world, causal=self.causal)
        if backward:
            raise Unsupported("impl = ring is forward only: torch's ring attention needs its "
                              "context entered through the backward too; impl = allgather has one")
        return cp.ring_attention(q, k, v, mesh=self.mesh, rank=rank, world=world,
                                 causal=self.causal, rotate=self.rotate)

    def flops(self, q, k, v):
        """Forward FLOPs of this rank's share (the same on every rank): per-GPU FLOP/s."""
        b, h, n, d = q.shape
        world = self.group.world
        pairs = cp.causal_pairs(n, self.group.rank, world) if self.causal else n * n // world
        return attention_flops(b, h, d, pairs, v.shape[-1])

    def stats(self) -> dict:
        g = self.group
        out = {"cp_world_size": g.world, "cp_impl": self.impl, "cp_backend": g.backend,
               "cp_layout": cp.LAYOUT}
        if self.impl == "ring":
            out["cp_rotate"] = self.rotate
        if self._last is None:
            return out
        shape, size, backward = self._last
        b, h, n, d = shape
        full_kv = 2 * b * h * n * d * size  # K and V over the whole sequence
        held = full_kv if (self.impl == "allgather" or self.rotate == "allgather") \
            else 2 * full_kv // g.world  # alltoall: the shards in hand and the ones arriving
        out.update(cp_shard_tokens=n // g.world,
                   cp_pairs_per_rank=cp.causal_pairs(n, g.rank, g.world) if self.causal
                   else n * n // g.world,
                   cp_shard_mib=cp.shard_mib(shape, size, g.world),
                   cp_kv_buffer_mib=cp.mib(held),
                   **cp.comm_bytes(shape, size, g.world, backward=backward))
        return out


@register_method("sdpa_cp", family="exact", exact=True, params=SdpaCpParams,
                 constraints=(_group_fits,), available=cp.no_group_reason,
                 decode_note="context parallelism splits a long prefill over GPUs; a decode step "
                             "attends one query and is not split")
def build_sdpa_cp(p: SdpaCpParams, ctx: BuildContext) -> nn.Module:
    """Exact attention context-parallel over G ranks, one sequence shard each (torchrun -m
    attnbench.cp_run): torch's ring attention on CUDA, all-gathered K/V elsewhere."""
    group = cp.current_group()
    if group is None:  # built directly, bypassing the registry's checks
        raise Unsupported(cp.no_group_reason())
    impl = resolve_impl(p, ctx, group)
    mesh = None
    if impl == "ring":
        mesh = cp.device_mesh(ctx.device.type, group.world)
        if not cp.torch_layout_matches(mesh, ctx.n, ctx.device):
            raise Unsupported(f"this torch's context_parallel shards n={ctx.n} otherwise than the "
                              f"{cp.LAYOUT} layout (rank r: chunks r and 2G-1-r); the output "
                              "could not be assembled")
    return ContextParallelAttention(impl, p.rotate, ctx.causal, group, mesh)
