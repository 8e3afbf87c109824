"""Triton kernels for Nyströmformer's iterative pseudo-inverse (https://arxiv.org/abs/2102.03902;
:mod:`attnbench.methods.nystrom`, ``kernel="triton"``).

Z ← ¼Z(13I − AZ(15I − AZ(7I − AZ))) on a batch of (m, m) fp32 matrices, (B·H, m, m): every
"cI − XY" is one launch with cI in the product's epilogue; the three products of a step that are
symmetric in exact arithmetic compute only the tiles on and above the diagonal and mirror them; the
start Z₀ = Aᵀ/(‖A‖₁‖A‖∞) is two launches. Products are fp32 fused multiply-adds
(``input_precision="ieee"``, no TF32). Forward only (the method takes its torch path when a gradient
is needed). Under ``TRITON_INTERPRET=1`` (set before this module is first imported) the kernels run
on the CPU for the tests; without Triton the module imports and a call raises ``RuntimeError``. Why
these kernels, and what we measured: results/README.md, "Notes from the method modules".
"""
from __future__ import annotations

import torch

from attnbench.kernels import TRITON_MISSING, device_reason, triton_available, triton_interpreting

try:  # guarded: the package and the torch path must work without Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

MIN_M = 16  # tiles are at least 16 wide (tl.dot); smaller landmark counts take the torch path
INTERPRET_CONFIG = dict(BLOCK=16, BLOCK_K=16)  # small tiles for the interpreter: several per side


def unsupported_reason(a: torch.Tensor) -> str | None:
    """Why the kernels cannot invert this batch of (m, m) matrices (None if they can)."""
    if not triton_available():
        return TRITON_MISSING
    if (why := device_reason(a.device)) is not None:
        return why
    if a.dtype != torch.float32:
        return f"dtype {a.dtype}: the kernels take the fp32 landmark matrix"
    m = a.shape[-1]
    if a.dim() < 2 or a.shape[-2] != m:
        return f"expected square matrices, got {tuple(a.shape)}"
    if m < MIN_M or m % 16:
        return f"num_landmarks={m}: the kernels take multiples of 16 from {MIN_M}"
    if a.numel() >= 2**31:
        return "2**31 elements or more (int32 offsets)"
    return None


if triton is not None:

    @triton.jit
    def _product_kernel(X, Y, OUT, OUT2, M, alpha, beta, gamma, delta,
                        SYM: tl.constexpr, TWO: tl.constexpr, BLOCK: tl.constexpr,
                        BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
        """OUT[b] = alpha·X[b]Y[b] + beta·I (and OUT2[b] = gamma·X[b]Y[b] + delta·I when TWO) for one
        (BLOCK, BLOCK) tile; contiguous (batch, M, M) fp32. SYM: the product is known symmetric, so
        only tiles on or above the diagonal compute, each writing its mirror too."""
        tiles = tl.cdiv(M, BLOCK)
        ti = tl.program_id(0) // tiles
        tj = tl.program_id(0) % tiles
        if SYM and ti > tj:
            return
        base = tl.program_id(1).to(tl.int64) * M * M
        offs_m = ti * BLOCK + tl.arange(0, BLOCK)
        offs_n = tj * BLOCK + tl.arange(0, BLOCK)
        offs_k = tl.arange(0, BLOCK_K)
        x_ptrs = X + base + offs_m[:, None] * M + offs_k[None, :]
        y_ptrs = Y + base + offs_k[:, None] * M + offs_n[None, :]
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k0 in range(0, M, BLOCK_K):
            if EVEN:
                x = tl.load(x_ptrs)
                y = tl.load(y_ptrs)
            else:
                k_ok = (k0 + offs_k) < M
                x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
                y = tl.load(y_ptrs, mask=k_ok[:, None] & (offs_n[None, :] < M), other=0.0)
            acc = tl.dot(x, y, acc, input_precision="ieee")
            x_ptrs += BLOCK_K
            y_ptrs += BLOCK_K * M
        diag = offs_m[:, None] == offs_n[None, :]
        ok = (offs_m[:, None] < M) & (offs_n[None, :] < M)
        r = alpha * acc + tl.where(diag, beta, 0.0)
        tl.store(OUT + base + offs_m[:, None] * M + offs_n[None, :], r, mask=ok)
        if SYM:
            if ti != tj:
                tl.store(OUT + base + offs_n[None, :] * M + offs_m[:, None], r, mask=ok)
        if TWO:
            r2 = gamma * acc + tl.where(diag, delta, 0.0)
            tl.store(OUT2 + base + offs_m[:, None] * M + offs_n[None, :], r2, mask=ok)
            if SYM:
                if ti != tj:
                    tl.store(OUT2 + base + offs_n[None, :] * M + offs_m[:, None], r2, mask=ok)


    @triton.jit
    def _norm_parts_kernel(A, PART_COLS, PART_ROW, M, BLOCK_ROWS: tl.constexpr,
                           WIDTH: tl.constexpr):
        """For one block of BLOCK_ROWS rows of one matrix: its column sums of |A| (WIDTH ≥ M wide) and
        its largest row sum, into (batch, blocks, M) and (batch, blocks)."""
        b, r = tl.program_id(0).to(tl.int64), tl.program_id(1)
        blocks = tl.num_programs(1)
        rows = r * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.arange(0, WIDTH)
        ok = (rows[:, None] < M) & (cols[None, :] < M)
        t = tl.abs(tl.load(A + b * M * M + rows[:, None] * M + cols[None, :], mask=ok, other=0.0))
        tl.store(PART_COLS + (b * blocks + r) * M + cols, tl.sum(t, axis=0), mask=cols < M)
        tl.store(PART_ROW + b * blocks + r, tl.max(tl.sum(t, axis=1), axis=0))

    @triton.jit
    def _start_kernel(A, Z, PART_COLS, PART_ROW, M, BLOCKS: tl.constexpr, WIDTH: tl.constexpr,
                      TILE: tl.constexpr):
        """Z[b] = A[b]ᵀ / (‖A[b]‖₁‖A[b]‖∞) for one (TILE, TILE) tile of Z, the norms reduced from
        the row blocks' parts (max column sum, max row sum)."""
        b = tl.program_id(1).to(tl.int64)
        tiles = tl.cdiv(M, TILE)
        ti, tj = tl.program_id(0) // tiles, tl.program_id(0) % tiles
        blocks = tl.arange(0, BLOCKS)
        cols = tl.arange(0, WIDTH)
        parts = tl.load(PART_COLS + (b * BLOCKS + blocks[:, None]) * M + cols[None, :],
                        mask=cols[None, :] < M, other=0.0)
        norms = tl.max(tl.sum(parts, axis=0), axis=0) * tl.max(tl.load(PART_ROW + b * BLOCKS +
                                                                        blocks), axis=0)
        rows = tj * TILE + tl.arange(0, TILE)  # rows of A = columns of Z
        zcols = ti * TILE + tl.arange(0, TILE)
        ok = (rows[:, None] < M) & (zcols[None, :] < M)
        t = tl.load(A + b * M * M + rows[:, None] * M + zcols[None, :], mask=ok, other=0.0)
        tl.store(Z + b * M * M + zcols[None, :] * M + rows[:, None], t / norms, mask=ok)


# One fixed tiling, no autotuning (its per-launch Python cost would be paid 24 times a call in eager
# mode). Measured on an H100 (fp32, m = 256, six steps, graph replay), 64-tiles with BLOCK_K = 32 and a
# three-stage pipeline against the next best tilings: 0.271 against 0.276 ms (BLOCK_K 16) at 8
# matrices, 0.749 against 0.776 (two stages) at 32, 1.065 against 1.136 (two stages) at 64; torch's
# batched products took 0.39 and 1.59 ms at 8 and 64. 128-tiles took twice as long; 3×TF32 products
# (``input_precision="tf32x3"``) were 10–30% slower than these fp32 ones, and one-pass TF32 was not
# accurate enough (3e-3 off the float64 iteration, against 2e-6).
CUDA_CONFIG = dict(BLOCK=64, BLOCK_K=32, num_warps=4, num_stages=3)
# The start Z₀: row blocks of about START_ELEMENTS elements for the norms, then START_TILE-wide tiles
START_ELEMENTS, START_TILE = 4096, 64


def _product(x, y, out, alpha, beta, *, sym, out2=None, gamma=0.0, delta=0.0, config=None):
    """out = alpha·xy + beta·I (and out2 = gamma·xy + delta·I) over a (batch, m, m) stack."""
    batch, m = x.shape[0], x.shape[-1]
    args = (x, y, out, out2 if out2 is not None else out, m, alpha, beta, gamma, delta)
    if config is None:
        config = INTERPRET_CONFIG if triton_interpreting() else CUDA_CONFIG
    cfg = dict(config)
    launch = {key: cfg.pop(key) for key in ("num_warps", "num_stages") if key in cfg}
    grid = (triton.cdiv(m, cfg["BLOCK"]) ** 2, batch)
    _product_kernel[grid](*args, SYM=sym, TWO=out2 is not None, **cfg,
                          EVEN=m % cfg["BLOCK"] == 0 and m % cfg["BLOCK_K"] == 0,
                          **launch)


def _start(a3: torch.Tensor, z: torch.Tensor) -> None:
    """z = a3ᵀ/(‖a3‖₁‖a3‖∞) per matrix: two launches (the norms' parts over row blocks, then the
    scaled transpose by tiles), where torch needs seven small ones."""
    batch, m = a3.shape[0], a3.shape[-1]
    width = triton.next_power_of_2(m)
    rows = triton.next_power_of_2(max(1, START_ELEMENTS // width))
    blocks = triton.cdiv(m, rows)
    if blocks & (blocks - 1):  # a power of two, for tl.arange: pad with empty blocks
        blocks = triton.next_power_of_2(blocks)
    part_cols = a3.new_empty(batch, blocks, m)
    part_row = a3.new_empty(batch, blocks)
    _norm_parts_kernel[(batch, blocks)](a3, part_cols, part_row, m, BLOCK_ROWS=rows, WIDTH=width)
    tile = 16 if triton_interpreting() else START_TILE
    _start_kernel[(triton.cdiv(m, tile) ** 2, batch)](a3, z, part_cols, part_row, m, BLOCKS=blocks,
                                                      WIDTH=width, TILE=tile)


def iterative_pinv(a: torch.Tensor, iters: int, config: dict | None = None) -> torch.Tensor:
    """The paper's pseudo-inverse iteration over a batch (..., m, m) of fp32 matrices, started from
    Z₀ = Aᵀ/(‖A‖₁‖A‖∞) per matrix, as :func:`attnbench.methods.nystrom.iterative_pinv` (the torch
    reference). ``config``: BLOCK, BLOCK_K and optionally num_warps, num_stages (default
    :data:`CUDA_CONFIG`, :data:`INTERPRET_CONFIG` in the interpreter)."""
    if triton is None:
        raise RuntimeError("attnbench.methods.nystrom.nystrom_triton needs triton (pip install triton)")
    if (why := unsupported_reason(a)) is not None:
        raise ValueError(f"Nyström Triton kernels cannot run this: {why}")
    lead, m = a.shape[:-2], a.shape[-1]
    a3 = a.reshape(-1, m, m).contiguous()
    z, az, t1, t2, t3, z_next = (torch.empty_like(a3) for _ in range(6))
    _start(a3, z)
    for _ in range(iters):
        _product(a3, z, az, 1.0, 0.0, sym=True, out2=t1, gamma=-1.0, delta=7.0, config=config)
        _product(az, t1, t2, -1.0, 15.0, sym=True, config=config)  # 15I − AZ(7I − AZ)
        _product(az, t2, t3, -1.0, 13.0, sym=True, config=config)  # 13I − AZ(…)
        _product(z, t3, z_next, 0.25, 0.0, sym=False, config=config)  # ¼Z(…)
        z, z_next = z_next, z
    return z.reshape(*lead, m, m)
