"""Triton kernels for attention over Linformer's k projected rows (https://arxiv.org/abs/2006.04768),
non-causal: q (B, H, N, D), kp and vp (B, H, rows, D) -> (B, H, N, D).

Up to :data:`FEW_KEYS_MAX` rows one program holds all of them, pre-scaled, and walks its query tiles
with one max, one exp2 pass and one sum per row (no rescaling); more rows take an online-softmax
kernel (fp32, exp2) over tiles of the rows, autotuned on CUDA. ``tl.dot`` for both products; fp32
inputs take full fp32 products. Under ``TRITON_INTERPRET=1`` (set before
:mod:`attnbench.methods.linformer.linformer_triton`, which imports this module, is first imported)
fixed small tiles on the CPU, for the tests. Timings: results/README.md, "Notes from the method
modules".
"""
from __future__ import annotations

import math

import torch

from attnbench.kernels import triton_interpreting

try:  # guarded: the package and the torch path must work without Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

# Fixed tiles for the interpreter (and a fallback when autotuning is off): small, so that the tests'
# small shapes still cover several key tiles and the masked tails.
INTERPRET_ATTENTION = dict(BLOCK_M=32, BLOCK_KV=32)


if triton is not None:

    @triton.jit
    def _attention_kernel(Q, KP, VP, O, n_q, rows, H, qk_scale,
                          sq_b, sq_h, sq_n, sq_d, so_b, so_h, so_n, so_d,
                          skp_b, skp_h, skp_k, skp_d, svp_b, svp_h, svp_k, svp_d,
                          D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_KV: tl.constexpr,
                          EVEN_M: tl.constexpr, EVEN_KV: tl.constexpr, IEEE: tl.constexpr):
        """O[b, h, tile] = softmax(Q[b, h, tile] KPᵀ · scale) VP over all ``rows`` projected rows."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        offs_kv = tl.arange(0, BLOCK_KV)
        q_ptrs = Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d
        if EVEN_M:
            q = tl.load(q_ptrs)  # (BLOCK_M, D)
        else:
            q = tl.load(q_ptrs, mask=offs_m[:, None] < n_q, other=0.0)
        kt_ptrs = KP + b * skp_b + h * skp_h + offs_kv[None, :] * skp_k + offs_d[:, None] * skp_d
        v_ptrs = VP + b * svp_b + h * svp_h + offs_kv[:, None] * svp_k + offs_d[None, :] * svp_d
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        for start in range(0, rows, BLOCK_KV):
            if EVEN_KV:
                kt = tl.load(kt_ptrs)  # (D, BLOCK_KV)
                vv = tl.load(v_ptrs)  # (BLOCK_KV, D)
            else:
                kv_ok = (start + offs_kv) < rows
                kt = tl.load(kt_ptrs, mask=kv_ok[None, :], other=0.0)
                vv = tl.load(v_ptrs, mask=kv_ok[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q, kt, input_precision="ieee")
            else:
                s = tl.dot(q, kt)  # (BLOCK_M, BLOCK_KV) fp32
            s = s * qk_scale  # log2 units: exp2 below
            if not EVEN_KV:
                s = tl.where(((start + offs_kv) < rows)[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if IEEE:
                acc = tl.dot(p.to(vv.dtype), vv, acc, input_precision="ieee")
            else:
                acc = tl.dot(p.to(vv.dtype), vv, acc)
            m_i = m_new
            kt_ptrs += BLOCK_KV * skp_k
            v_ptrs += BLOCK_KV * svp_k
        out = acc / l_i[:, None]
        o_ptrs = O + b * so_b + h * so_h + offs_m[:, None] * so_n + offs_d[None, :] * so_d
        if EVEN_M:
            tl.store(o_ptrs, out.to(O.dtype.element_ty))
        else:
            tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < n_q)


    @triton.jit
    def _few_keys_kernel(Q, KP, VP, O, n_q, rows, H, qk_scale,
                         sq_b, sq_h, sq_n, sq_d, so_b, so_h, so_n, so_d,
                         skp_b, skp_h, skp_k, skp_d, svp_b, svp_h, svp_k, svp_d,
                         D: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr,
                         STAGES: tl.constexpr, EVEN_M: tl.constexpr, EVEN_KV: tl.constexpr,
                         IEEE: tl.constexpr):
        """O[b, h] = softmax(Q[b, h] KPᵀ · scale) VP with all ``rows`` (≤ ROWS) projected rows in one
        tile: KP and VP are loaded once per program, which then walks query tiles pid, pid + P, …
        (P programs per (batch, head)); one max, one exp2 pass and one sum per row, no rescaling."""
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_d = tl.arange(0, D)
        offs_r = tl.arange(0, ROWS)
        kt_ptrs = KP + b * skp_b + h * skp_h + offs_r[None, :] * skp_k + offs_d[:, None] * skp_d
        v_ptrs = VP + b * svp_b + h * svp_h + offs_r[:, None] * svp_k + offs_d[None, :] * svp_d
        if EVEN_KV:
            kt = tl.load(kt_ptrs)  # (D, ROWS)
            vv = tl.load(v_ptrs)  # (ROWS, D)
        else:
            kt = tl.load(kt_ptrs, mask=(offs_r < rows)[None, :], other=0.0)
            vv = tl.load(v_ptrs, mask=(offs_r < rows)[:, None], other=0.0)
        # the scale (log2 units, for exp2) goes into the keys once per program, not into every score
        kt = (kt.to(tl.float32) * qk_scale).to(kt.dtype)
        for tile in tl.range(pid, tl.cdiv(n_q, BLOCK_M), tl.num_programs(0), num_stages=STAGES):
            offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            q_ptrs = Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d
            if EVEN_M:
                q = tl.load(q_ptrs)  # (BLOCK_M, D)
            else:
                q = tl.load(q_ptrs, mask=offs_m[:, None] < n_q, other=0.0)
            if IEEE:
                s = tl.dot(q, kt, input_precision="ieee")
            else:
                s = tl.dot(q, kt)  # (BLOCK_M, ROWS) fp32, already scaled
            if not EVEN_KV:
                s = tl.where((offs_r < rows)[None, :], s, float("-inf"))
            p = tl.exp2(s - tl.max(s, 1)[:, None])
            inv_l = 1.0 / tl.sum(p, 1)
            if IEEE:
                acc = tl.dot(p.to(vv.dtype), vv, input_precision="ieee")
            else:
                acc = tl.dot(p.to(vv.dtype), vv)
            out = (acc * inv_l[:, None]).to(O.dtype.element_ty)
            o_ptrs = O + b * so_b + h * so_h + offs_m[:, None] * so_n + offs_d[None, :] * so_d
            if EVEN_M:
                tl.store(o_ptrs, out)
            else:
                tl.store(o_ptrs, out, mask=offs_m[:, None] < n_q)


def _attention_configs():
    c = triton.Config
    return [
        c(dict(BLOCK_M=128, BLOCK_KV=64), num_warps=4, num_stages=2),
        c(dict(BLOCK_M=128, BLOCK_KV=64), num_warps=8, num_stages=2),
        c(dict(BLOCK_M=128, BLOCK_KV=128), num_warps=8, num_stages=2),
        c(dict(BLOCK_M=256, BLOCK_KV=64), num_warps=8, num_stages=2),
    ]


_TUNED: dict[str, object] = {}


def _tuned():
    """The autotuned launcher of the online-softmax kernel (built on first use: Triton is imported
    by then)."""
    if "attention" not in _TUNED:
        h = triton.heuristics
        _TUNED["attention"] = triton.autotune(_attention_configs(), key=["n_q", "rows", "D"])(
            h({"EVEN_M": lambda a: a["n_q"] % a["BLOCK_M"] == 0,
               "EVEN_KV": lambda a: a["rows"] % a["BLOCK_KV"] == 0})(_attention_kernel))
    return _TUNED["attention"]


FEW_KEYS_MAX = 256  # up to this many projected rows, attention takes the one-tile kernel
# The one-tile kernel's settings: fixed, measured on an H100 (fp16, n = 65536, k = 256, 12 heads,
# head_dim 64: 0.123 ms, against 0.154 ms for cuDNN's SDPA and 0.14–0.31 ms for other tilings, 128-row
# tiles, two key tiles, other program counts); PROGRAMS_PER_SM programs per multiprocessor in all,
# split over the (batch, head) pairs: a third per multiprocessor waits for registers (0.31 ms).
FEW_KEYS_CONFIG = dict(BLOCK_M=64, STAGES=3, num_warps=4)
INTERPRET_FEW_KEYS = dict(BLOCK_M=16, STAGES=1, PROGRAMS=2)
PROGRAMS_PER_SM = 2
_SMS: dict[int, int] = {}


def _programs(q: torch.Tensor, n_tiles: int, bh: int) -> int:
    """Programs per (batch, head) for the one-tile kernel: at most PROGRAMS_PER_SM per multiprocessor
    in all (rounded down: one more would wait for a slot and finish last), at most one per query
    tile, at least one."""
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return max(1, min(n_tiles, PROGRAMS_PER_SM * _SMS[index] // bh))


def attention(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, scale: float | None = None,
              config: dict | None = None) -> torch.Tensor:
    """softmax(q kpᵀ · scale) vp, non-causal: q (B, H, N, D), kp/vp (B, H, rows, D) -> (B, H, N, D).

    kp and vp may be fp32 (e.g. the projection's accumulator); they are cast to q's dtype before the
    products. ``scale`` defaults to 1/√D, as in SDPA. Up to :data:`FEW_KEYS_MAX` rows run the
    one-tile kernel (``config``: BLOCK_M, STAGES, PROGRAMS per (batch, head), num_warps), more rows
    (or a ``config`` naming BLOCK_KV) the online-softmax kernel (``config``: BLOCK_M, BLOCK_KV,
    num_warps, num_stages; autotuned on CUDA when None). The output has q's strides.
    """
    b, h, n_q, d = q.shape
    rows = kp.shape[-2]
    out = torch.empty_like(q)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if kp.dtype != q.dtype:
        kp, vp = kp.to(q.dtype), vp.to(q.dtype)
    args = (q, kp, vp, out, n_q, rows, h, scale * math.log2(math.e),
            *q.stride(), *out.stride(), *kp.stride(), *vp.stride())
    common = dict(D=d, IEEE=q.dtype == torch.float32)
    if rows <= FEW_KEYS_MAX and (config is None or "BLOCK_KV" not in config):
        cfg = dict(config or (INTERPRET_FEW_KEYS if triton_interpreting() else FEW_KEYS_CONFIG))
        n_tiles = triton.cdiv(n_q, cfg["BLOCK_M"])
        programs = cfg.pop("PROGRAMS", None) or _programs(q, n_tiles, b * h)
        _few_keys_kernel[(min(programs, n_tiles), b * h)](
            *args, **common, **cfg, ROWS=max(16, triton.next_power_of_2(rows)),
            EVEN_M=n_q % cfg["BLOCK_M"] == 0, EVEN_KV=rows == max(16, triton.next_power_of_2(rows)))
        return out
    if config is None and not triton_interpreting():
        kernel = _tuned()
        grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), b * h)  # noqa: E731
        kernel[grid](*args, **common)
        return out
    cfg = dict(INTERPRET_ATTENTION if config is None else config)
    launch = {key: cfg.pop(key) for key in ("num_warps", "num_stages") if key in cfg}
    grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), b * h)
    _attention_kernel[grid](*args, **common, **cfg, EVEN_M=n_q % cfg["BLOCK_M"] == 0,
                            EVEN_KV=rows % cfg["BLOCK_KV"] == 0, **launch)
    return out
