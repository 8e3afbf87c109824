"""Exact softmax attention (Vaswani et al., 2017, https://arxiv.org/abs/1706.03762): the baselines.

``naive`` materialises the n×n probability matrix, as the Transformer the Linformer paper compared
against did; ``sdpa`` is PyTorch's fused scaled-dot-product attention with a choosable backend
(FlashAttention, https://arxiv.org/abs/2205.14135, among them); ``xformers`` is xformers'
memory-efficient attention (Rabe & Staats, https://arxiv.org/abs/2112.05682); ``flex`` is the same
attention through FlexAttention (https://arxiv.org/abs/2412.05496), compiled on CUDA.

Decoding (the contract in :mod:`attnbench.registry`): ``naive`` and ``sdpa`` keep every past key and
value in a preallocated cache and attend the new query to its filled part (shapes change per step, so
steps run eagerly); ``flex`` masks the whole preallocated cache by a length kept on the device, so its
step has fixed shapes, uses FlexAttention's decoding kernel on CUDA and replays in a CUDA graph.
Packed documents: ``flex`` through a document block mask, ``sdpa`` through torch's variable-length
attention on CUDA where the installed torch has it (else a dense document mask), ``naive`` a dense mask.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.compiling import allow_recompiles
from attnbench.decode_state import DeviceKVCache, KVCache
from attnbench.flops import attention_flops, dense_pairs
from attnbench.registry import BuildContext, NoParams, Unsupported, register_method
from attnbench.varlen import DenseMaskPacked, Documents, Packed


def exact_flops(q, k, v, causal: bool) -> float:
    """Forward FLOPs of softmax attention over the allowed pairs (:mod:`attnbench.flops`)."""
    b, h, n, d = q.shape
    return attention_flops(b, h, d, dense_pairs(n, k.shape[-2], causal), v.shape[-1])


class NaiveAttention(nn.Module):
    """softmax(QKᵀ/√d)·V with the (B, H, N, N) matrix in memory."""

    def __init__(self, causal: bool, device: torch.device = torch.device("cpu")):
        super().__init__()
        self.causal = causal
        self.device = device

    def forward(self, q, k, v):
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
        if self.causal:
            n = q.shape[-2]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v  # (B, H, N, D)

    def flops(self, q, k, v):
        return exact_flops(q, k, v, self.causal)

    def init_state(self, q, k, v, capacity=None):
        return KVCache(k, v, capacity)

    def step(self, q_t, k_t, v_t, state: KVCache):
        state.append(k_t, v_t)
        scale = 1.0 / math.sqrt(q_t.shape[-1])
        scores = (q_t @ state.keys().transpose(-1, -2)) * scale  # (B, H, 1, L)
        return torch.softmax(scores, dim=-1) @ state.values(), state

    def pack(self, docs: Documents) -> nn.Module:
        return DenseMaskPacked(docs, self.causal, _masked_naive, docs_device(self))


def docs_device(module: nn.Module) -> torch.device:
    """Where a module without buffers runs: its ``device`` attribute, else the CPU."""
    return getattr(module, "device", torch.device("cpu"))


def _masked_naive(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@register_method("naive", family="exact", exact=True, params=NoParams, decode=True, varlen=True)
def build_naive(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Materialised softmax attention, the paper-era baseline."""
    return NaiveAttention(ctx.causal, ctx.device)


SdpaBackendName = Literal["auto", "math", "flash", "efficient", "cudnn"]


def _backend_enum(name: str):
    from torch.nn.attention import SDPBackend

    return {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}[name]


def _sdpa_reason(backend: str, ctx: BuildContext) -> str | None:
    """Why a forced SDPA backend cannot run this case, checked with PyTorch's own dispatcher."""
    if backend in ("auto", "math"):
        return None
    if ctx.device.type != "cuda":
        return f"sdpa backend {backend!r} needs CUDA (device is {ctx.device.type})"
    from torch.backends.cuda import (SDPAParams, can_use_cudnn_attention, can_use_efficient_attention,
                                     can_use_flash_attention)

    check = {"flash": can_use_flash_attention, "efficient": can_use_efficient_attention,
             "cudnn": can_use_cudnn_attention}[backend]
    shape = (1, ctx.heads, ctx.n, ctx.head_dim)
    q = torch.empty(shape, dtype=ctx.dtype, device=ctx.device)
    try:
        params = SDPAParams(q, q, q, None, 0.0, ctx.causal, False)
    except TypeError:  # older signature without enable_gqa
        params = SDPAParams(q, q, q, None, 0.0, ctx.causal)
    if check(params, False):
        return None
    return (f"sdpa backend {backend!r} cannot run dtype {ctx.dtype} head_dim {ctx.head_dim} "
            f"on {torch.cuda.get_device_name(ctx.device)}")


@dataclass(frozen=True)
class SdpaParams:
    backend: SdpaBackendName = "auto"  # auto lets PyTorch pick the fastest kernel that applies


class SdpaAttention(nn.Module):
    def __init__(self, backend: str, causal: bool, ctx: BuildContext | None = None):
        super().__init__()
        self.backend = backend
        self.causal = causal
        self.build_ctx = ctx

    def _kernel(self):
        if self.backend == "auto":
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(_backend_enum(self.backend))

    def forward(self, q, k, v):
        with self._kernel():
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)

    def flops(self, q, k, v):
        return exact_flops(q, k, v, self.causal)

    def init_state(self, q, k, v, capacity=None):
        return KVCache(k, v, capacity)

    def step(self, q_t, k_t, v_t, state: KVCache):
        state.append(k_t, v_t)
        with self._kernel():  # one query over every past key: no mask
            return F.scaled_dot_product_attention(q_t, state.keys(), state.values()), state

    def pack(self, docs: Documents) -> nn.Module:
        ctx = self.build_ctx
        if ctx is not None and ctx.device.type == "cuda" and ctx.dtype in (torch.float16,
                                                                           torch.bfloat16):
            varlen = _varlen_attn()
            if varlen is not None:
                return VarlenPacked(docs, self.causal, varlen)
        device = ctx.device if ctx is not None else torch.device("cpu")
        return DenseMaskPacked(docs, self.causal, self._masked, device)

    def _masked(self, q, k, v, allowed):
        with self._kernel():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _varlen_attn():
    """torch.nn.attention.varlen.varlen_attn where the installed torch has it, else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


class VarlenPacked(Packed):
    """Packed documents through torch's variable-length FlashAttention: the batch's rows flattened to
    (B·N, H, D) tokens with cumulative document offsets; nothing outside a document is scored."""

    def __init__(self, docs: Documents, causal: bool, varlen):
        super().__init__(docs, causal, "varlen_attn")
        import inspect

        self.varlen = varlen
        names = inspect.signature(varlen).parameters
        self.causal_kw = ({"is_causal": causal} if "is_causal" in names else
                          {"window_size": (-1, 0) if causal else (-1, -1)})
        self._cu: dict = {}

    def forward(self, q, k, v):
        b, h, n, d = q.shape
        key = (b, q.device)
        if key not in self._cu:
            self._cu[key] = self.docs.cu_seqlens(b, q.device)
        cu = self._cu[key]
        longest = max(self.docs.lengths)
        flat = [t.transpose(1, 2).reshape(b * n, h, -1) for t in (q, k, v)]  # (B·N, H, D)
        out = self.varlen(*flat, cu, cu, longest, longest, **self.causal_kw)
        return out.view(b, n, h, -1).transpose(1, 2)  # (B, H, N, D)


@register_method("sdpa", family="exact", exact=True, params=SdpaParams, decode=True, varlen=True)
def build_sdpa(p: SdpaParams, ctx: BuildContext) -> nn.Module:
    """torch.nn.functional.scaled_dot_product_attention (flash / efficient / cudnn / math)."""
    if (why := _sdpa_reason(p.backend, ctx)) is not None:
        raise Unsupported(why)
    return SdpaAttention(p.backend, ctx.causal, ctx)


class XformersAttention(nn.Module):
    """xformers' memory-efficient attention with an op chosen once at build time; inputs go in the
    (B, N, H, D) layout xformers expects (a transposed view, no copy)."""

    def __init__(self, causal: bool, op, op_name: str):
        super().__init__()
        self.causal = causal
        self.op = op
        self.op_name = op_name

    def forward(self, q, k, v):
        import xformers.ops as xops

        bias = xops.LowerTriangularMask() if self.causal else None
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2), attn_bias=bias, op=self.op)
        return out.transpose(1, 2)

    def stats(self) -> dict:
        return {"xformers_op": self.op_name}

    def flops(self, q, k, v):
        return exact_flops(q, k, v, self.causal)


def xformers_candidates(fmha) -> list[tuple[str, tuple | None]]:
    """(name, op) pairs to try: xformers' own dispatch first, then every forward op the installed
    xformers ships, each as the (FwOp, BwOp) pair ``memory_efficient_attention`` expects (BwOp may
    be None: a forward-only op). A bare FwOp class would fail with "type 'FwOp' is not
    subscriptable"."""
    out: list[tuple[str, tuple | None]] = [("dispatch", None)]
    for name in ("flash", "cutlass", "flash3", "triton_splitk", "ck", "ck_splitk",
                 "cutlass_blackwell"):
        mod = getattr(fmha, name, None)
        if mod is not None and hasattr(mod, "FwOp"):
            out.append((getattr(mod.FwOp, "NAME", name), (mod.FwOp, getattr(mod, "BwOp", None))))
    return out


def _dispatched_name(fmha, inp, needs_grad: bool) -> str:
    """The forward op xformers' dispatcher picks for ``inp`` (its NAME), or "dispatch"."""
    try:
        from xformers.ops.fmha.dispatch import _dispatch_fw

        return getattr(_dispatch_fw(inp, needs_grad), "NAME", "dispatch")
    except Exception:  # noqa: BLE001 - a private helper: only the label depends on it
        return "dispatch"


@register_method("xformers", family="exact", exact=True, params=NoParams, devices=("cuda",),
                 dtypes=("fp16", "bf16", "fp32"), requires=("xformers",),
                 install_hint="pip install 'attnbench[xformers]'")
def build_xformers(p: NoParams, ctx: BuildContext) -> nn.Module:
    """xformers.ops.memory_efficient_attention (optional dependency; rows name the op that ran)."""
    import xformers.ops as xops
    from xformers.ops import fmha

    shape = (1, min(ctx.n, 256), ctx.heads, ctx.head_dim)  # (B, N, H, D), xformers' layout
    probe = torch.randn(shape, dtype=ctx.dtype, device=ctx.device)
    bias = xops.LowerTriangularMask() if ctx.causal else None
    errors = []
    for name, op in xformers_candidates(fmha):
        try:
            xops.memory_efficient_attention(probe, probe, probe, attn_bias=bias, op=op)
        except Exception as exc:  # noqa: BLE001 - xformers raises many kinds for "no operator"
            reasons = _reasons(op, fmha, probe, bias)
            errors.append(f"{name}: {reasons or str(exc).splitlines()[0][:160]}")
            continue
        if op is None:
            name = _dispatched_name(fmha, fmha.Inputs(query=probe, key=probe, value=probe,
                                                      attn_bias=bias), False)
        return XformersAttention(ctx.causal, op, name)
    raise Unsupported("xformers has no working operator here: " + "; ".join(errors))


def _reasons(op, fmha, probe, bias) -> str:
    """xformers' own words on why an op does not take these inputs."""
    if op is None:
        return ""
    try:
        why = op[0].not_supported_reasons(fmha.Inputs(query=probe, key=probe, value=probe,
                                                      attn_bias=bias))
    except Exception:  # noqa: BLE001
        return ""
    return ", ".join(why)[:200]


class FlexAttention(nn.Module):
    """Exact attention through FlexAttention: compiled on CUDA, the eager reference implementation
    elsewhere (it materialises the scores: for tests only)."""

    def __init__(self, ctx: BuildContext):
        super().__init__()
        from torch.nn.attention.flex_attention import flex_attention

        self.causal, self.device = ctx.causal, ctx.device
        self.compiled = ctx.device.type == "cuda"
        self._stats: dict = {"compiled": self.compiled}
        if self.compiled:
            allow_recompiles()
            self.flex = torch.compile(flex_attention)
        else:
            self.flex = flex_attention
        # the causal block mask and the compiled kernel come with the first call, which every cell
        # makes untimed (a decode cell never calls the forward: nothing is made for it)
        self.block_mask, self.n = None, ctx.n

    def forward(self, q, k, v):
        if self.causal and (self.block_mask is None or self.n != q.shape[-2]):
            self.n = q.shape[-2]
            self.block_mask = _causal_block_mask(self.n, q.device)
        return self.flex(q, k, v, block_mask=self.block_mask)

    def stats(self) -> dict:
        return dict(self._stats)

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        return 4.0 * b * h * n * k.shape[-2] * d / (2 if self.causal else 1)

    # decode: the whole preallocated cache, keys at and past the device-side length masked out

    decode_graphs = True

    def init_state(self, q, k, v, capacity=None):
        cache = DeviceKVCache(k, v, capacity)
        cache.block_mask = _length_block_mask(cache.length, cache.k.shape[2], q.device)
        return cache

    def step(self, q_t, k_t, v_t, state: DeviceKVCache):
        state.append(k_t, v_t)
        return self.flex(q_t, state.k, state.v, block_mask=state.block_mask), state

    def pack(self, docs: Documents) -> nn.Module:
        return FlexPacked(docs, self.causal, self.flex, self.device)


def _causal_block_mask(n: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return create_block_mask(causal, None, None, n, n, device=device, _compile=device.type == "cuda")


def _length_block_mask(length: torch.Tensor, capacity: int, device: torch.device, block: int = 128):
    """A (1 query, ``capacity`` keys) block mask whose every key block is partial, so the mask_mod
    (key index < ``length``, read on the device at each call) decides: no block is skipped by a
    length frozen when the mask was made."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = -(-capacity // block)

    def below_length(b, h, q_idx, kv_idx):
        return kv_idx < length[0]

    return BlockMask.from_kv_blocks(
        torch.full((1, 1, 1), blocks, dtype=torch.int32, device=device),
        torch.arange(blocks, dtype=torch.int32, device=device).view(1, 1, 1, blocks),
        BLOCK_SIZE=block, mask_mod=below_length, seq_lengths=(1, capacity))


class FlexPacked(Packed):
    """Packed documents through a FlexAttention block mask "same document" (and j <= i): blocks
    wholly between documents are skipped."""

    def __init__(self, docs: Documents, causal: bool, flex, device: torch.device):
        super().__init__(docs, causal, "flex-document-mask")
        from torch.nn.attention.flex_attention import create_block_mask

        ids = docs.doc_ids(device)
        self.flex = flex

        def document(b, h, q_idx, kv_idx):
            same = ids[q_idx] == ids[kv_idx]
            return same & (kv_idx <= q_idx) if causal else same

        self.block_mask = create_block_mask(document, None, None, docs.n, docs.n, device=device,
                                            _compile=device.type == "cuda")

    def forward(self, q, k, v):
        return self.flex(q, k, v, block_mask=self.block_mask)


# CUDA only: elsewhere FlexAttention runs its unfused reference implementation (it materialises every
# score, has no backward on CPU and takes ~80 ms per decode step there), which is no benchmark. The
# module still builds on CPU, where the tests check its forward, decode and document masks.
@register_method("flex", family="exact", exact=True, params=NoParams, devices=("cuda",),
                 decode=True, varlen=True)
def build_flex(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Softmax attention through FlexAttention (compiled): causal block mask, document masks for
    packed sequences, and its decoding kernel over a KV cache."""
    return FlexAttention(ctx)
