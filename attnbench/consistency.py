"""Incremental-decoding consistency: stepping through a sequence one token at a time must give the
outputs of the method's causal forward over the whole sequence (CAB's check of a decode path).

The method is built causal for n positions and run forward over seeded q, k, v (B, H, n, D). Then,
for each prefix length p (1, so that nearly every token is stepped, and n/2, so that a long prefix is
folded in by ``init_state``), the state is built from the first p tokens and tokens p..n-1 are
stepped; every step's output is compared with the forward's row. A step that sees a future token, or a
state that drops or misplaces a past one, moves some output by O(1) of the output's scale; rounding
moves it by about the dtype's epsilon times a small factor. The tolerance, relative to the largest
output magnitude, sits between the two: fp64 1e-10, fp32 2e-5, fp16 1e-2, bf16 5e-2 (a chunked
forward and a recurrent step add in different orders; measured on the built-in methods: fp32 ≤ 2e-6).

Used by the tests for every built-in decode method and by ``attnbench check`` (its ``decode`` row) for
any method, plugins included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attnbench.methodspec import BuildContext, MethodSpec

DECODE_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass(frozen=True)
class Consistency:
    """The worst step against the causal forward, over the prefixes tried."""

    rel_err: float  # max |step - forward| / max |forward|
    position: int  # the token where it was worst
    prefix: int  # with which prefix length
    tol: float
    steps: int  # tokens stepped in all

    @property
    def ok(self) -> bool:
        return self.rel_err <= self.tol  # NaN fails

    def detail(self) -> str:
        return (f"{self.steps} steps against the causal forward: max rel error {self.rel_err:.1e} "
                f"(at token {self.position}, prefix {self.prefix}), tol {self.tol:.0e}")


def qkv(batch: int, heads: int, n: int, head_dim: int, dtype: torch.dtype, device, seed: int = 0):
    g = torch.Generator().manual_seed(2000 + seed)
    return tuple(torch.randn(batch, heads, n, head_dim, generator=g).to(device, dtype)
                 for _ in range(3))


@torch.no_grad()
def step_through(module: torch.nn.Module, q, k, v, prefix: int) -> torch.Tensor:
    """Outputs (B, H, n - prefix, D) of tokens prefix..n-1, stepped one at a time after
    ``init_state`` on the first ``prefix`` tokens."""
    n = q.shape[-2]
    state = module.init_state(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix], capacity=n)
    outs = []
    for t in range(prefix, n):
        out, state = module.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state)
        outs.append(out)
    return torch.cat(outs, dim=2)


@torch.no_grad()
def decode_consistency(spec: MethodSpec, params: Any = None, *, n: int = 64, batch: int = 2,
                       heads: int = 2, head_dim: int = 16, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu", seed: int = 0,
                       prefixes: tuple[int, ...] | None = None) -> Consistency:
    """Step ``spec`` (built causal at n with ``params``, default its defaults) through seeded
    inputs and compare with its causal forward (module docstring)."""
    device = torch.device(device)
    params = spec.params() if params is None else params
    ctx = BuildContext(n=n, heads=heads, head_dim=head_dim, dtype=dtype, batch=batch, device=device,
                       causal=True, seed=seed)
    module = spec.build(params, ctx)
    q, k, v = qkv(batch, heads, n, head_dim, dtype, device, seed)
    full = module(q, k, v).double()  # (B, H, n, D)
    scale = float(full.abs().max()) or 1.0
    worst = (-1.0, 0, 0)
    steps = 0
    for prefix in prefixes or sorted({1, max(1, n // 2)}):
        stepped = step_through(module, q, k, v, prefix).double()
        diff = (stepped - full[:, :, prefix:]).abs().amax(dim=(0, 1, 3))  # (n - prefix,)
        diff = torch.nan_to_num(diff, nan=float("inf"))
        at = int(diff.argmax())
        err = float(diff[at]) / scale
        steps += n - prefix
        if err > worst[0]:
            worst = (err, prefix + at, prefix)
    return Consistency(worst[0], worst[1], worst[2], DECODE_TOL[dtype], steps)
