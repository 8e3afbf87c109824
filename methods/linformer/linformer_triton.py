"""Triton kernels for Linformer's forward: a split-K projection along the sequence and softmax attention
over the k projected rows.

Why: at n = 65536, k = 256, head_dim = 64 the projections E·K and F·V are (k, n) @ (n, D) products per
(batch, head), skinny with a huge reduction, which cuBLAS runs on few CTAs; and SDPA over only k keys
is far from its memory floor. Here:

- :func:`project_kv` projects K with E and V with F in one launch. A program reduces one CHUNK of
  the sequence for BLOCK_K projected rows and HEADS consecutive heads of K or of V: the heads share
  E's tile, so the right operand is (BLOCK_N, HEADS·D) and E is read from L2 H/HEADS times, not H
  times (the reuse factors, not HBM, are what bound a naive split-K here). Partial sums (fp32) are
  added into an fp32 buffer with atomics, so the summation order, and the last bits of the result,
  vary between runs. Head groups vary fastest in the grid, then K/V, so the programs that read one
  tile of E (or of E = F under ``kv``/``layerwise`` sharing) run together and share it through L2.
  E may be (k, n) (shared by the heads) or (H, k, n) (``sharing="none"``; then HEADS = 1), with any
  strides (``E[:, :m]`` for short inputs).
- :func:`attention` runs one program per (BLOCK_M queries, batch·head): online softmax (fp32, exp2)
  over tiles of the k projected rows, ``tl.dot`` for both products. Not causal (Linformer is not).

Forward only: there is no backward here; :class:`attnbench.methods.linformer.LinformerAttention`
uses these kernels only when no gradient is needed and its torch path otherwise.

On CUDA both kernels are autotuned over a few configurations at the first call for each shape (the
harness's untimed warm-up). In Triton's CPU interpreter (``TRITON_INTERPRET=1`` set before this
module is first imported) they run with fixed small tiles, for the tests. Importing this module
without Triton installed works; calling a kernel then raises ``RuntimeError``.
"""
from __future__ import annotations

import math

import torch

from attnbench.kernels import (TRITON_MISSING, device_reason, merged_heads, project_merged,
                               triton_available, triton_interpreting)

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
INTERPRET_ATTENTION = dict(BLOCK_M=32, BLOCK_KV=32)


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


def _attention_configs():
    c = triton.Config
    return [
        c(dict(BLOCK_M=128, BLOCK_KV=64), num_warps=4, num_stages=2),
        c(dict(BLOCK_M=128, BLOCK_KV=64), num_warps=8, num_stages=2),
        c(dict(BLOCK_M=128, BLOCK_KV=128), num_warps=8, num_stages=2),
        c(dict(BLOCK_M=256, BLOCK_KV=64), num_warps=8, num_stages=2),
    ]


_TUNED: dict[str, object] = {}


def _tuned(name: str):
    """The autotuned launcher of one kernel (built on first use: Triton is imported by then)."""
    if name not in _TUNED:
        h = triton.heuristics
        if name == "project":
            # the head strides of E and F are in the key: a config tuned for a shared E (HEADS > 1)
            # must never be reused for per-head projections of the same shape
            _TUNED[name] = triton.autotune(_project_configs(),
                                           key=["m", "rows", "BH", "H", "D", "sp1_h", "sp2_h"],
                                           reset_to_zero=["OUT"],
                                           prune_configs_by={"early_config_prune": _prune_project})(
                h({"EVEN_N": lambda a: a["m"] % a["CHUNK"] == 0,
                   "EVEN_K": lambda a: a["rows"] % a["BLOCK_K"] == 0})(_project_kernel))
        else:
            _TUNED[name] = triton.autotune(_attention_configs(), key=["n_q", "rows", "D"])(
                h({"EVEN_M": lambda a: a["n_q"] % a["BLOCK_M"] == 0,
                   "EVEN_KV": lambda a: a["rows"] % a["BLOCK_KV"] == 0})(_attention_kernel))
    return _TUNED[name]


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
        kernel = _tuned("project")
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
        kernel = _tuned("attention")
        grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), b * h)  # noqa: E731
        kernel[grid](*args, **common)
        return out
    cfg = dict(INTERPRET_ATTENTION if config is None else config)
    launch = {key: cfg.pop(key) for key in ("num_warps", "num_stages") if key in cfg}
    grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), b * h)
    _attention_kernel[grid](*args, **common, **cfg, EVEN_M=n_q % cfg["BLOCK_M"] == 0,
                            EVEN_KV=rows % cfg["BLOCK_KV"] == 0, **launch)
    return out


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
