"""The ``performer`` (FAVOR+, https://arxiv.org/abs/2009.14794) and ``linear`` (elu+1,
https://arxiv.org/abs/2006.16236) modules and their params.

Both map q, k, v (B, H, N, D) to (B, H, N, D), bidirectional or causal (prefix sums by chunks of
``chunk_size``), and decode one token at a time from the (B, H, F, D+1) state of
:mod:`attnbench.methods.performer.state`. ``PerformerAttention`` draws ω (m, d) at build time from the
cell's generator (a buffer; redrawn every ``redraw_interval`` training calls); causal ``linear`` on
CUDA hands its features to fla's chunked kernel from n = 4096 on where fla-core is installed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.compiling import allow_recompiles, compile_failure
from attnbench.methods.performer.favor import (FavorConstants, favor_bidirectional, favor_compilable,
                                               favor_constants)
from attnbench.methods.performer.features import (draw_omega, favor_positive_attention, kernel_attention,
                                                  resolve_nb_features)
from attnbench.methods.performer.state import FeatureState, _acc, _fold_prefix, _readout, _with_ones
from attnbench.params import NonNegative, Positive
from attnbench.registry import BuildContext, Unsupported


@dataclass(frozen=True)
class PerformerParams:
    nb_features: NonNegative = 0  # m, random features; 0 = auto = round(d·ln d) (266 at d=64, 111 at d=32)
    orthogonal: bool = True  # ω in orthogonal blocks with chi lengths (ORF); False = iid Gaussian rows
    positive: bool = True  # FAVOR+ positive features; False = trigonometric sin/cos (2m features)
    redraw_interval: NonNegative = 0  # training mode: redraw ω every this many forward calls; 0 = fixed by seed
    chunk_size: Positive = 128  # causal: prefix sums are taken over chunks of this many positions
    compile: bool = False  # bidirectional positive: torch.compile the whole feature pipeline (fuses the
    #                        small elementwise steps), compiled and warmed in the factory


@dataclass(frozen=True)
class LinearParams:
    chunk_size: Positive = 128  # causal: prefix sums are taken over chunks of this many positions


class PerformerAttention(nn.Module):
    """FAVOR+ attention; ω is a buffer drawn at build time from the cell's generator."""

    def __init__(self, p: PerformerParams, ctx: BuildContext):
        super().__init__()
        self.p = p
        self.causal = ctx.causal
        self.m = resolve_nb_features(p.nb_features, ctx.head_dim)
        self._redraw_gen = ctx.generator(salt=1)  # a separate stream, so redraws never repeat ω₀
        self._calls = 0
        omega = draw_omega(self.m, ctx.head_dim, p.orthogonal, ctx.generator(salt=0))
        self.register_buffer("omega", omega.to(ctx.device, ctx.dtype))
        self._consts: tuple | None = None  # (key, FavorConstants) for the last ω, dtype and device
        self._stats = {"nb_features_used": self.m}
        self._compiled = None
        if p.compile:
            reason = _compile_knob(p, ctx)
            if reason:
                raise Unsupported(reason)
            self._compiled = self._compile(ctx)

    def _compile(self, ctx: BuildContext):
        """``favor_compilable`` under torch.compile, warmed at the cell's shape (forward, and backward
        on CUDA) so that compilation is not timed; as FlexAttention in ``sparse``."""
        def sync():
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)

        try:
            allow_recompiles()
            fn = torch.compile(favor_compilable, dynamic=False)
            consts = self.constants(ctx.dtype)[:5]
            shape = (ctx.batch, ctx.heads, ctx.n, ctx.head_dim)
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(shape, generator=g).to(ctx.device, ctx.dtype) for _ in range(3))
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(q, k, v, *consts)
            sync()
            t1 = time.perf_counter()
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            fn(q, k, v, *consts).sum().backward()
            sync()
        except Exception as exc:  # noqa: BLE001 - inductor/triton fail in many ways
            raise compile_failure("torch.compile", exc) from exc
        self._stats.update(compiled=True, compile_s=t1 - t0, compile_bwd_s=time.perf_counter() - t1)
        return fn

    @torch.no_grad()
    def redraw(self) -> None:
        omega = draw_omega(self.m, self.omega.shape[1], self.p.orthogonal, self._redraw_gen)
        self.omega.copy_(omega.to(self.omega))

    def constants(self, dtype: torch.dtype) -> FavorConstants:
        """``favor_constants`` of the current ω in ``dtype``, rebuilt after a redraw or a move."""
        om = self.omega
        key = (dtype, om.device, om.data_ptr(), om._version)
        if self._consts is None or self._consts[0] != key:
            self._consts = (key, favor_constants(om, dtype))
        return self._consts[1]

    def exponents(self, q, k):
        """FAVOR+ exponents ωᵀx − ‖x‖²/2 of the scaled queries and keys, each (B, H, N, m)."""
        scale = q.shape[-1] ** -0.25
        qs, ks = q * scale, k * scale
        omega = self.omega.to(q.dtype)
        q_exp = qs @ omega.t() - (qs * qs).sum(-1, keepdim=True) / 2  # (B, H, N, m)
        k_exp = ks @ omega.t() - (ks * ks).sum(-1, keepdim=True) / 2  # (B, H, N, m)
        return q_exp, k_exp

    def trig_features(self, q, k):
        """[sin, cos] features (B, H, N, 2m) and the key log-scales ‖k‖²/2 (B, H, N); the query factor
        exp(‖q‖²/2) is a per-row constant and cancels."""
        scale = q.shape[-1] ** -0.25
        qs, ks = q * scale, k * scale
        omega = self.omega.to(q.dtype)
        norm = q.shape[-2] ** -0.5  # keeps Σ over n keys O(m) in fp16
        q_proj, k_proj = qs @ omega.t(), ks @ omega.t()  # (B, H, N, m)
        qf = torch.cat([torch.sin(q_proj), torch.cos(q_proj)], dim=-1) * norm
        kf = torch.cat([torch.sin(k_proj), torch.cos(k_proj)], dim=-1) * norm
        return qf, kf, (ks * ks).sum(-1) / 2

    def forward(self, q, k, v):
        if self.training and self.p.redraw_interval > 0:
            if self._calls > 0 and self._calls % self.p.redraw_interval == 0:
                self.redraw()
            self._calls += 1
        if self._compiled is not None:
            return self._compiled(q, k, v, *self.constants(q.dtype)[:5])
        if self.p.positive and not self.causal:
            return favor_bidirectional(q, k, v, self.constants(q.dtype))
        if self.p.positive:
            q_exp, k_exp = self.exponents(q, k)
            return favor_positive_attention(q_exp, k_exp, v, causal=self.causal,
                                            chunk_size=self.p.chunk_size)
        qf, kf, logscale = self.trig_features(q, k)
        return kernel_attention(qf, kf, v, logscale, causal=self.causal, chunk_size=self.p.chunk_size)

    @torch.no_grad()
    def attention_matrix(self, q, k) -> torch.Tensor:
        """The implied (B, H, N, N) attention weights, materialised without the stabilised sums: for
        tests and plots at small n (use float64 inputs)."""
        if self.p.positive:
            q_exp, k_exp = self.exponents(q, k)
            log_scores = torch.logsumexp(q_exp[..., :, None, :] + k_exp[..., None, :, :], dim=-1)
            scores = torch.exp(log_scores - log_scores.amax(-1, keepdim=True))  # (B, H, N, N)
        else:
            qf, kf, logscale = self.trig_features(q, k)
            key_weight = torch.exp(logscale - logscale.amax(-1, keepdim=True))  # (B, H, N)
            scores = (qf @ kf.transpose(-1, -2)) * key_weight[..., None, :]  # (B, H, N, N)
        if self.causal:
            scores = scores.tril()
        return scores / scores.sum(-1, keepdim=True)

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        f = self.m * (1 if self.p.positive else 2)
        total = 2.0 * 2 * n * self.m * d + 2.0 * 2 * n * f * (d + 1)  # projections, state, readout
        if self.causal:
            total += 2.0 * n * min(self.p.chunk_size, n) * (f + d + 1)  # in-chunk masked products
        return b * h * total

    def stats(self):
        return dict(self._stats)

    # decode: the recurrent state (results/README.md, "Notes from the method modules")

    decode_graphs = True

    def init_state(self, q, k, v, capacity=None):
        b, h, _, d = k.shape
        acc = _acc(k.dtype)
        width = self.m if self.p.positive else 2 * self.m
        state = FeatureState(k.new_zeros(b, h, width, d + 1, dtype=acc))
        state.frame = (torch.full((b, h, width), float("-inf"), dtype=acc, device=k.device)
                       if self.p.positive else torch.full((b, h), float("-inf"), dtype=acc,
                                                          device=k.device))
        return _fold_prefix(self._advance, state, k, v)

    def _features(self, x: torch.Tensor):
        """(projection ωᵀx·s, ‖x·s‖²/2) of x (B, H, c, D) in fp32 or better, s = d^(-1/4)."""
        acc = _acc(x.dtype)
        xs = x.to(acc) * x.shape[-1] ** -0.25
        return xs @ self.omega.to(acc).t(), (xs * xs).sum(-1) / 2  # (B, H, c, m), (B, H, c)

    def _advance(self, state: FeatureState, k, v) -> None:
        """Fold keys and values (B, H, c, D) into the state, in place."""
        proj, sq = self._features(k)
        vv = _with_ones(v, proj.dtype)
        if self.p.positive:
            k_exp = proj - sq[..., None]  # (B, H, c, m)
            top = torch.maximum(state.frame, k_exp.amax(dim=-2))  # (B, H, m)
            state.S.mul_(torch.exp(state.frame - top)[..., None])
            state.S.add_(torch.exp(k_exp - top[..., None, :]).transpose(-1, -2) @ vv)
        else:
            kf = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)  # (B, H, c, 2m)
            top = torch.maximum(state.frame, sq.amax(dim=-1))  # (B, H): key log-scales ‖k‖²/2
            state.S.mul_(torch.exp(state.frame - top)[..., None, None])
            state.S.add_((kf * torch.exp(sq - top[..., None])[..., None]).transpose(-1, -2) @ vv)
        state.frame.copy_(top)

    def step(self, q_t, k_t, v_t, state: FeatureState):
        self._advance(state, k_t, v_t)
        proj, sq = self._features(q_t)
        if self.p.positive:
            a = proj + state.frame[..., None, :]  # (B, H, 1, m); −‖q‖²/2 and the row max cancel
            qf = torch.exp(a - a.amax(dim=-1, keepdim=True))
        else:
            qf = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        return _readout(qf @ state.S, v_t.dtype), state


# Issue 22 ("same math, best kernel"): from this n on, causal `linear` on CUDA runs fla's chunked
# kernel (fla-core installed) on its own elu+1 features; rows say which kernel ran (`kernel`).
FLA_LINEAR_MIN_N = 4096


def _fla_linear(ctx: BuildContext):
    """fla's chunk_linear_attn where it applies (causal, CUDA, n >= FLA_LINEAR_MIN_N, fla-core
    installed), else None."""
    import importlib.util

    if not (ctx.causal and ctx.device.type == "cuda" and ctx.n >= FLA_LINEAR_MIN_N
            and importlib.util.find_spec("fla") is not None):
        return None
    from attnbench import flaops

    flaops.enable_autotune_cache()
    try:
        return flaops.load("fla.ops.linear_attn:chunk_linear_attn")
    except ImportError:
        return None


class LinearAttention(nn.Module):
    """elu(x)+1 feature-map attention, bidirectional or causal."""

    def __init__(self, p: LinearParams, ctx: BuildContext):
        super().__init__()
        self.p = p
        self.causal = ctx.causal
        self.fla = _fla_linear(ctx)

    def forward(self, q, k, v):
        norm = q.shape[-2] ** -0.5  # keeps Σ over n keys O(d) in fp16
        qf = (F.elu(q) + 1) * norm  # (B, H, N, D)
        kf = (F.elu(k) + 1) * norm
        if self.fla is not None:  # fla's layout is (B, N, H, D)
            qf, kf, vt = (t.transpose(1, 2).contiguous() for t in (qf, kf, v))
            return self.fla(qf, kf, vt, normalize=True)[0].transpose(1, 2)
        return kernel_attention(qf, kf, v, None, causal=self.causal, chunk_size=self.p.chunk_size)

    def stats(self) -> dict:
        if self.fla is not None:
            return {"kernel": f"fla chunk_linear_attn (causal, n >= {FLA_LINEAR_MIN_N})"}
        return {"kernel": "torch chunked" if self.causal else "torch"}

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        total = 2.0 * 2 * n * d * (d + 1)
        if self.causal:
            total += 2.0 * n * min(self.p.chunk_size, n) * (2 * d + 1)
        return b * h * total

    # decode: S = Σ_j φ(k_j)[v_j, 1], φ = elu + 1 (the n^(-1/2) of the forward cancels in the ratio)

    decode_graphs = True

    def init_state(self, q, k, v, capacity=None):
        b, h, _, d = k.shape
        state = FeatureState(k.new_zeros(b, h, d, v.shape[-1] + 1, dtype=_acc(k.dtype)))
        return _fold_prefix(self._advance, state, k, v)

    def _advance(self, state: FeatureState, k, v) -> None:
        kf = F.elu(k.to(state.S.dtype)) + 1  # (B, H, c, D)
        state.S.add_(kf.transpose(-1, -2) @ _with_ones(v, state.S.dtype))

    def step(self, q_t, k_t, v_t, state: FeatureState):
        self._advance(state, k_t, v_t)
        qf = F.elu(q_t.to(state.S.dtype)) + 1  # (B, H, 1, D)
        return _readout(qf @ state.S, v_t.dtype), state


def _positive_knobs(p, ctx):
    bad = [f"{name}={getattr(p, name)}" for name, low in
           (("nb_features", 0), ("redraw_interval", 0), ("chunk_size", 1)) if getattr(p, name, low) < low]
    return f"invalid knobs: {', '.join(bad)}" if bad else None


def _compile_knob(p, ctx):
    if p.compile and (ctx.causal or not p.positive):
        return "compile=true applies to the bidirectional positive-feature path only"
    return None
