"""Nyströmformer (Xiong et al., 2021). https://arxiv.org/abs/2102.03902

Softmax attention is approximated by the Nyström method with m landmarks, the means of m contiguous
segments of the queries and of the keys: softmax(QK̃ᵀ)·pinv(softmax(Q̃K̃ᵀ))·softmax(Q̃Kᵀ)·V, where the
m×m pseudo-inverse comes from the paper's iteration rather than an SVD.

Choices and omissions, all deliberate:

- n must be divisible by ``num_landmarks`` (a declared constraint, so such a cell becomes an
  ``unsupported`` row); we do not pad, because padded positions would change the segment means.
- The pseudo-inverse iteration is Razavi et al.'s, which the paper uses, started from
  Z₀ = Aᵀ/(‖A‖₁‖A‖∞) with the norms of each head's own m×m matrix (the official code takes one maximum
  over the whole batch). ``pinv = "exact"`` swaps in ``torch.linalg.pinv`` for ablations.
- The m×m landmark kernel, its pseudo-inverse and the m×d product it multiplies are computed in fp32
  (at least), so fp16/bf16 inputs work; the n×m and m×n parts stay in the input dtype.
- softmax(QK̃ᵀ)·M, with M = pinv·softmax(Q̃Kᵀ)V, is an attention call, SDPA(Q, K̃, M): the fused
  kernel never stores the (n, m) softmax matrix. softmax(Q̃Kᵀ)V, m landmark queries over all n keys,
  is an SDPA call too on CUDA in fp16/bf16, and in fp32 from :data:`FUSED_MIN_MATRICES` (batch·heads)
  on; below that two explicit products are faster, because the fp32 fused kernel parallelises over
  blocks of queries and m of them per head leave most of the GPU idle. On an H100 in fp32 (m = 256,
  8 heads), explicit vs fused: 0.048 vs 0.117 ms at n = 1024, batch 1; 0.88 vs 1.79 ms at n = 16384,
  batch 1; 0.15 vs 0.11 ms at n = 1024, batch 4; 3.53 vs 2.31 ms at n = 16384, batch 8. In fp16 the
  fused call was as fast or faster everywhere (0.15 vs 1.67 ms at n = 16384, batch 8).
  Where one call leaves the GPU idle (few batch·heads) and no gradient is needed, CUDA runs it
  instead over key ranges folded into the batch, merged by their log-sum-exps
  (:mod:`attnbench.methods.nystrom.split_keys`, whose rule picks the number of ranges): at batch 1, fp32,
  0.097 vs 0.238 ms (explicit) at n = 4096 and 0.31 vs 0.88 ms at 16384; fp16, 0.058 vs 0.143 ms
  (one call) at 16384. ``stats()["right"]`` says which of ``split``, ``sdpa``, ``explicit`` ran.
- Kernels (``kernel``) for the pseudo-inverse: ``torch`` (batched products, "cI − XY" as fused
  ``baddbmm``) and ``triton`` (:mod:`attnbench.methods.nystrom.nystrom_triton`: one launch per product with
  the cI in its epilogue, and the three products known to be symmetric computing half their tiles).
  ``auto`` runs ``triton`` on CUDA (where Triton is installed) from :data:`FUSED_MIN_MATRICES`
  matrices on, and torch below: at batch·heads 64 the Triton iteration took 1.19 ms against 1.66,
  but its 24 launches cost about 25 µs of CPU each, so with 8 matrices a call took 1.6 ms eager
  against torch's 1.0 ms (the layer at n = 1024, batch 1). A call being captured into a CUDA graph
  pays its launches' CPU once, at capture, so there ``auto`` takes ``triton`` at any count (0.48
  against 0.59 ms a replay for that layer); the module compiles those kernels when it is built, so
  that no compilation happens inside a capture. The Triton kernels are forward-only and fp32: a call
  that needs gradients, or float64, runs the torch path; ``stats()`` says which ran (the harness
  reports a captured call's differing stats as ``graph_*``, e.g. ``graph_ran``).
- ``graph_pinv`` (default on): an eager call on CUDA without gradients replays the pseudo-inverse from a
  CUDA graph the module captures on the first call of each shape (setup, like a compile), so the
  iteration's two dozen launches cost one launch of CPU time instead of about 25 µs each; being a
  capture, it takes the Triton products under ``auto``. The input is copied into the graph's static
  input and the result cloned out. ``stats()["pinv_graph"]`` says when a call replayed it. A call
  being captured by the caller, or one that needs gradients, runs the iteration directly.
- The official code adds a depthwise convolution of V along the sequence to the output; that is a
  residual branch, not attention, and is left out. There is no causal variant: landmarks average over
  the whole sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.kernels import triton_available, triton_interpreting
from attnbench.methods.nystrom.split_keys import choose_splits, split_key_attention
from attnbench.measure import capture_cuda_graph
from attnbench.params import NonNegative, Positive
from attnbench.registry import BuildContext, Limit, Unsupported, register_method

# batch·heads from which, on CUDA, fp32 softmax(Q̃Kᵀ)V is one SDPA call and ``auto`` runs the Triton
# pseudo-inverse (see above)
FUSED_MIN_MATRICES = 32


def capturing(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` is being captured into a CUDA graph (never off CUDA)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def iterative_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Approximate Moore–Penrose inverse of a batch of (m, m) matrices by the paper's iteration
    Z ← ¼Z(13I − AZ(15I − AZ(7I − AZ))), each "cI − X·Y" one fused baddbmm (seven kernels a step:
    a baddbmm with an input copies it into its output first)."""
    abs_a = a.abs()
    norm_1 = abs_a.sum(-2).amax(-1)  # max column sum, (B, H)
    norm_inf = abs_a.sum(-1).amax(-1)  # max row sum, (B, H)
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)[..., None, None]
    lead, m = a.shape[:-2], a.shape[-1]
    a3 = a.reshape(-1, m, m)  # baddbmm wants 3-d batches
    z = z.reshape(-1, m, m)
    eye = torch.eye(m, dtype=a.dtype, device=a.device)
    eye7 = eye * 7  # built once: 7I − AZ is then one launch a step
    eye = eye.expand_as(a3)
    for _ in range(iters):
        az = torch.bmm(a3, z)
        t = torch.baddbmm(eye, az, torch.baddbmm(eye, az, eye7 - az, beta=15, alpha=-1),
                          beta=13, alpha=-1)  # 13I − AZ(15I − AZ(7I − AZ))
        z = torch.baddbmm(z, z, t, beta=0, alpha=0.25)
    return z.reshape(*lead, m, m)


@dataclass(frozen=True)
class NystromParams:
    num_landmarks: Positive = 64  # m, segment-mean landmarks; n must be a multiple of m
    pinv_iters: NonNegative = 6  # iterations of the pseudo-inverse approximation (the paper uses 6)
    pinv: Literal["iterative", "exact"] = "iterative"  # exact = torch.linalg.pinv, for ablations
    kernel: Literal["auto", "triton", "torch"] = "auto"  # the iteration's products (auto: see above)
    graph_pinv: bool = True  # eager CUDA calls replay the pseudo-inverse from a CUDA graph (see above)


def default_kernel(p: NystromParams, ctx: BuildContext) -> str:
    """What ``kernel="auto"`` picks: the Triton products on CUDA where Triton is installed, else torch."""
    return "triton" if ctx.device.type == "cuda" and triton_available() else "torch"


def check_kernel(p: NystromParams, ctx: BuildContext) -> str | None:
    """``kernel="triton"`` needs Triton and CUDA (or the CPU interpreter), and the iteration."""
    if p.kernel != "triton":
        return None
    if not triton_available():
        return "unavailable: triton not installed (pip install triton)"
    if p.pinv != "iterative":
        return f"kernel='triton' runs the iterative pseudo-inverse, not pinv={p.pinv!r}"
    if ctx.device.type != "cuda" and not (ctx.device.type == "cpu" and triton_interpreting()):
        return f"kernel='triton' needs a CUDA device, not {ctx.device.type} (use kernel='auto')"
    return None


class NystromAttention(nn.Module):
    def __init__(self, p: NystromParams, ctx: BuildContext):
        super().__init__()
        if (why := check_kernel(p, ctx)) is not None:
            raise Unsupported(why)
        self.p = p
        self.kernel = default_kernel(p, ctx) if p.kernel == "auto" else p.kernel
        self._stats: dict = {"kernel": self.kernel}
        self.auto = p.kernel == "auto"
        self._pinv_graphs: dict = {}  # (shape, dtype, device) -> (graph, static in, static out, ran)
        # fp32 softmax(Q̃Kᵀ)V through SDPA from this many (batch, head) pairs on (fp16/bf16: always);
        # never off CUDA (tests set it)
        self.fused_min = FUSED_MIN_MATRICES if ctx.device.type == "cuda" else None
        # multiprocessors the key-range split of softmax(Q̃Kᵀ)V aims to fill; 0 = never split
        self.split_sms = (torch.cuda.get_device_properties(ctx.device).multi_processor_count
                          if ctx.device.type == "cuda" else 0)
        if (self.auto and self.kernel == "triton" and ctx.device.type == "cuda"
                and p.pinv == "iterative" and ctx.batch * ctx.heads < FUSED_MIN_MATRICES):
            self._compile_for_capture(ctx)

    def _compile_for_capture(self, ctx: BuildContext) -> None:
        """Compile the Triton pseudo-inverse that a CUDA-graph capture of this module will run (with
        few matrices eager calls run torch, so no eager call would have compiled it): one step on
        the identity, setup only."""
        from attnbench.methods.nystrom import nystrom_triton

        m = self.p.num_landmarks
        eye = torch.eye(m, device=ctx.device).expand(ctx.batch * ctx.heads, m, m)
        if nystrom_triton.unsupported_reason(eye) is None:
            nystrom_triton.iterative_pinv(eye, 1)

    def landmarks(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        b, h, n, d = x.shape
        m = self.p.num_landmarks
        return x.reshape(b, h, m, n // m, d).mean(-2, dtype=dtype)  # (B, H, m, D) segment means

    def pinv(self, kernel: torch.Tensor) -> torch.Tensor:
        """The (B, H, m, m) landmark kernel's pseudo-inverse, by the kernel this call can take; an
        eager CUDA call without gradients replays it from a CUDA graph (``graph_pinv``)."""
        if (self.p.graph_pinv and self.p.pinv == "iterative" and kernel.is_cuda
                and not capturing(kernel)
                and not (torch.is_grad_enabled() and kernel.requires_grad)):
            return self._graphed_pinv(kernel)
        self._stats["pinv_graph"] = None
        return self._pinv(kernel)

    def _graphed_pinv(self, kernel: torch.Tensor) -> torch.Tensor:
        """Replay the iteration from a CUDA graph captured on the first call of this shape (setup:
        warm-up on a side stream, then the capture, which takes the Triton products where ``auto``
        allows them, as any capture does). Its input is copied into the graph's static input and its
        output cloned out, so calls never share memory."""
        key = (tuple(kernel.shape), kernel.dtype, kernel.device)
        entry = self._pinv_graphs.get(key)
        if entry is None:
            static_in, held = kernel.clone(), {}

            def iterate():
                held["out"] = self._pinv(static_in)  # the last call is the capture's: its output

            graph = capture_cuda_graph(iterate, kernel.device, warmup=1)
            static_out = held["out"]
            if len(self._pinv_graphs) >= 4:
                self._pinv_graphs.clear()
            entry = self._pinv_graphs[key] = (graph, static_in, static_out, self._stats.get("ran"))
        graph, static_in, static_out, ran = entry
        static_in.copy_(kernel)
        graph.replay()
        self._stats.update(ran=ran, fallback=None, pinv_graph=True)
        return static_out.clone()

    def _pinv(self, kernel: torch.Tensor) -> torch.Tensor:
        if self.p.pinv == "exact":
            self._stats["ran"] = "torch"
            return torch.linalg.pinv(kernel)
        why = None
        if self.kernel == "triton":
            from attnbench.methods.nystrom import nystrom_triton

            grad = torch.is_grad_enabled() and kernel.requires_grad
            matrices = kernel.numel() // kernel.shape[-1] ** 2
            if grad:
                why = "gradients needed: the Triton kernels are forward-only"
            elif (self.auto and matrices < FUSED_MIN_MATRICES
                  and not capturing(kernel)):
                why = f"auto: {matrices} matrices < {FUSED_MIN_MATRICES}, where torch launches faster"
            else:
                why = nystrom_triton.unsupported_reason(kernel)
            if why is None:
                self._stats.update(ran="triton", fallback=None)
                return nystrom_triton.iterative_pinv(kernel, self.p.pinv_iters)
        self._stats.update(ran="torch", fallback=why)
        return iterative_pinv(kernel, self.p.pinv_iters)

    def right_kernel(self, q, k, v) -> tuple[str, int]:
        """How this call computes softmax(Q̃Kᵀ)V, and over how many key ranges: ``split`` (CUDA, no
        gradient, fp32/fp16/bf16, when the one-call kernels would leave the GPU idle), ``sdpa``
        (fp16/bf16 on CUDA, or fp32 from ``fused_min`` matrices) or ``explicit`` (two products)."""
        if self.fused_min is None or q.dtype == torch.float64:
            return "explicit", 1
        b, h, n = q.shape[0], q.shape[1], k.shape[-2]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if self.split_sms and not needs_grad:
            splits = choose_splits(b * h, self.p.num_landmarks, n, self.split_sms, q.dtype)
            if splits > 1:
                return "split", splits
        return ("sdpa" if q.dtype != torch.float32 or b * h >= self.fused_min else "explicit"), 1

    def forward(self, q, k, v):
        scale = 1.0 / math.sqrt(q.shape[-1])
        acc = torch.promote_types(q.dtype, torch.float32)
        q_land, k_land = self.landmarks(q, acc), self.landmarks(k, acc)
        kernel = torch.softmax((q_land @ k_land.transpose(-1, -2)) * scale, dim=-1)  # (B, H, m, m)
        inv = self.pinv(kernel)
        # softmax(Q̃Kᵀ)·V: m landmark queries over all n keys (see the module docstring for the choice)
        how, splits = self.right_kernel(q, k, v)
        self._stats["right"] = how
        if how == "split":
            right_v = split_key_attention(q_land.to(q.dtype), k, v, scale, splits)  # (B, H, m, D)
        elif how == "sdpa":
            right_v = F.scaled_dot_product_attention(q_land.to(q.dtype), k, v)  # (B, H, m, D)
        else:
            right = torch.softmax(q_land.mul(scale).to(q.dtype) @ k.transpose(-1, -2), dim=-1)
            right_v = right @ v  # (B, H, m, D), right is (B, H, m, N)
        middle = inv @ right_v.to(acc)  # (B, H, m, D)
        # softmax(QK̃ᵀ)·M: the n queries over the m landmark keys with M as values, one fused SDPA call
        # that never stores the (N, m) softmax matrix
        return F.scaled_dot_product_attention(q, k_land.to(q.dtype), middle.to(q.dtype))  # (B, H, N, D)

    def stats(self) -> dict:
        """``kernel``: what the build picked; ``ran``: what the last call's pseudo-inverse ran (with
        ``fallback`` saying why a Triton module ran torch); ``right``: how softmax(Q̃Kᵀ)V ran."""
        return {k: v for k, v in self._stats.items() if v is not None}

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        m = self.p.num_landmarks
        pinv = 0 if self.p.pinv == "exact" else self.p.pinv_iters * 4 * 2 * m ** 3
        return b * h * (4 * 2.0 * n * m * d + 2.0 * m * m * (d + m) + pinv)


def _landmark_constraint(p: NystromParams, ctx: BuildContext) -> str | None:
    if p.num_landmarks < 1 or p.pinv_iters < 0:
        return f"invalid knobs: num_landmarks={p.num_landmarks}, pinv_iters={p.pinv_iters}"
    if p.num_landmarks > ctx.n or ctx.n % p.num_landmarks:
        return f"n={ctx.n} must be a multiple of num_landmarks={p.num_landmarks} (no padding)"
    return None


# landmarks = n: the landmarks are the tokens, so the output is A·pinv(A)·A·V = A·V with A the softmax
# attention matrix; the exact pseudo-inverse leaves only rounding (the iterative one would converge).
LIMIT = Limit(params=lambda ctx: {"num_landmarks": ctx.n, "pinv": "exact"},
              note="num_landmarks = n with the exact pseudo-inverse: A·pinv(A)·A·V = A·V")


def _rank(p: NystromParams, stats: dict, head_dim: int) -> int:
    """softmax(QK̃ᵀ)·pinv·softmax(Q̃Kᵀ) factors through m landmarks: rank at most m."""
    return int(p.num_landmarks)


@register_method("nystrom", family="landmark", exact=False, params=NystromParams, causal=False,
                 constraints=(_landmark_constraint, check_kernel), budget="num_landmarks",
                 limit=LIMIT, rank=_rank)
def build_nystrom(p: NystromParams, ctx: BuildContext) -> nn.Module:
    """Nyströmformer: segment-mean landmarks and an iterative pseudo-inverse, O(n·m·d)."""
    return NystromAttention(p, ctx)
