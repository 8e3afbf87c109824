"""What the methods' kernels share. The kernels live with their families: ``linformer_triton``,
``lsh_triton``, ``nystrom_triton`` (hand-written Triton kernels for methods whose plain-torch form
leaves the GPU idle), ``performer.causal_linear`` (the chunked torch form of causal linear attention)
and ``nystrom.split_keys`` (few-query attention over key ranges merged by log-sum-exp), all under
``attnbench.methods``.

Modules that use Triton import it lazily and guarded, so ``import attnbench`` and ``attnbench list``
never need it; :func:`triton_available` answers without importing Triton, and the kernels' input checks
share :data:`TRITON_MISSING` and :func:`device_reason`. :func:`merged_heads`,
:func:`project_merged` and :func:`shared_bmm` are the layout helpers Linformer's torch and Triton paths
share.
"""
from __future__ import annotations

import importlib.util
import os

import torch


def triton_available() -> bool:
    """Whether Triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton kernels would run in its CPU interpreter (``TRITON_INTERPRET=1``).

    Triton decides this when a kernel is decorated, i.e. when the kernel module is first imported;
    the environment is what it reads then.
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


TRITON_MISSING = "triton not installed (pip install triton)"


def device_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None if they can): CUDA, or the CPU under
    Triton's interpreter."""
    if device.type != "cuda" and not (device.type == "cpu" and triton_interpreting()):
        return f"device {device.type}: needs CUDA (or TRITON_INTERPRET=1 for the CPU interpreter)"
    return None


def merged_heads(x: torch.Tensor) -> torch.Tensor | None:
    """(B, H, m, D) stored as (B, m, H, D) (a layer's projection makes them so) -> its (B, m, H·D) view;
    None for other layouts. A matrix shared by the heads then multiplies all heads in one wide product
    (Linformer's E and F), which on an H100 ran the two (256, 65536) projections of 12 heads in
    0.12 ms against 0.28 ms as 12 narrow (256 × 64) products per head."""
    b, h, m, d = x.shape
    if h > 1 and x.stride(3) == 1 and x.stride(1) == d:
        return x.transpose(1, 2).view(b, m, h * d)
    return None


def project_merged(p: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """(k, m) @ (B, m, H·D) -> (B, k, H·D): a plain matrix product when B = 1 (on an H100, cuBLAS ran
    the batch-of-one product about 5 µs slower at k = 256, m = 65536, H·D = 768), else one strided
    batched product with ``p`` broadcast (batch stride 0), see :func:`shared_bmm`."""
    if flat.shape[0] == 1:
        return torch.mm(p, flat[0]).unsqueeze(0)
    return shared_bmm(p, flat)


def shared_bmm(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(k, m) @ (B, m, c) -> (B, k, c) as one ``bmm`` with ``p`` expanded over the batch (stride 0,
    nothing copied).

    ``p[None] @ x`` computes the same, but ``torch.matmul`` turns a broadcast batch-of-one operand into a
    single ``mm`` by folding ``x``'s batch into its columns, which copies ``x`` (and the result back):
    on an H100 those copies were 55% of a Linformer layer's GPU time (fp16, n = 1024, B = 8: 0.158 ms
    per call in graph replay, 0.077 ms with this product), and 1.85 against 0.82 ms at n = 16384.
    """
    return torch.bmm(p.expand(x.shape[0], *p.shape), x)
