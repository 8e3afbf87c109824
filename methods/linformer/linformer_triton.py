"""Triton kernels for Linformer's forward (Wang et al., 2020, https://arxiv.org/abs/2006.04768): the
split-K projection along the sequence and the entry point :func:`linformer_forward`.

:func:`project_kv` projects K with E and V with F, (B, H, m, D) -> (B, H, rows, D) each, in one
launch: a program reduces one CHUNK of the sequence for BLOCK_K projected rows and HEADS consecutive
heads (which share E's tile) and adds its fp32 partial sums with atomics, so the last bits vary
between runs. :func:`linformer_forward` projects with one cuBLAS product per matrix where E and F are
shared and k, v stored (B, m, H, D), else with :func:`project_kv`, then attends over the rows with
:mod:`attnbench.methods.linformer.attention_triton`. Forward only. Autotuned on CUDA at the first call
of each shape; under ``TRITON_INTERPRET=1`` (set before this module is first imported) fixed small
tiles on the CPU, for the tests. Without Triton the module imports and a call raises
``RuntimeError``. Why, and what we measured: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import torch

from attnbench.kernels import TRITON_MISSING, device_reason, triton_available, triton_interpreting
from attnbench.methods.linformer.attention_triton import attention
from attnbench.methods.linformer.layout import merged_heads, project_merged

try:  # guarded: the package and the torch path must work without Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # fp32 for tests; auto uses fp16/bf16
HEAD_DIMS = (16, 32, 64, 128)
MAX_NUMEL = 2**31 - 1  # element offsets are computed in int32

# Fixed tiles for the interpreter (and a fallback when autotuning is off): small, so that the tests'
# small shapes still cover several n-splits, several key tiles and the masked tails.
INTERPRET_PROJECT = dict(BLOCK_K=32, BLOCK_N=32, HEADS=2, CHUNK=128)


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, E: torch.Tensor,
                       F: torch.Tensor) -> str | None:
    """Why the kernels cannot run these inputs (None if they can). E and F are already sliced to the
    input length: (rows, m) or (H, rows, m)."""
    if not triton_available():
        return TRITON_MISSING
    devices = {t.device for t in (q, k, v, E, F)}
    if len(devices) != 1:
        return f"inputs on several devices: {sorted(map(str, devices))}"
    device = devices.pop()
    if (why := device_reason(device)) is not None:
        return why
    dtypes = {t.dtype for t in (q, k, v, E, F)}
    if len(dtypes) != 1:
        return f"mixed dtypes {sorted(map(str, dtypes))}"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} not in {DTYPES}"
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        return f"expected (B, H, N, D) q, k, v with k and v alike; got {tuple(q.shape)}, " \
               f"{tuple(k.shape)}, {tuple(v.shape)}"
    b, h, m, d = k.shape
    if q.shape[:2] != (b, h) or q.shape[-1] != d:
        return f"q {tuple(q.shape)} does not match k {tuple(k.shape)}"
    if d not in HEAD_DIMS:
        return f"head_dim={d} not in {HEAD_DIMS}"
    for name, p in (("E", E), ("F", F)):
        if p.dim() not in (2, 3) or p.shape[-1] != m or (p.dim() == 3 and p.shape[0] != h):
            return f"{name} {tuple(p.shape)} is neither (k, {m}) nor ({h}, k, {m})"
    if E.shape[-2] != F.shape[-2]:
        return f"E and F project to different lengths ({E.shape[-2]} and {F.shape[-2]})"
    if any(t.numel() > MAX_NUMEL for t in (q, k, v, E, F)):
        return "a tensor has 2**31 elements or more (int32 offsets)"
    return None


def _check(q, k, v, E, F):
    if triton is None:
        raise RuntimeError("attnbench.methods.linformer.linformer_triton needs triton (pip install triton)")
    if (why := unsupported_reason(q, k, v, E, F)) is not None:
        raise ValueError(f"Linformer Triton kernels cannot run this: {why}")


if triton is not None:

    @triton.jit
    def _project_kernel(X1, P1, X2, P2, OUT, m, rows, H, BH,
                        sx1_b, sx1_h, sx1_n, sx1_d, sx2_b, sx2_h, sx2_n, sx2_d,
                        sp1_h, sp1_k, sp1_n, sp2_h, sp2_k, sp2_n,
                        D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                        HEADS: tl.constexpr, CHUNK: tl.constexpr, EVEN_N: tl.constexpr,
                        EVEN_K: tl.constexpr, IEEE: tl.constexpr):
        """OUT[0, bh] += P1[h, tile, chunk] @ X1[b, h, chunk]; OUT[1, bh] likewise with P2, X2.

        One program: one of K/V, BLOCK_K projected rows, HEADS consecutive heads side by side as the
        (BLOCK_N, HEADS·D) right operand (they share P's tile: P1/P2 must not be per head when
        HEADS > 1), one CHUNK of the sequence. OUT is a contiguous fp32 (2, B·H, rows, D) buffer,
        zeroed by the caller; H % HEADS == 0."""
        pid = tl.program_id(0)  # head groups fastest, then K/V: programs sharing a tile of P run together
        n_groups = BH // HEADS
        group = pid % n_groups
        rest = pid // n_groups
        which = rest % 2
        k_tile = rest // 2
        split = tl.program_id(1)
        bh0 = group * HEADS
        b = bh0 // H
        h0 = bh0 % H
        cols = tl.arange(0, HEADS * D)
        col_h = cols // D  # head within the group
        col_d = cols % D
        offs_k = k_tile * BLOCK_K + tl.arange(0, BLOCK_K)
        n_lo = split * CHUNK
        n_hi = tl.minimum(n_lo + CHUNK, m)
        offs_n = n_lo + tl.arange(0, BLOCK_N)
        if which == 0:
            p_ptrs = P1 + h0 * sp1_h + offs_k[:, None] * sp1_k + offs_n[None, :] * sp1_n
            x_ptrs = (X1 + b * sx1_b + (h0 + col_h[None, :]) * sx1_h + offs_n[:, None] * sx1_n
                      + col_d[None, :] * sx1_d)
            p_step = BLOCK_N * sp1_n
            x_step = BLOCK_N * sx1_n
        else:
            p_ptrs = P2 + h0 * sp2_h + offs_k[:, None] * sp2_k + offs_n[None, :] * sp2_n
            x_ptrs = (X2 + b * sx2_b + (h0 + col_h[None, :]) * sx2_h + offs_n[:, None] * sx2_n
                      + col_d[None, :] * sx2_d)
            p_step = BLOCK_N * sp2_n
            x_step = BLOCK_N * sx2_n
        acc = tl.zeros((BLOCK_K, HEADS * D), dtype=tl.float32)
        for start in range(0, CHUNK, BLOCK_N):
            if EVEN_N and EVEN_K:
                p = tl.load(p_ptrs)  # (BLOCK_K, BLOCK_N)
                x = tl.load(x_ptrs)  # (BLOCK_N, HEADS·D)
            else:
                n_ok = (n_lo + start + tl.arange(0, BLOCK_N)) < n_hi  # (BLOCK_N,)
                p = tl.load(p_ptrs, mask=(offs_k[:, None] < rows) & n_ok[None, :], other=0.0)
                x = tl.load(x_ptrs, mask=n_ok[:, None], other=0.0)
            if IEEE:
                acc = tl.dot(p, x, acc, input_precision="ieee")
            else:
                acc = tl.dot(p, x, acc)
            p_ptrs += p_step
            x_ptrs += x_step
        out_ptrs = (OUT + which * BH * rows * D + (bh0 + col_h[None, :]) * rows * D
                    + offs_k[:, None] * D + col_d[None, :])
        if EVEN_K:
            tl.atomic_add(out_ptrs, acc)
        else:
            tl.atomic_add(out_ptrs, acc, mask=offs_k[:, None] < rows)


def _project_configs():
    # The right operand spans HEADS heads (they share E's tile), so E is read from L2 H/HEADS times
    # and K, V k/BLOCK_K times: BLOCK_K=128, HEADS=2 moves a third of what BLOCK_K=128, HEADS=1 does.
    # The accumulator is BLOCK_K × HEADS·D fp32: 128×128 is 64 registers a thread at 8 warps.
    # CHUNK sets the n-splits: enough CTAs to fill the GPU against fp32 atomic traffic.
    c = triton.Config
    return [
        c(dict(BLOCK_K=128, BLOCK_N=64, HEADS=2, CHUNK=2048), num_warps=8, num_stages=3),
        c(dict(BLOCK_K=128, BLOCK_N=64, HEADS=2, CHUNK=4096), num_warps=8, num_stages=3),
        c(dict(BLOCK_K=256, BLOCK_N=64, HEADS=2, CHUNK=2048), num_warps=8, num_stages=2),
        c(dict(BLOCK_K=128, BLOCK_N=64, HEADS=4, CHUNK=4096), num_warps=8, num_stages=2),
        c(dict(BLOCK_K=128, BLOCK_N=64, HEADS=1, CHUNK=2048), num_warps=4, num_stages=4),
        c(dict(BLOCK_K=128, BLOCK_N=64, HEADS=1, CHUNK=1024), num_warps=4, num_stages=4),
    ]


def _prune_project(configs, named_args, **kwargs):
    """Keep configs whose HEADS divides H and, for per-head E/F, HEADS = 1."""
    per_head = named_args["sp1_h"] != 0 or named_args["sp2_h"] != 0
    ok = [c for c in configs if named_args["H"] % c.kwargs["HEADS"] == 0
          and not (per_head and c.kwargs["HEADS"] > 1)]
    return ok or [triton.Config(dict(BLOCK_K=64, BLOCK_N=64, HEADS=1, CHUNK=2048), num_warps=4,
                                num_stages=3)]


_TUNED: dict[str, object] = {}


def _tuned():
    """The autotuned launcher of the projection kernel (built on first use: Triton is imported by
    then)."""
    if "project" not in _TUNED:
        h = triton.heuristics
        # the head strides of E and F are in the key: a config tuned for a shared E (HEADS > 1)
        # must never be reused for per-head projections of the same shape
        _TUNED["project"] = triton.autotune(_project_configs(),
                                            key=["m", "rows", "BH", "H", "D", "sp1_h", "sp2_h"],
                                            reset_to_zero=["OUT"],
                                            prune_configs_by={"early_config_prune": _prune_project})(
            h({"EVEN_N": lambda a: a["m"] % a["CHUNK"] == 0,
               "EVEN_K": lambda a: a["rows"] % a["BLOCK_K"] == 0})(_project_kernel))
    return _TUNED["project"]


def _p_strides(p: torch.Tensor) -> tuple[int, int, int]:
    """(head, row, column) strides of E or F; head stride 0 when the heads share one matrix."""
    if p.dim() == 2:
        return 0, p.stride(0), p.stride(1)
    return p.stride(0), p.stride(1), p.stride(2)


def project_into(out: torch.Tensor, x1: torch.Tensor, p1: torch.Tensor, x2: torch.Tensor,
                 p2: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """Add P1 @ X1 into ``out[0]`` and P2 @ X2 into ``out[1]`` per (batch, head), in one launch.

    ``out`` is a contiguous fp32 (2, B, H, rows, D) buffer (zero it first); x (B, H, m, D); p (rows, m)
    or (H, rows, m). ``config`` (BLOCK_K, BLOCK_N, HEADS, CHUNK and optionally num_warps,
    num_stages) skips autotuning; the interpreter always uses one (default
    :data:`INTERPRET_PROJECT`). HEADS drops to 1 where it does not divide H or E/F are per head.
    """
    b, h, m, d = x1.shape
    rows = p1.shape[-2]
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == (2, b, h, rows, d)
    args = (x1, p1, x2, p2, out, m, rows, h, b * h,
            *x1.stride(), *x2.stride(), *_p_strides(p1), *_p_strides(p2))
    common = dict(D=d, IEEE=x1.dtype == torch.float32)
    per_head = p1.dim() == 3 or p2.dim() == 3
    if config is None and not triton_interpreting():
        kernel = _tuned()
        grid = lambda meta: (b * h // meta["HEADS"] * 2 * triton.cdiv(rows, meta["BLOCK_K"]),  # noqa: E731
                             triton.cdiv(m, meta["CHUNK"]))
        kernel[grid](*args, **common)
        return out
    cfg = dict(INTERPRET_PROJECT if config is None else config)
    if h % cfg.get("HEADS", 1) or per_head:
        cfg["HEADS"] = 1
    cfg.setdefault("HEADS", 1)
    launch = {key: cfg.pop(key) for key in ("num_warps", "num_stages") if key in cfg}
    grid = (b * h // cfg["HEADS"] * 2 * triton.cdiv(rows, cfg["BLOCK_K"]), triton.cdiv(m, cfg["CHUNK"]))
    _project_kernel[grid](*args, **common, **cfg, EVEN_N=m % cfg["CHUNK"] == 0,
                          EVEN_K=rows % cfg["BLOCK_K"] == 0, **launch)
    return out


def project_kv(k: torch.Tensor, v: torch.Tensor, E: torch.Tensor, F: torch.Tensor,
               config: dict | None = None, out_dtype: torch.dtype | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(E·K, F·V): (B, H, m, D) with E, F (rows, m) or (H, rows, m) -> two (B, H, rows, D).

    Accumulated in fp32; returned in ``out_dtype`` (default: the inputs' dtype). Pass the same tensor
    as E and F for ``kv``/``layerwise`` sharing (its tiles are then shared through L2).
    """
    b, h, m, d = k.shape
    rows = E.shape[-2]
    out = torch.zeros((2, b, h, rows, d), device=k.device, dtype=torch.float32)
    project_into(out, k, E, v, F, config)
    out = out.to(out_dtype or k.dtype)
    return out[0], out[1]


def linformer_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, E: torch.Tensor,
                      F: torch.Tensor, project_config: dict | None = None,
                      attention_config: dict | None = None) -> torch.Tensor:
    """softmax(q (E k)ᵀ / √D) (F v): q (B, H, N, D), k/v (B, H, m, D), E/F (rows, m) or (H, rows, m).

    The projections: where E and F are shared by the heads and k, v are stored (B, m, H, D) (a
    layer's projection leaves them so), one (rows, m) @ (m, H·D) product each through cuBLAS, which
    on an H100 moved their bytes faster (0.12 ms at n = 65536, 12 heads) than the split-K kernel;
    otherwise :func:`project_kv`, both in one launch. Forward only (no autograd). Raises
    ``ValueError`` naming the reason for inputs the kernels do not take (see
    :func:`unsupported_reason`).
    """
    _check(q, k, v, E, F)
    flat_k, flat_v = merged_heads(k), merged_heads(v)
    if E.dim() == 2 and F.dim() == 2 and flat_k is not None and flat_v is not None \
            and project_config is None:
        b, h, _, d = k.shape
        kp = project_merged(E, flat_k).view(b, -1, h, d).transpose(1, 2)  # (B, H, rows, D)
        vp = project_merged(F, flat_v).view(b, -1, h, d).transpose(1, 2)
    else:
        kp, vp = project_kv(k, v, E, F, project_config)  # (B, H, rows, D) each
    return attention(q, kp, vp, config=attention_config)  # (B, H, N, D)
