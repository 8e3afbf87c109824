"""Kernels the methods in ``methods/`` call: hand-written Triton kernels for methods whose plain-torch
form leaves the GPU idle (``linformer_triton``, ``lsh_triton``), LSH's FlexAttention form
(``lsh_flex``) and the chunked torch form of causal linear attention (``causal_linear``).

Modules that use Triton import it lazily and guarded, so ``import attnbench`` and ``attnbench list``
never need it; :func:`triton_available` answers without importing Triton.
"""
from __future__ import annotations

import importlib.util
import os


def triton_available() -> bool:
    """Whether Triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton kernels would run in its CPU interpreter (``TRITON_INTERPRET=1``).

    Triton decides this when a kernel is decorated, i.e. when the kernel module is first imported;
    the environment is what it reads then.
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
