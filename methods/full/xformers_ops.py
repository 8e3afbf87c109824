"""``xformers``: xformers' memory-efficient attention (Rabe & Staats, https://arxiv.org/abs/2112.05682).

The op is chosen once at build time, on a probe of the cell's shape: xformers' own dispatch first, then
every forward op the installed xformers ships; rows name the op that ran, and when none works the
reasons are xformers' own words. q, k, v (B, H, N, D) go to xformers as (B, N, H, D) transposed
views (no copy); the output comes back as (B, H, N, D).
"""
from __future__ import annotations

from torch import nn

from attnbench.methods.full.dense import exact_flops


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


def extension_failure() -> str | None:
    """xformers' own words, in one line, when its C++/CUDA extension did not load (built for another
    torch, Python or CUDA runtime); without it every operator, the PyTorch-backed ``-pt`` ones too,
    refuses CUDA inputs. None when it loaded or xformers says nothing."""
    try:
        from xformers import _cpp_lib
    except Exception:  # noqa: BLE001 - a private module: only the message depends on it
        return None
    exc = getattr(_cpp_lib, "_cpp_library_load_exception", None)
    if exc is None:
        return None
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not line.lower().startswith(("please reinstall", "set "))]
    return " ".join(kept[:3])[:300] or type(exc).__name__  # what failed, and the builds compared

