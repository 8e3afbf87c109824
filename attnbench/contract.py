"""The method contract, checked where a method's output is used: what ``forward`` must return, and
that it leaves its inputs as it found them.

A method that returns the wrong shape or dtype, or writes into the q, k, v it was handed, would
otherwise yield rows that look fine and are wrong (an error figure of a broadcast output; every later
method's error measured against mutated inputs). Both checks turn that into an ``error`` row that says
what was expected and what came back.
"""
from __future__ import annotations

from typing import Sequence

import torch


class ContractViolation(Exception):
    """A method broke the output or input contract; the message says what was expected and found."""


def output_violation(out, *, shape: Sequence[int], dtype: torch.dtype,
                     device: torch.device) -> str | None:
    """Why ``out`` is not a (shape, dtype, device) tensor, or None. Finiteness is not checked here:
    a non-finite output is its own status (``nan``)."""
    if not isinstance(out, torch.Tensor):
        return f"expected a tensor of shape {tuple(shape)}, got {type(out).__name__}"
    problems = []
    if tuple(out.shape) != tuple(shape):
        problems.append(f"shape {tuple(out.shape)} (expected {tuple(shape)})")
    if out.dtype != dtype:
        problems.append(f"dtype {_name(out.dtype)} (expected {_name(dtype)})")
    if out.device.type != torch.device(device).type:
        problems.append(f"device {out.device} (expected {torch.device(device).type})")
    if not problems:
        return None
    return "output breaks the contract: " + ", ".join(problems)


def check_output(out, *, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """Raise :class:`ContractViolation` when ``out`` is not a (shape, dtype, device) tensor."""
    why = output_violation(out, shape=shape, dtype=dtype, device=device)
    if why is not None:
        raise ContractViolation(why)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fingerprint(tensors: Sequence[torch.Tensor]) -> tuple:
    """A cheap exact fingerprint of tensors' contents and metadata: a sum and a position-weighted sum
    of the raw bits in float64, per tensor. Any in-place write that changes a value changes it (up to
    a collision no real method makes)."""
    prints = []
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            prints.append(None)
            continue
        with torch.no_grad():
            bits = _as_ints(t.detach()).reshape(-1).to(torch.float64)
            weights = torch.arange(1, bits.numel() + 1, device=bits.device, dtype=torch.float64)
            prints.append((tuple(t.shape), tuple(t.stride()), t.dtype, float(bits.sum()),
                           float((bits * weights.remainder(1021.0)).sum())))
    return tuple(prints)


def _as_ints(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers (NaN payloads and -0.0 included)."""
    by_size = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.contiguous().view(by_size[t.element_size()])


def changed_inputs(names: Sequence[str], before: tuple, after: tuple) -> list[str]:
    """Names of the inputs whose fingerprint changed."""
    return [name for name, a, b in zip(names, before, after) if a != b]
