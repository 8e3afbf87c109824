"""What the methods that compile in their factory (FlexAttention in ``sparse`` and ``lsh``, ``performer``
with ``compile = true``) share: room for one compilation per cell, and a compiler failure turned into
an ``unsupported`` row with a one-line reason."""
from __future__ import annotations

from attnbench.errors import first_line
from attnbench.methodspec import Unsupported


def allow_recompiles(limit: int = 1024) -> None:
    """Every cell compiles its own shapes (and masks); dynamo's default limit of 8 recompilations
    would drop later cells to eager code (for FlexAttention: the fully materialising fallback)."""
    import torch._dynamo.config as dynamo_config

    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, max(getattr(dynamo_config, knob), limit))


def compile_failure(what: str, exc: BaseException) -> Unsupported:
    """``Unsupported("<what> failed: <type>: <first line>")``; inductor and Triton fail in many ways,
    and their messages run to pages."""
    return Unsupported(f"{what} failed: {type(exc).__name__}: {first_line(exc, 160)}")
