"""What decoding methods keep between steps: KV caches and the byte count of a state.

Tensors are (B, H, N, D). Three caches:

- :class:`KVCache`: every past key and value, preallocated to a capacity and filled up to ``length``
  (a Python int); readers take the filled prefix, so the attention kernel sees exactly the past
  (its shapes change every step: eager only).
- :class:`DeviceKVCache`: the same with the length on the device, for kernels that mask by it
  (FlexAttention); a step then has fixed shapes and can be captured in a CUDA graph.
- :class:`RingCache`: the last ``window`` keys and values in a ring, the count on the device;
  fixed size, capturable.

:func:`tensor_bytes` is the default ``state_bytes`` of the decode contract: the distinct storages
reachable from a state, so a cache is counted at its allocated capacity, once.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch


def tensor_bytes(state: Any) -> int:
    """Bytes of the distinct tensor storages reachable from ``state`` (tensors, lists, tuples, dicts,
    dataclasses and objects with a ``__dict__``)."""
    seen: dict[int, int] = {}
    visited: set[int] = set()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
            return
        if id(x) in visited or isinstance(x, (str, bytes, int, float, bool, type(None),
                                              torch.nn.Module)):
            return  # a module's parameters are the method's, not its state
        visited.add(id(x))
        if isinstance(x, dict):
            items = x.values()
        elif isinstance(x, (list, tuple, set)):
            items = x
        elif dataclasses.is_dataclass(x):
            items = [getattr(x, f.name) for f in dataclasses.fields(x)]
        elif hasattr(x, "__dict__"):
            items = vars(x).values()
        else:
            return
        for item in items:
            walk(item)

    walk(state)
    return sum(seen.values())


def _capacity(n: int, capacity: int | None, multiple: int = 1) -> int:
    cap = max(n, capacity or n, 1)
    return -(-cap // multiple) * multiple


class KVCache:
    """Keys and values of every past token: (B, H, capacity, D) each, filled up to ``length``.
    Appending past the capacity doubles it (a copy; the decode runner sizes it so that none happens
    while it times)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int | None = None):
        b, h, n, _ = k.shape
        cap = _capacity(n, capacity)
        self.k = k.new_empty(b, h, cap, k.shape[-1])
        self.v = v.new_empty(b, h, cap, v.shape[-1])
        self.k[:, :, :n] = k
        self.v[:, :, :n] = v
        self.length = n

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        """Add one token's key and value, each (B, H, 1, D)."""
        if self.length == self.k.shape[2]:
            self.k = torch.cat([self.k, torch.empty_like(self.k)], dim=2)
            self.v = torch.cat([self.v, torch.empty_like(self.v)], dim=2)
        self.k[:, :, self.length:self.length + 1] = k_t
        self.v[:, :, self.length:self.length + 1] = v_t
        self.length += 1

    def keys(self) -> torch.Tensor:
        return self.k[:, :, :self.length]  # (B, H, length, D)

    def values(self) -> torch.Tensor:
        return self.v[:, :, :self.length]


class DeviceKVCache:
    """A :class:`KVCache` whose length lives on the device (``length``, int64 of shape (1,)), with the
    capacity rounded up to ``multiple``; readers see the whole buffer and mask keys at and past
    ``length``. It cannot grow: the capacity must cover every token a run appends."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int | None = None,
                 multiple: int = 128):
        b, h, n, _ = k.shape
        cap = _capacity(n + (0 if capacity else 1024), capacity, multiple)
        self.k = k.new_zeros(b, h, cap, k.shape[-1])
        self.v = v.new_zeros(b, h, cap, v.shape[-1])
        self.k[:, :, :n] = k
        self.v[:, :, :n] = v
        self.length = torch.full((1,), n, dtype=torch.long, device=k.device)

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        """Write one token at ``length`` and advance it, on the device (no host sync). Past the
        capacity the write would fail on the device, so the decode runner sizes it first."""
        self.k.index_copy_(2, self.length, k_t)
        self.v.index_copy_(2, self.length, v_t)
        self.length.add_(1)


class RingCache:
    """The last ``window`` keys and values: token p sits in slot p mod window; ``count`` (int64,
    shape (1,), on the device) is how many tokens were seen."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, window: int):
        b, h, n, _ = k.shape
        self.window = window
        self.k = k.new_zeros(b, h, window, k.shape[-1])
        self.v = v.new_zeros(b, h, window, v.shape[-1])
        keep = min(n, window)
        slots = torch.arange(n - keep, n, device=k.device) % window
        self.k.index_copy_(2, slots, k[:, :, n - keep:])
        self.v.index_copy_(2, slots, v[:, :, n - keep:])
        self.count = torch.full((1,), n, dtype=torch.long, device=k.device)
        self.slot_ids = torch.arange(window, device=k.device)

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        slot = torch.remainder(self.count, self.window)
        self.k.index_copy_(2, slot, k_t)
        self.v.index_copy_(2, slot, v_t)
        self.count.add_(1)

    def valid(self) -> torch.Tensor:
        """(window,) bool: slots holding a token (all of them once ``window`` tokens were seen)."""
        return self.slot_ids < self.count
