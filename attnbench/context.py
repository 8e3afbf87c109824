"""What the cells of one run share: the suite, the device and a cache of references, plus the small
helper every kind of cell uses (the allocator's live bytes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from attnbench.accuracy import StatsCache
from attnbench.errors import one_line  # noqa: F401 (re-exported; its home is attnbench.errors)
from attnbench.suite_parse import Suite


@dataclass
class CellContext:
    """State shared by the cells of one run: the suite, device and small caches of references."""

    suite: Suite
    device: torch.device
    cuda_graphs: bool = False
    capacity_limit_mib: float = 0.0  # overrides the suite's [capacity] limit_mib when set
    accuracy_stats: StatsCache = field(default_factory=StatsCache)
    _refs: dict = field(default_factory=dict)
    cache_bytes: int = 1 << 30  # references kept for reuse across methods, at most this many bytes
    run_dir: Path | None = None  # where train cells append their learning curves (curves.jsonl)
    # values a cell leaves for later cells of the run (train: exact attention's metric per setting)
    notes: dict = field(default_factory=dict)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """A value computed once per key (float64 references, device rates); tensors are evicted
        oldest first once they exceed ``cache_bytes``. Cells run method by method, so a reference
        is reused by every method on the same inputs only if the cache holds a whole sweep's."""
        if key not in self._refs:
            value = make()
            self._refs[key] = value
            while len(self._refs) > 1 and sum(_nbytes(v) for v in self._refs.values()) > \
                    self.cache_bytes:
                self._refs.pop(next(iter(self._refs)))
        return self._refs[key]


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def allocated_bytes(device: torch.device) -> int | None:
    """Bytes the CUDA allocator holds for tensors now (None off CUDA)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None
