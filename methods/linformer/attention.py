"""Linformer's module, params and constraints (Wang et al., 2020, https://arxiv.org/abs/2006.04768).

``LinformerAttention``: q (B, H, N, D), k and v (B, H, m ≤ n, D) -> (B, H, N, D). Keys and values are
projected along the sequence to (B, H, k, D) by E, F (k, n) (per head: (H, k, n)), by mean or max
pooling over windows of n/k positions, or by a tied depthwise convolution (``conv``), shared as
``sharing`` says; then SDPA runs over the k rows. ``kernel="triton"`` runs the forward in
:mod:`attnbench.methods.linformer.linformer_triton` where it applies. The projections, sharing,
shorter inputs and the kernel choice: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.kernels import triton_available, triton_interpreting
from attnbench.methods.linformer.layout import merged_heads, project_merged, shared_bmm
from attnbench.params import Positive
from attnbench.registry import BuildContext, Unsupported

Projection = Literal["linear", "random", "mean_pool", "max_pool", "conv"]
Sharing = Literal["none", "headwise", "kv", "layerwise"]
Kernel = Literal["auto", "triton", "torch"]
POOLED = ("mean_pool", "max_pool", "conv")  # windowed projections: need n divisible by k
LEARNED = ("linear", "conv")
MATRIX = ("linear", "random")  # (k, n) projections: the ones the Triton kernels take


@dataclass(frozen=True)
class LinformerParams:
    k: Positive = 256                       # projected length (rows of E·K and F·V)
    projection: Projection = "linear"  # linear | random | mean_pool | max_pool | conv
    sharing: Sharing = "headwise"      # none | headwise | kv | layerwise
    freeze: bool = False               # linear/conv only: keep E, F fixed (requires_grad False)
    k_schedule: tuple[Positive, ...] = ()   # per-layer k (layer i uses k_schedule[i]); () = k everywhere
    kernel: Kernel = "auto"            # auto = torch; triton wins only on large cores (results/README.md)


def layer_k(p: LinformerParams, layer: int) -> int:
    """The projected length of ``layer``: its entry in ``k_schedule``, or ``k`` when there is none."""
    return p.k_schedule[layer] if p.k_schedule else p.k


def check_schedule(p: LinformerParams, ctx: BuildContext) -> str | None:
    if not p.k_schedule:
        return None
    if len(p.k_schedule) != ctx.num_layers:
        return (f"k_schedule has {len(p.k_schedule)} entries but the model has "
                f"num_layers={ctx.num_layers}; give one k per layer")
    if p.sharing == "layerwise" and len(set(p.k_schedule)) > 1:
        return (f"sharing='layerwise' uses one (k, n) matrix in every layer, which cannot have the "
                f"different k of k_schedule={p.k_schedule}")
    return None


def check_k(p: LinformerParams, ctx: BuildContext) -> str | None:
    if check_schedule(p, ctx) is not None:
        return None  # reported by check_schedule; layer_k would be meaningless
    k = layer_k(p, ctx.layer)
    where = f" (layer {ctx.layer} of k_schedule)" if p.k_schedule else ""
    if k < 1:
        return f"k={k}{where} must be positive"
    if k >= ctx.n:
        return f"k={k}{where} must be smaller than n={ctx.n}: projecting to k >= n saves nothing"
    if p.projection in POOLED and ctx.n % k:
        return (f"projection={p.projection!r} uses window = stride = n/k, so n={ctx.n} must be "
                f"divisible by k={k}{where}")
    return None


def check_kernel(p: LinformerParams, ctx: BuildContext) -> str | None:
    """``kernel="triton"`` needs Triton, a matrix projection, and CUDA (or the CPU interpreter)."""
    if p.kernel != "triton":
        return None
    if not triton_available():
        return "unavailable: triton not installed (pip install triton)"
    if p.projection not in MATRIX:
        return (f"kernel='triton' covers the matrix projections {MATRIX}, not "
                f"projection={p.projection!r} (use kernel='torch' or 'auto')")
    if ctx.device.type != "cuda" and not (ctx.device.type == "cpu" and triton_interpreting()):
        return (f"kernel='triton' needs a CUDA device, not {ctx.device.type} "
                f"(on CPU only under TRITON_INTERPRET=1)")
    return None


def resolve_kernel(p: LinformerParams, ctx: BuildContext) -> str:
    """``triton`` or ``torch`` for ``p.kernel``; ``auto`` is ``torch``, measured the faster of the two
    (results/README.md, "Notes from the method modules")."""
    return "torch" if p.kernel == "auto" else p.kernel


CONSTRAINTS = (check_schedule, check_k, check_kernel)


def _xavier(shape: tuple[int, ...], fan_in: int, fan_out: int, gain: float,
            g: torch.Generator) -> torch.Tensor:
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound


def _pool(x: torch.Tensor, w: int, kind: str) -> torch.Tensor:
    """Mean or max over windows of ``w`` positions, stride ``w``; a short last window pools what it has."""
    n = x.shape[-2]
    full = n // w * w
    reduce = torch.mean if kind == "mean_pool" else torch.amax
    parts = []
    if full:
        parts.append(reduce(x[..., :full, :].unflatten(-2, (full // w, w)), dim=-2))  # (B, H, n/w, D)
    if full < n:
        parts.append(reduce(x[..., full:, :], dim=-2, keepdim=True))  # (B, H, 1, D)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)


def _conv(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Tied depthwise convolution along the sequence, kernel = stride = w; ``c`` is (w,) or (H, w).

    Written as a matmul over window views, not einsum or padding, which would copy all of ``x``. An
    input shorter than the built n with a partial last window still copies its full windows once.
    """
    w = c.shape[-1]
    n = x.shape[-2]
    full = n // w * w
    filt = c.reshape(-1, 1, 1, w)  # (1 or H, 1, 1, w), broadcast over (B, H, n/w, w, D)
    parts = []
    if full:
        windows = x[..., :full, :].unflatten(-2, (full // w, w))  # (B, H, n/w, w, D)
        parts.append((filt @ windows).squeeze(-2))  # (B, H, n/w, D)
    if full < n:
        # A short last window: the filter's tail would meet zeros, so only its head is used.
        parts.append(filt[:, 0, :, : n - full] @ x[..., full:, :])  # (B, H, 1, D)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)


class LinformerAttention(nn.Module):
    """forward(q, k, v): (B, H, N, D) -> (B, H, N, D), keys/values of length ≤ the built n.

    Built directly, it accepts k = n (the identity limits the tests need) and ``causal=True`` (which
    masks after the projection and is therefore not causal; results/README.md's notes).
    """

    def __init__(self, p: LinformerParams, ctx: BuildContext, *, causal: bool = False):
        super().__init__()
        if (why := check_schedule(p, ctx)) is not None:
            raise Unsupported(why)
        self.k = layer_k(p, ctx.layer)
        if not 1 <= self.k <= ctx.n:
            raise Unsupported(f"k={self.k} must be between 1 and n={ctx.n}")
        if p.projection in POOLED and ctx.n % self.k:
            raise Unsupported(f"projection={p.projection!r} needs n={ctx.n} divisible by k={self.k}")
        if (why := check_kernel(p, ctx)) is not None:
            raise Unsupported(why)
        self.kernel = resolve_kernel(p, ctx)  # triton | torch; a call may still fall back to torch
        self._ran: tuple[str, str | None] | None = None  # (kernel, fallback reason) of the last call
        self.n = ctx.n
        self.projection = p.projection
        self.sharing = p.sharing
        self.causal = causal
        self.window = ctx.n // self.k
        if p.projection in ("mean_pool", "max_pool"):
            self.E = self.F = None
            return

        if p.sharing == "layerwise":
            # The same matrix in every layer, whichever layer builds first: seed it as layer 0.
            ctx0 = dataclasses.replace(ctx, layer=0)
            key = ("linformer", "layerwise", p.projection, self.k, ctx.n, p.freeze, str(ctx.device),
                   ctx.dtype)
            self.E = self.F = ctx.scope.get_or_create(key, lambda: self._make_param(p, ctx0, 1, None))
        elif p.sharing == "kv":
            self.E = self.F = self._make_param(p, ctx, 1, None)
        elif p.sharing == "headwise":
            self.E, self.F = self._make_param(p, ctx, 1, None), self._make_param(p, ctx, 2, None)
        else:
            self.E, self.F = self._make_param(p, ctx, 1, ctx.heads), self._make_param(p, ctx, 2, ctx.heads)

    def _make_param(self, p: LinformerParams, ctx: BuildContext, salt: int,
                    heads: int | None) -> nn.Parameter:
        """One projection (k, n) — or per-head (H, k, n) — for linear/random; a filter (w,) or (H, w)
        for conv."""
        g = ctx.generator(salt)
        lead = () if heads is None else (heads,)
        if p.projection == "linear":
            data = _xavier(lead + (self.k, ctx.n), fan_in=ctx.n, fan_out=self.k,
                           gain=1 / math.sqrt(2), g=g)
        elif p.projection == "random":
            data = torch.randn(lead + (self.k, ctx.n), generator=g, dtype=torch.float64)
            data = data / math.sqrt(self.k)  # entries N(0, 1/k)
        else:  # conv: start as mean pooling
            data = torch.full(lead + (self.window,), 1.0 / self.window, dtype=torch.float64)
        trainable = p.projection in LEARNED and not p.freeze
        return nn.Parameter(data.to(ctx.device, ctx.dtype), requires_grad=trainable)

    def _project(self, x: torch.Tensor, proj: torch.Tensor | None) -> torch.Tensor:
        """(B, H, m, D) -> (B, H, k', D) along the sequence axis."""
        m = x.shape[-2]
        if self.projection in ("mean_pool", "max_pool"):
            return _pool(x, self.window, self.projection)
        if self.projection == "conv":
            return _conv(x, proj)
        proj = proj[..., :m]  # slicing columns serves m < n
        # Products chosen so the forward copies neither E nor x. torch.matmul folds the batch of x into
        # columns whenever the other operand is a broadcast matrix that requires grad (a trainable E,
        # even under no_grad), copying x and the result; an explicit bmm with E expanded (stride 0)
        # does not (shared_bmm). (H, k, m) against (B, H, m, D) would copy E to (B, H, k, m); a loop
        # over the batch runs one strided bmm per element instead.
        b, h, _, d = x.shape
        if proj.dim() == 2:
            flat = merged_heads(x)
            if flat is not None:  # one (k, m) @ (m, H·D) product per batch element: every head at once
                return project_merged(proj, flat).view(b, -1, h, d).transpose(1, 2)  # (B, H, k, D)
            # (B·H, m, D) is a view for (B, H, N, D) memory; other layouts get copied once here
            return shared_bmm(proj, x.reshape(b * h, m, d)).view(b, h, -1, d)  # (B, H, k, D)
        return torch.stack([proj @ xb for xb in x.unbind(0)])  # (B, H, k, D)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        m = k.shape[-2]
        if m > self.n:
            raise ValueError(f"Linformer was built for sequences of at most n={self.n}, got {m}; "
                             f"build it for the longest length it will see")
        if v.shape[-2] != m:
            raise ValueError(f"keys have {m} positions but values have {v.shape[-2]}")
        if self.kernel == "triton":
            E, F_ = self.E[..., :m], self.F[..., :m]  # (k, m) or (H, k, m): views, no copies
            why = self._triton_fallback(q, k, v, E, F_)
            self._ran = ("torch", why) if why else ("triton", None)
            if why is None:
                from attnbench.methods.linformer.linformer_triton import linformer_forward

                return linformer_forward(q, k, v, E, F_)  # (B, H, N, D)
        else:
            self._ran = ("torch", None)
        kp = self._project(k, self.E)  # (B, H, k, D)
        vp = self._project(v, self.F)  # (B, H, k, D)
        return F.scaled_dot_product_attention(q, kp, vp, is_causal=self.causal)  # (B, H, N, D)

    def _triton_fallback(self, q, k, v, E, F_) -> str | None:
        """Why this call must run the torch path instead of the Triton kernels (None: it need not)."""
        if self.causal:
            return "causal=True (masked after the projection) exists only on the torch path"
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, E, F_)):
            return "gradients needed: the Triton kernels are forward-only"
        from attnbench.methods.linformer.linformer_triton import unsupported_reason

        return unsupported_reason(q, k, v, E, F_)

    def flops(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
        b, h, n, d = q.shape
        m = k.shape[-2]
        rows = self.k if self.projection in ("linear", "random") else -(-m // self.window)
        if self.projection in ("linear", "random"):
            project = 2 * (2.0 * b * h * rows * m * d)  # E·K and F·V
        else:
            project = 2 * (2.0 * b * h * m * d)  # one multiply-add (or compare) per element
        return project + 4.0 * b * h * n * rows * d

    def stats(self) -> dict:
        """``kernel`` is what the last call ran (before any call: what it will try), with
        ``kernel_fallback`` saying why a Triton module ran torch."""
        kernel, fallback = self._ran or (self.kernel, None)
        row = {"k": self.k, "proj_matrices": len(projection_matrices(self)),
               "proj_params": sum(t.numel() for t in projection_matrices(self)), "kernel": kernel}
        if fallback:
            row["kernel_fallback"] = fallback
        return row


def projection_matrices(*modules: nn.Module) -> list[torch.Tensor]:
    """The distinct projection matrices (E_i, F_i, or conv filters) of Linformer layers.

    A per-head parameter (H, k, n) counts as H matrices; shared ones count once, identified by
    storage, so a layerwise matrix registered on twelve layers is one. For a 12-layer × 12-head model
    ``none``/``headwise``/``kv``/``layerwise`` give 288/24/12/1.
    """
    seen: dict[tuple, torch.Tensor] = {}
    for module in modules:
        for layer in module.modules():
            if not isinstance(layer, LinformerAttention):
                continue
            for proj in (layer.E, layer.F):
                if proj is None:
                    continue
                mats = proj.detach().unbind(0) if layer.sharing == "none" else (proj.detach(),)
                for mat in mats:
                    key = (mat.untyped_storage().data_ptr(), mat.storage_offset(), tuple(mat.shape))
                    seen.setdefault(key, mat)
    return list(seen.values())
