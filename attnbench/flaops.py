"""What the ``recurrent`` methods need from fla-core (https://github.com/fla-org/flash-linear-attention),
kept in one place: importing its operators, Triton's autotune cache, the correctness gate against
fla's own naive references, and telling fla's refusals from failures.

fla-core is pure Python + Triton (``pip install 'attnbench[fla]'``, i.e. ``fla-core==0.6.0``; not
``flash-linear-attention``, which pins transformers). It imports on a machine without a GPU, and its
naive references (``fla/ops/*/naive.py``) are plain torch, but its kernels need CUDA.

Autotuning: the first call of each fla kernel at a new key autotunes for tens of seconds. Factories
make that call while building (never timed) and, unless the user set it, turn on Triton's on-disk
autotune cache (``TRITON_CACHE_AUTOTUNING=1``, under ``TRITON_CACHE_DIR``) before fla is first
imported, so a later process reuses the tunings. fla's own config cache (``FLA_CACHE_MODE``) only reads
pre-tuned configs, which the wheel does not ship.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

import torch

from attnbench.errors import first_line
from attnbench.methodspec import BuildContext, Unsupported

REQUIRES = ("fla", "einops", "triton")
INSTALL_HINT = "pip install 'attnbench[fla]'"
# what fla says when it refuses a computation it knows to be wrong on this stack (e.g. the gated
# chunk backward on Hopper with 3.4 <= Triton < 3.7.1: "... produces incorrect results for ...")
REFUSALS = ("produces incorrect results",)
GATE_TOL = {torch.float32: 5e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}
GATE_N = 256  # positions of the gate check's inputs


class GateFailed(Exception):
    """fla's kernel disagrees with fla's naive reference on the gate check's inputs."""


def enable_autotune_cache() -> str:
    """Turn on Triton's on-disk autotune cache unless the user decided (call before importing fla);
    returns where tunings are kept, for the rows."""
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    where = os.environ.get("TRITON_CACHE_DIR", "~/.triton/cache")
    on = os.environ["TRITON_CACHE_AUTOTUNING"] not in ("0", "", "false", "False")
    return where if on else "off (TRITON_CACHE_AUTOTUNING=0)"


def load(path: str) -> Callable:
    """``"fla.ops.gla:chunk_gla"`` -> the function (fla is imported here, never at module import)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def refusal(exc: BaseException) -> str | None:
    """fla's own words when ``exc`` is one of its refusals, else None."""
    text = str(exc).strip()
    if isinstance(exc, RuntimeError) and any(marker in text for marker in REFUSALS):
        return " ".join(text.split())
    return None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300))


def check_gate(name: str, out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> float:
    """The relative error of fla's kernel against fla's naive fp32 reference; raises
    :class:`GateFailed` above the dtype's tolerance."""
    err = rel_err(out, ref)
    tol = GATE_TOL.get(dtype, 5e-2)
    if not err <= tol:  # NaN fails too
        raise GateFailed(f"{name}: fla's kernel disagrees with fla's naive fp32 reference on the gate "
                         f"check (n={ref.shape[1]}): rel_err {err:.3g} > {tol:g}")
    return err


def backward_probe(call: Callable[[], torch.Tensor]) -> tuple[str, str | None]:
    """Run ``call()`` and a backward through it: ("ok", None), ("refused", fla's reason) or
    ("failed", the exception's first line). Never raises for an exception of fla's."""
    try:
        call().float().square().mean().backward()
    except Exception as exc:  # noqa: BLE001 - classified below, re-raised at use
        if (why := refusal(exc)) is not None:
            return "refused", why
        if "out of memory" in str(exc).lower():
            raise
        line = first_line(exc, 200)
        return "failed", f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return "ok", None


def fla_assertion(exc: AssertionError) -> str:
    """fla states its shape and dtype rules as assertions: their text is the unsupported reason."""
    return f"fla: {str(exc).strip() or 'assertion failed'}"


def autocast(ctx: BuildContext):
    """The autocast the module will run under (``ctx.amp``), or none."""
    return torch.autocast(ctx.device.type, dtype=ctx.amp or torch.float32, enabled=ctx.amp is not None)


def prepare(module: torch.nn.Module, core, ctx: BuildContext, inputs) -> None:
    """Load fla's kernel into ``core``, gate it against fla's naive reference, probe the backward and
    warm ``module`` up at the cell's shape (autotuning, untimed). ``inputs(b, n)`` draws its inputs.

    Everything runs in the dtypes the cell will use: a train cell builds its model in fp32 and runs it
    under bf16 autocast (``ctx.amp``), so the gate's inputs are bf16 and the warm-up runs under that
    autocast. Triton's autotune key holds the dtypes: a warm-up in fp32 would tune kernels the cell
    never calls, and the first training step would tune the bf16 ones again, inside the training loop
    (on the H200, 165 s of build then 116 s more in the first steps of one fla_linear cell)."""
    op = core.op
    where = enable_autotune_cache()
    work = ctx.work_dtype
    try:
        core.kernel = load(op.kernel_path)
        naive_fn = load(op.naive_path)
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 17)
        shape = (1, ctx.heads, min(ctx.n, op.gate_n()), ctx.head_dim)
        q, k, v = (torch.randn(shape, generator=gen, device=ctx.device).to(work) for _ in range(3))
        with torch.no_grad():
            err = check_gate(op.name, core(q, k, v), core.naive(naive_fn, q, k, v), work)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        core.backward_status = backward_probe(lambda: core(*leaves))
        status, why = core.backward_status
        x = inputs(ctx.batch, ctx.n)
        with torch.no_grad(), autocast(ctx):
            module(*x)
        if status == "ok":
            with autocast(ctx):
                out = module(*(t.requires_grad_() for t in x))
            out.float().square().mean().backward()
            module.zero_grad(set_to_none=True)
    except AssertionError as exc:
        raise Unsupported(fla_assertion(exc)) from exc
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    under = f" under {str(ctx.amp).removeprefix('torch.')} autocast" if ctx.amp is not None else ""
    core._stats.update(fla_gate_rel_err=err, fla_backward=status if why is None else f"{status}: {why}",
                       autotune="at build: forward" + (" and backward" if status == "ok" else "") +
                       f" at the cell's shape{under}, untimed", autotune_cache=where)
