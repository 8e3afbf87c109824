"""Context parallelism: exact softmax attention over the G ranks of a process group, each holding a
shard of the sequence (ring attention: Liu et al., 2023, https://arxiv.org/abs/2310.01889).

Layout (the head-tail load balancing ring attention uses for causal masks, the order of torch's
``_HeadTailLoadBalancer``): the sequence of n positions is cut into 2G chunks of c = n / 2G; rank r
holds chunks r and 2G-1-r, one from the head and one from the tail, concatenated. Under a causal mask
a query at position p scores p + 1 keys, so chunk j costs c·(j·c) + c(c+1)/2 pairs and every rank's
two chunks cost the same, c²(2G-1) + c(c+1), where a contiguous split leaves the last rank about
2G-1 times the first one's work (:func:`causal_pairs`).

Two ways to compute it, both exact and both returning the full (B, H, N, D) output on every rank:

- ``ring`` (CUDA, NCCL): PyTorch's ``context_parallel`` shards q, k, v with that layout and turns
  ``scaled_dot_product_attention`` into ring attention (K/V shards passed around while flash or
  efficient attention runs on each block, partial results merged by their log-sum-exp); forward only.
- ``allgather`` (any device, gloo or NCCL): every rank all-gathers the K and V shards and attends its
  two query chunks to keys 0..(j+1)c-1 with the causal mask aligned to the bottom right (the chunk's
  queries sit at the end of that key range). Differentiable: gradients flow back to the shards.

The harness hands every rank the same full q, k, v and wants the full output back, so each path takes
its rank's shard first (no communication) and assembles the output at the end (an all-gather of the
output shards, :func:`assemble`); the backward treats the inputs and the output as replicated.

Communication per rank and call (:func:`comm_bytes`, analytic): both paths move G-1 K shards and G-1
V shards into every rank and each rank's own shards out to the others (a ring of G-1 steps, or one
all-gather); the assembly moves G-1 output shards; the allgather path's backward reduce-scatters the
K/V gradients (2(G-1) shards) and all-gathers the q, k, v gradients (3(G-1) shards).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

LAYOUT = "head-tail"  # what rows call the layout: rank r holds chunks r and 2G-1-r of 2G
LAUNCH = "torchrun --nproc-per-node G -m attnbench.cp_run SUITE --device cuda"


# the layout: pure functions of n, rank and world size

def check_divisible(n: int, world: int) -> str | None:
    """Why n cannot be cut into 2·world equal chunks, or None."""
    if world < 1:
        return f"world size {world}: expected at least 1 rank"
    if n % (2 * world):
        return (f"n={n} must be a multiple of 2G={2 * world} (the sequence is cut into 2G equal "
                f"chunks, two per rank)")
    return None


def chunk_size(n: int, world: int) -> int:
    if (why := check_divisible(n, world)) is not None:
        raise ValueError(why)
    return n // (2 * world)


def rank_chunks(rank: int, world: int) -> tuple[int, int]:
    """The two chunk indices rank ``rank`` holds: one from the head, one from the tail."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank}: expected 0 <= rank < {world}")
    return rank, 2 * world - 1 - rank


def rank_positions(n: int, rank: int, world: int) -> torch.Tensor:
    """The sequence positions rank ``rank`` holds, in its local order: (2c,) int64."""
    c = chunk_size(n, world)
    return torch.cat([torch.arange(j * c, (j + 1) * c) for j in rank_chunks(rank, world)])


def layout(n: int, world: int) -> torch.Tensor:
    """Every rank's positions, rank after rank: the permutation applied before an even split
    (torch's ``_HeadTailLoadBalancer._generate_indices()[0]``)."""
    return torch.cat([rank_positions(n, r, world) for r in range(world)])


def shard(x: torch.Tensor, rank: int, world: int, dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s part of ``x`` along ``dim`` (the sequence axis of (B, H, N, D)): its two
    chunks, concatenated (a new tensor of 2c positions)."""
    c = chunk_size(x.shape[dim], world)
    return torch.cat([x.narrow(dim, j * c, c) for j in rank_chunks(rank, world)], dim)


def unshard(shards: Sequence[torch.Tensor], dim: int = 2) -> torch.Tensor:
    """The inverse of :func:`shard`: every rank's part (in rank order) back in sequence order."""
    world = len(shards)
    c = shards[0].shape[dim] // 2
    pieces: list[torch.Tensor | None] = [None] * (2 * world)
    for r, part in enumerate(shards):
        head, tail = rank_chunks(r, world)
        pieces[head], pieces[tail] = part.narrow(dim, 0, c), part.narrow(dim, c, c)
    return torch.cat(pieces, dim)  # type: ignore[arg-type]


def causal_pairs(n: int, rank: int, world: int) -> int:
    """(query, key) pairs rank ``rank`` scores under a causal mask: position p sees p + 1 keys."""
    return int((rank_positions(n, rank, world) + 1).sum())


# communication and memory, analytic

def comm_bytes(shape: Sequence[int], element_size: int, world: int, *,
               backward: bool = False) -> dict:
    """Bytes one rank sends (and, these collectives being symmetric, receives) per call, for q, k, v
    of ``shape`` (B, H, N, D): K/V shards, output assembly and, with ``backward``, the gradients."""
    b, h, n, d = shape
    shard_bytes = b * h * (n // world) * d * element_size  # one tensor's shard: 2c positions
    out = {"cp_kv_bytes": 2 * (world - 1) * shard_bytes,
           "cp_out_bytes": (world - 1) * shard_bytes}
    if backward:  # dK, dV reduce-scattered to their owners; dq, dk, dv all-gathered (replicated)
        out["cp_bwd_bytes"] = (2 + 3) * (world - 1) * shard_bytes
    out["cp_comm_bytes"] = sum(out.values())
    return out


# collectives that know their gradients (replicated inputs and output, sharded work)

def _gather(x: torch.Tensor, world: int, group) -> list[torch.Tensor]:
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return parts


class _ShardReplicated(torch.autograd.Function):
    """Forward: this rank's shard of a tensor every rank holds whole. Backward: the full gradient,
    assembled from every rank's shard gradient (so each rank ends with the same, whole gradient)."""

    @staticmethod
    def forward(ctx, x, rank, world, group):
        ctx.world, ctx.group = world, group
        return shard(x, rank, world)

    @staticmethod
    def backward(ctx, grad):
        return unshard(_gather(grad, ctx.world, ctx.group)), None, None, None


class _GatherSummed(torch.autograd.Function):
    """Forward: every rank's shard, in sequence order (the K or V every rank attends to). Backward:
    each rank's shard of the sum of all ranks' gradients (a reduce-scatter: every rank used it)."""

    @staticmethod
    def forward(ctx, x, rank, world, group):
        ctx.rank, ctx.world, ctx.group = rank, world, group
        return unshard(_gather(x, world, group))

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        parts = [shard(grad, r, ctx.world).contiguous() for r in range(ctx.world)]
        mine = torch.empty_like(parts[ctx.rank])
        dist.reduce_scatter(mine, parts, group=ctx.group)
        return mine, None, None, None


class _Assemble(torch.autograd.Function):
    """Forward: the full output from every rank's output shard. Backward: this rank's shard of the
    gradient (the output is replicated: every rank holds the same one, with the same gradient)."""

    @staticmethod
    def forward(ctx, x, rank, world, group):
        ctx.rank, ctx.world = rank, world
        return unshard(_gather(x, world, group))

    @staticmethod
    def backward(ctx, grad):
        return shard(grad, ctx.rank, ctx.world), None, None, None


def assemble(out_shard: torch.Tensor, rank: int, world: int, group=None) -> torch.Tensor:
    """The full (B, H, N, D) output on every rank from each rank's (B, H, 2c, D) shard."""
    return _Assemble.apply(out_shard, rank, world, group)


def local_causal_attention(q_shard, k_seq, v_seq, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s two query chunks against keys in sequence order: chunk j sees keys
    0..(j+1)c-1, the last c of them under a causal mask aligned to the bottom right."""
    from torch.nn.attention.bias import causal_lower_right

    c = q_shard.shape[2] // 2
    outs = []
    for slot, j in enumerate(rank_chunks(rank, world)):
        end = (j + 1) * c
        q_j = q_shard.narrow(2, slot * c, c)  # (B, H, c, D) at positions j·c .. end-1
        outs.append(F.scaled_dot_product_attention(
            q_j, k_seq[:, :, :end], v_seq[:, :, :end], attn_mask=causal_lower_right(c, end)))
    return torch.cat(outs, 2)  # (B, H, 2c, D)


def allgather_attention(q, k, v, *, rank: int, world: int, causal: bool, group=None):
    """Exact attention of the full q, k, v (B, H, N, D) held by every rank: each rank computes its
    query shard against all-gathered K and V; the full output comes back on every rank."""
    q_s, k_s, v_s = (_ShardReplicated.apply(t, rank, world, group) for t in (q, k, v))
    k_seq = _GatherSummed.apply(k_s, rank, world, group)  # (B, H, N, D), sequence order
    v_seq = _GatherSummed.apply(v_s, rank, world, group)
    if causal:
        out = local_causal_attention(q_s, k_seq, v_seq, rank, world)
    else:
        out = F.scaled_dot_product_attention(q_s, k_seq, v_seq)  # (B, H, 2c, D)
    return assemble(out, rank, world, group)


# PyTorch's ring attention (CUDA)

def _cp_api():
    """torch's context-parallel entry points (a prototype API; present in torch 2.7 and later)."""
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    return context_parallel, set_rotate_method


def torch_layout_matches(mesh, n: int, device: torch.device) -> bool:
    """Whether ``context_parallel`` gives this rank the positions :func:`rank_positions` says, for a
    sequence of n (it shards a buffer holding each position's index and looks)."""
    context_parallel, _ = _cp_api()
    probe = torch.arange(n, device=device, dtype=torch.float32).view(1, 1, n, 1)
    with context_parallel(mesh, buffers=[probe], buffer_seq_dims=[2], no_restore_buffers={probe}):
        got = probe.flatten().long().cpu()
    return torch.equal(got, rank_positions(n, mesh.get_local_rank(), mesh.size()))


def ring_attention(q, k, v, *, mesh, rank: int, world: int, causal: bool, rotate: str):
    """Exact attention through torch's ``context_parallel`` (ring attention; CUDA flash, efficient or
    cuDNN kernels only): it shards copies of q, k, v in place, runs SDPA as a ring, and the
    output shards are assembled here. Forward only."""
    context_parallel, set_rotate_method = _cp_api()
    set_rotate_method(rotate)
    bufs = [t.detach().clone() for t in (q, k, v)]  # sharded in place: never the caller's tensors
    with context_parallel(mesh, buffers=bufs, buffer_seq_dims=[2, 2, 2],
                          no_restore_buffers=set(bufs)):
        out = F.scaled_dot_product_attention(*bufs, is_causal=causal)  # (B, H, 2c, D), ring
    return assemble(out, rank, world, mesh.get_group())


# the process group

@dataclass(frozen=True)
class Group:
    rank: int
    world: int
    backend: str


def current_group() -> Group | None:
    """This process's rank, the world size and the backend, or None without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return Group(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def no_group_reason() -> str | None:
    """Why context parallelism cannot run in this process (no process group), or None."""
    import torch.distributed as dist

    if not dist.is_available():
        return "unavailable: this torch build has no torch.distributed"
    if not dist.is_initialized():
        return f"unavailable: needs a process group (one rank per GPU): {LAUNCH}"
    return None


_MESHES: dict = {}


def device_mesh(device_type: str, world: int):
    """One 1-D DeviceMesh over the whole group per device type (built once per process)."""
    if (device_type, world) not in _MESHES:
        from torch.distributed.device_mesh import init_device_mesh

        _MESHES[(device_type, world)] = init_device_mesh(device_type, (world,))
    return _MESHES[(device_type, world)]


def mib(nbytes: float) -> float:
    return nbytes / 2**20


def shard_mib(shape: Sequence[int], element_size: int, world: int) -> float:
    """MiB of one rank's q, k, v and output shards: what a rank holds of the sequence itself."""
    b, h, n, d = shape
    return mib(4 * b * h * math.ceil(n / world) * d * element_size)
