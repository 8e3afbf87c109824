"""A cell of a sweep (``Case``): a method with fixed params on one shape, dtype, mode and input, and
its identity: the dict a row carries, the ``cell_id`` hashed from it (a resumed or merged run finds its
cells by it, so it never changes for an existing cell), the family an out-of-memory prunes, its label.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from attnbench.registry import REGISTRY


@dataclass(frozen=True)
class Case:
    """One cell of a sweep: a method with fixed params on one shape, dtype, mode and input."""

    method: str
    params: tuple[tuple[str, Any], ...]
    level: str
    n: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    mode: str
    causal: bool
    batching: str
    input: tuple[tuple[str, Any], ...]
    seed: int
    layers: int = 1
    ffn_dim: int = 0
    total_tokens: int = 0  # a constant-token sweep: batch = total_tokens / n (0: batch as given)
    # level "train" only: the resolved [train] configuration (task, steps, lr, task knobs, ...); left
    # out of identity() when empty, so the cells of other levels keep their ids
    train: tuple[tuple[str, Any], ...] = ()

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def train_dict(self) -> dict[str, Any]:
        return dict(self.train)

    @property
    def input_dict(self) -> dict[str, Any]:
        return dict(self.input)

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["params"] = self.params_dict
        d["input"] = self.input_dict
        if not self.total_tokens:  # fields added later stay out at their defaults: old ids hold
            d.pop("total_tokens")
        if self.train:
            d["train"] = self.train_dict
        else:
            del d["train"]
        return d

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> "Case":
        """The case back from :meth:`identity` (a row, or JSON sent to a worker)."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        fields["params"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                        for k, v in (d.get("params") or {}).items()))
        fields["input"] = tuple(sorted((d.get("input") or {}).items()))
        fields["train"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                       for k, v in (d.get("train") or {}).items()))
        return cls(**fields)

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def family_key(self) -> tuple:
        """Everything but n: cells that differ only in n share it (used for OOM pruning)."""
        d = self.identity()
        d.pop("n")
        if self.total_tokens:  # the batch follows n in a constant-token sweep
            d.pop("batch")
        return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in d.items()))

    def label(self) -> str:
        """Method name with the params that differ from its defaults (and its budget knob)."""
        shown = self.params
        if self.method in REGISTRY:
            spec = REGISTRY.get(self.method)
            defaults = dataclasses.asdict(spec.params())
            shown = tuple((k, v) for k, v in self.params if k == spec.budget or
                          _norm(defaults.get(k, object())) != _norm(v))
        p = ",".join(f"{k}={_fmt(v)}" for k, v in shown)
        return f"{self.method}({p})" if p else self.method


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _fmt(v: Any) -> str:
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
