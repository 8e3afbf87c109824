"""What the methods' Triton kernels share: whether Triton is there and where it can run.

The kernels themselves live with their method families (``methods/linformer/linformer_triton.py``,
``methods/lsh/lsh_triton.py``, ``methods/nystrom/nystrom_triton.py``, installed as
``attnbench.methods.<family>``). Modules that use Triton import it lazily and guarded, so
``import attnbench`` and ``attnbench list`` never need it; :func:`triton_available` answers without
importing Triton, and the kernels' input checks share :data:`TRITON_MISSING` and
:func:`device_reason`.
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
