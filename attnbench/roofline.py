"""Roofline columns: how close a cell comes to the least data movement and arithmetic it needs.

The floor for memory is reading every input and parameter once and writing every output once (for
fwd_bwd also reading the output gradient and writing the input and parameter gradients), divided by
the device's copy bandwidth measured in the same run. The floor for arithmetic is the method's own
FLOP count (where it reports one) over a measured dense matmul rate in the cell's dtype. The
``*_roofline_frac`` columns are floor time / measured time: 1.0 would be at the hardware limit.
``tb_per_s`` is the achieved rate of that least data movement (min_bytes over the time) beside the
measured copy rate (``copy_gbs``); ``tflops_per_s`` (from the cell) the achieved FLOP rate beside
``matmul_tflops``. FLOPs are counted over the pairs a mask allows (:mod:`attnbench.flops`).
"""
from __future__ import annotations

import torch

from attnbench.measure import time_call


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def min_bytes(step, out_shape: tuple[int, ...]) -> int:
    """Bytes a step must move at least: inputs and parameters in, outputs (and gradients) out."""
    params = [p for p in step.module.parameters()]
    ref = step.inputs[0]
    out = torch.Size(out_shape).numel() * ref.element_size()
    moved = tensor_bytes(step.inputs) + tensor_bytes(params) + out
    if step.mode == "fwd_bwd":
        moved += out + tensor_bytes(step.wrt)  # read grad_out, write every gradient
    return moved


def copy_bandwidth_gbs(device: torch.device, mib: int = 1024) -> float:
    """Device-to-device copy bandwidth, counting bytes read and written (GB/s)."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    src.random_(0, 255)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), device, warmup=3, repeats=20, warmup_s=0.05)
    return 2 * src.numel() / (t.median / 1e3) / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192) -> float:
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    t = time_call(lambda: a @ b, device, warmup=3, repeats=10, warmup_s=0.1)
    return 2 * size**3 / (t.median / 1e3) / 1e12


def roofline_columns(rates: dict, step, out_shape, time_ms: float, flops: float | None) -> dict:
    """Columns for one cell given the run's measured ``rates`` (copy_gbs, matmul_tflops)."""
    moved = min_bytes(step, out_shape)
    floor_ms = moved / (rates["copy_gbs"] * 1e9) * 1e3
    row = {"min_bytes": moved, "copy_gbs": rates["copy_gbs"], "mem_floor_ms": floor_ms,
           "mem_roofline_frac": floor_ms / time_ms, "tb_per_s": moved / (time_ms / 1e3) / 1e12}
    if flops:
        flop_floor_ms = flops / (rates["matmul_tflops"] * 1e12) * 1e3
        row.update(matmul_tflops=rates["matmul_tflops"], flop_floor_ms=flop_floor_ms,
                   flop_roofline_frac=flop_floor_ms / time_ms)
    return row
