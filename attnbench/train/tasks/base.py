"""What a training task is: seeded batches of token ids and labels, a held-out evaluation set, the
metric, and what chance and exact attention reach on it.

Every task is generated in process from the cell's seed (no downloads): ``train_batch(i)`` is the i-th
training batch of a deterministic stream, ``eval_set()`` a fixed list of batches disjoint from
training. Inputs are ``(B, N)`` token ids; labels are ``(B, N)`` with ``IGNORE`` where no prediction
is scored (token tasks), or ``(B,)`` classes (pooled tasks, where the model averages its output
over the non-padding positions).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

IGNORE = -100  # label of positions that are not scored (torch's cross-entropy ignore_index)


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named stream of a seed ("train", "eval", ...): data are drawn on the
    host, so a seed gives the same batches on every device."""
    mix = sum((i + 1) * ord(ch) for i, ch in enumerate(stream))
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + mix * 7919 + 17) % (2**63))
    return g


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, N) token ids
    labels: torch.Tensor  # (B, N) with IGNORE, or (B,) classes

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.inputs.to(device, non_blocking=True),
                     self.labels.to(device, non_blocking=True))


@dataclass
class Task:
    """One task instance for a cell: length ``n``, ``batch`` sequences per step, ``seed``."""

    name: ClassVar[str]
    metric: ClassVar[str]                 # "accuracy" (higher is better) or "perplexity" (lower)
    pooled: ClassVar[bool] = False        # one label per sequence (mean over non-pad positions)
    expected: ClassVar[str] = ""          # what exact attention reaches, in words (reports)
    n: int = 0
    batch: int = 1
    seed: int = 0
    eval_batches: int = 4
    vocab: int = 0                        # input token ids are in [0, vocab)
    outputs: int = 0                      # classes or output vocabulary
    pad: int | None = None                # the padding id, for pooled tasks
    info: dict = field(default_factory=dict)  # extra row columns (corpus hash, lengths, ...)

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def train_batch(self, index: int) -> Batch:
        raise NotImplementedError

    def eval_set(self) -> list[Batch]:
        raise NotImplementedError

    def chance(self) -> float:
        """The metric a model without content-based attention can reach (see each task)."""
        raise NotImplementedError

    def eval_items(self) -> int:
        """Predictions the held-out set scores: sequences for a pooled task, scored positions
        otherwise. An accuracy on it is a mean of this many right-or-wrong answers."""
        return sum(int(b.labels.numel()) if self.pooled else int((b.labels != IGNORE).sum())
                   for b in self.eval_set())

    @classmethod
    def planned_eval_items(cls, settings: Mapping[str, Any], batch: int) -> int | None:
        """:meth:`eval_items` from a row's resolved ``[train]`` settings and batch, for rows written
        before rows carried it; None where the count depends on the drawn data."""
        return None


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the scored positions (or sequences), in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE)


@dataclass
class Tally:
    """Running sums of a metric over evaluation batches."""

    correct: float = 0.0
    nll: float = 0.0
    count: int = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        flat, y = logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)
        keep = y != IGNORE
        flat, y = flat[keep], y[keep]
        self.correct += float((flat.argmax(-1) == y).sum())
        self.nll += float(F.cross_entropy(flat, y, reduction="sum"))
        self.count += int(y.numel())

    def value(self, metric: str) -> float:
        if not self.count:
            return math.nan
        if metric == "accuracy":
            return self.correct / self.count
        return math.exp(min(self.nll / self.count, 700.0))

    def loss(self) -> float:
        return self.nll / self.count if self.count else math.nan
