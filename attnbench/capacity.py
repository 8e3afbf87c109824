"""Capacity mode: the largest batch of one (method, params, n) that fits in memory.

The Linformer paper's Table 3 reports "memory saved" as the ratio of these maximum batch sizes. The
search probes real steps (forward, or forward and backward) with OOM recovery: peak memory is close to
affine in the batch, so two measured probes predict the limit, and galloping plus bisection from that
guess pins it down with a handful of probes. A probe fits when it raises no out-of-memory error and,
if a limit is set (``--capacity-limit-mib``; required on CPU, where allocation rarely fails), its
measured peak stays under it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from attnbench.measure import MIB, Step, free_memory, is_oom, live_bytes, measure_memory


def find_max_batch(fits: Callable[[int], bool], max_batch: int = 1 << 16, guess: int = 1,
                   rel_tol: float = 0.0) -> int:
    """Largest b ≤ max_batch with fits(b), for a monotone ``fits``; 0 if batch 1 does not fit.

    Starts at ``guess``, gallops (×2 or ÷2) to bracket the limit, then bisects until the bracket is
    within ``rel_tol`` of the answer (0 = exact)."""
    guess = max(1, min(guess, max_batch))
    if fits(guess):
        lo = guess
        hi = None
        while hi is None:
            if lo >= max_batch:
                return max_batch
            trial = min(lo * 2, max_batch)
            if fits(trial):
                lo = trial
            else:
                hi = trial
    else:
        hi = guess
        lo = None
        while lo is None:
            if hi == 1:
                return 0
            trial = max(1, hi // 2)
            if fits(trial):
                lo = trial
            else:
                hi = trial
    while hi - lo > max(1, int(lo * rel_tol)):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


class CapacityProbe:
    """Runs one step of an already-built module at a given batch and says whether it fits."""

    def __init__(self, module: torch.nn.Module, make_inputs: Callable[[int], tuple],
                 out_shape: Callable[[int], tuple], mode: str, device: torch.device,
                 limit_mib: float):
        self.module, self.make_inputs, self.out_shape = module, make_inputs, out_shape
        self.mode, self.device, self.limit_mib = mode, device, limit_mib
        self.peaks: dict[int, float] = {}
        self.probes = 0

    def __call__(self, batch: int) -> bool:
        self.probes += 1
        try:
            inputs = self.make_inputs(batch)
            step = Step.make(self.module, inputs, self.mode, self.out_shape(batch), torch.Generator())
            mem = measure_memory(step, self.device, live=live_bytes(step.inputs, [self.module]))
            del inputs, step
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            free_memory(self.device, collect=True)
            return False
        free_memory(self.device)
        self.peaks[batch] = mem["peak_mem_mib"]
        return not self.limit_mib or mem["peak_mem_mib"] <= self.limit_mib

    def predicted(self, budget_mib: float) -> int:
        """Batch predicted from the affine fit of the peaks at batch 1 and 2."""
        if 1 not in self.peaks or 2 not in self.peaks:
            return 1
        per_seq = max(self.peaks[2] - self.peaks[1], 1e-6)
        fixed = self.peaks[1] - per_seq
        return max(1, math.floor((budget_mib - fixed) / per_seq))


def device_budget_mib(device: torch.device, limit_mib: float) -> float:
    if limit_mib:
        return limit_mib
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return (free + torch.cuda.memory_allocated(device)) / MIB
    raise ValueError("capacity mode on CPU needs a memory limit (--capacity-limit-mib)")


def max_batch(probe: CapacityProbe, device: torch.device, limit_mib: float, cap: int,
              rel_tol: float) -> int:
    """Search the largest batch with ``probe``: probes at 1 and 2 predict the limit, then gallop."""
    if not probe(1):
        return 0
    if cap == 1 or not probe(2):
        return 1
    guess = probe.predicted(device_budget_mib(device, limit_mib))
    return find_max_batch(probe, max_batch=cap, guess=min(guess, cap), rel_tol=rel_tol)
