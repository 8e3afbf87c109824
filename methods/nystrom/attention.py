"""Nyströmformer's module and params (Xiong et al., 2021, https://arxiv.org/abs/2102.03902).

q, k, v (B, H, N, D) -> (B, H, N, D) as softmax(QK̃ᵀ)·pinv(softmax(Q̃K̃ᵀ))·softmax(Q̃Kᵀ)·V with m
segment-mean landmarks Q̃, K̃ (B, H, m, D); the (B, H, m, m) kernel and its pseudo-inverse in fp32.
Each call picks its kernels: the pseudo-inverse in torch or Triton (replayed from a CUDA graph on
eager CUDA calls), softmax(Q̃Kᵀ)V as two products, one SDPA call or key ranges merged by
log-sum-exp; ``stats()`` says which ran. Why and when: results/README.md, "Notes from the method
modules".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.kernels import triton_available, triton_interpreting
from attnbench.measure import capture_cuda_graph
from attnbench.methods.nystrom.pinv import iterative_pinv
from attnbench.methods.nystrom.split_keys import choose_splits, split_key_attention
from attnbench.params import NonNegative, Positive
from attnbench.registry import BuildContext, Unsupported

# batch·heads from which, on CUDA, fp32 softmax(Q̃Kᵀ)V is one SDPA call and ``auto`` runs the Triton
# pseudo-inverse (results/README.md, "Notes from the method modules")
FUSED_MIN_MATRICES = 32


def capturing(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` is being captured into a CUDA graph (never off CUDA)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


@dataclass(frozen=True)
class NystromParams:
    num_landmarks: Positive = 64  # m, segment-mean landmarks; n must be a multiple of m
    pinv_iters: NonNegative = 6  # iterations of the pseudo-inverse approximation (the paper uses 6)
    pinv: Literal["iterative", "exact"] = "iterative"  # exact = torch.linalg.pinv, for ablations
    kernel: Literal["auto", "triton", "torch"] = "auto"  # the iteration's products (auto: results/README.md)
    graph_pinv: bool = True  # eager CUDA calls replay the pseudo-inverse from a CUDA graph


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
        # softmax(Q̃Kᵀ)·V: m landmark queries over all n keys (the choice: results/README.md's notes)
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
