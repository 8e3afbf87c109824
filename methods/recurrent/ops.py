"""The fla-core operators of the recurrent family as the harness calls them, one ``Op`` each.

``gla``: Gated Linear Attention (https://arxiv.org/abs/2312.06635), ``chunk_gla``. ``deltanet``:
DeltaNet (https://arxiv.org/abs/2102.11174; parallelised, https://arxiv.org/abs/2406.06484),
``chunk_delta_rule``. ``gated_deltanet``: Gated DeltaNet (https://arxiv.org/abs/2412.06464),
``chunk_gated_delta_rule``. ``retnet``: RetNet's retention (https://arxiv.org/abs/2307.08621),
``chunk_retention``. ``based``: Based (https://arxiv.org/abs/2402.18668), ``parallel_based``.
``fla_linear``: elu+1 linear attention (https://arxiv.org/abs/2006.16236), ``chunk_linear_attn``.
``nsa``: Native Sparse Attention (https://arxiv.org/abs/2502.11089), ``parallel_nsa``.

Each ``Op`` calls fla's kernel and fla's naive reference on q, k, v in fla's (B, N, H, D) layout,
draws its seeded gates (laws: results/README.md, "Notes from the method modules"), and gives the
operator itself on our (B, H, N, D) layout for the float64 reference (:mod:`attnbench.recurrences`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench import flaops
from attnbench import flops as fl
from attnbench import recurrences as ref


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

