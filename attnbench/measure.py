"""Measurement, the same for every method: time, peak memory and error. Never prints.

Time: warm-up calls, then repeated timed calls; CUDA events on GPU (the clock runs on the device, so
launch queues and asynchronous kernels are counted where they run), ``perf_counter`` on CPU. All
samples are kept; rows report median, IQR and count.

Memory: on CUDA the allocator's peak during one call over what was allocated before it (extra), the
absolute peak and the reserved peak, with stats reset and the cache emptied first. On CPU the peak of
the running sum of allocations and frees that torch's profiler records during one call (extra); the
absolute peak adds the bytes of the inputs, parameters and buffers that were live before the call.
"""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

MIB = 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in msg or "can't allocate memory" in msg or isinstance(exc, MemoryError))


def free_memory(device: torch.device, collect: bool = False, baseline: int | None = None) -> None:
    """Release a cell's memory. Tensors go with their last reference; a full ``gc.collect`` (a third
    of a second with torch's object graph loaded) runs after a failure, whose traceback frames may
    keep tensors alive, and on CUDA when more is still allocated than ``baseline`` (bytes allocated
    before the cell), in case a reference cycle holds the cell's tensors. It does not free what a
    failed CUDA-graph capture leaves allocated (measured on torch 2.11: 66 MiB after one failed capture
    of linformer-pytorch's layer at n = 4096, batch 8); that stays for the process and counts in later
    cells' absolute peak, not in their ``extra_mem_mib``."""
    if device.type == "cuda" and baseline is not None and not collect:
        torch.cuda.synchronize(device)
        collect = torch.cuda.memory_allocated(device) > baseline
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Timing:
    samples_ms: tuple[float, ...]
    mode: str = "eager"  # eager | cuda-graph

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def iqr(self) -> float:
        if len(self.samples_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def min(self) -> float:
        return min(self.samples_ms)


def warm_up(fn: Callable[[], Any], device: torch.device, *, warmup: int = 3,
            warmup_s: float = 0.1) -> None:
    """At least ``warmup`` calls and at least ``warmup_s`` seconds of them (CPU thread pools and GPU
    clocks take a while to settle), at most 100 calls past ``warmup``."""
    t_warm = time.perf_counter()
    calls = 0
    while calls < warmup or (time.perf_counter() - t_warm < warmup_s and calls < 100):
        fn()
        sync(device)
        calls += 1


def take_samples(fn: Callable[[], Any], device: torch.device, *, repeats: int = 10,
                 max_time_s: float | None = None, min_repeats: int = 3) -> list[float]:
    """``repeats`` timed calls (ms): CUDA events on GPU, ``perf_counter`` on CPU; stop early once
    ``max_time_s`` is spent, keeping at least ``min_repeats``."""
    samples: list[float] = []
    start_all = time.perf_counter()
    if device.type == "cuda":
        for i in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
            if max_time_s and i + 1 >= min_repeats and time.perf_counter() - start_all > max_time_s:
                break
    else:
        for i in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
            if max_time_s and i + 1 >= min_repeats and time.perf_counter() - start_all > max_time_s:
                break
    return samples


def time_call(fn: Callable[[], Any], device: torch.device, *, warmup: int = 3, repeats: int = 10,
              max_time_s: float | None = None, min_repeats: int = 3, warmup_s: float = 0.1) -> Timing:
    """Time ``fn`` after warm-up; stop early once ``max_time_s`` is spent (keeping at least
    ``min_repeats`` samples) so one slow cell cannot stall a sweep."""
    warm_up(fn, device, warmup=warmup, warmup_s=warmup_s)
    return Timing(tuple(take_samples(fn, device, repeats=repeats, max_time_s=max_time_s,
                                     min_repeats=min_repeats)))


_SIDE_STREAMS: dict = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for the warm-up calls before captures. A new stream per capture
    would cost a cuBLAS workspace each (cuBLAS keeps one per stream, tens of MiB, never freed), which
    then counts in every later cell's absolute peak memory."""
    device = torch.device(device)
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[key]


def capture_cuda_graph(fn: Callable[[], Any], device: torch.device, *,
                       warmup: int = 3) -> torch.cuda.CUDAGraph:
    """One call of ``fn`` captured in a CUDA graph, after ``warmup`` calls on a side stream (lazy
    setup must not happen inside the capture)."""
    stream = side_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def time_cuda_graph(fn: Callable[[], Any], device: torch.device, *, warmup: int = 3, repeats: int = 10,
                    max_time_s: float | None = None, warmup_s: float = 0.1) -> Timing:
    """Capture one call of ``fn`` in a CUDA graph and time its replays: kernel time without launch gaps."""
    graph = capture_cuda_graph(fn, device, warmup=warmup)
    t = time_call(graph.replay, device, warmup=warmup, repeats=repeats, max_time_s=max_time_s,
                  warmup_s=warmup_s)
    return Timing(t.samples_ms, mode="cuda-graph")


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop lines on file descriptor 2; keep them out of the user's terminal."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def _cpu_extra_bytes(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def live_bytes(tensors: Sequence[torch.Tensor] = (), modules: Sequence[nn.Module] = ()) -> int:
    """Bytes of distinct storages among ``tensors`` and the modules' parameters and buffers."""
    seen: dict[int, int] = {}
    pool = list(tensors)
    for m in modules:
        pool += list(m.parameters()) + list(m.buffers())
    for t in pool:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def measure_memory(fn: Callable[[], Any], device: torch.device | str, *,
                   live: int = 0, held_by_others: int = 0) -> dict[str, float]:
    """Peak memory of one call of ``fn``: ``extra_mem_mib`` (over what was allocated before),
    ``peak_mem_mib`` (absolute), and on CUDA ``reserved_mem_mib`` (the caching allocator's peak).
    ``live`` is, on CPU, the bytes already held before the call (inputs, parameters);
    ``held_by_others``, on CUDA, bytes other cells kept allocated meanwhile (interleaved timing),
    left out of the absolute peak."""
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        del out
        peak = torch.cuda.max_memory_allocated(device) - held_by_others
        before -= held_by_others
        return {"peak_mem_mib": peak / MIB, "extra_mem_mib": (peak - before) / MIB,
                "reserved_mem_mib": (torch.cuda.max_memory_reserved(device) - held_by_others) / MIB}
    extra = _cpu_extra_bytes(fn)
    return {"peak_mem_mib": (extra + live) / MIB, "extra_mem_mib": extra / MIB,
            "reserved_mem_mib": float("nan")}


@dataclass
class Step:
    """One timed unit of work: forward only, or forward and backward through autograd."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    mode: str  # fwd | fwd_bwd
    grad_out: torch.Tensor | None = None
    wrt: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def make(cls, module: nn.Module, inputs: tuple[torch.Tensor, ...], mode: str,
             out_shape: torch.Size, generator: torch.Generator) -> "Step":
        if mode == "fwd":
            return cls(module, inputs, mode)
        inputs = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in inputs)
        wrt = [t for t in inputs if t.requires_grad] + [p for p in module.parameters()
                                                          if p.requires_grad]
        ref = inputs[0]
        grad_out = torch.randn(out_shape, generator=generator).to(ref.device, ref.dtype)
        return cls(module, inputs, mode, grad_out, wrt)

    def __call__(self):
        if self.mode == "fwd":
            with torch.no_grad():
                return self.module(*self.inputs)
        out = self.module(*self.inputs)
        return torch.autograd.grad(out, self.wrt, self.grad_out, allow_unused=True)

    def forward_output(self) -> torch.Tensor:
        with torch.no_grad():
            return self.module(*self.inputs)
