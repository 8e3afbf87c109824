"""Test plugin: exact attention whose every call advances a fake clock (loaded by the tests of
interleaved timing), with a step in the clock's speed after a chosen number of calls: a host that
slows down halfway through a sweep."""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from attnbench.registry import BuildContext, register_method


class Clock:
    """``perf_counter`` for :mod:`attnbench.measure` (the tests patch it in): each call of a clocked
    method costs ``cost_s``, times ``factor`` once more than ``slow_after`` calls have been made."""

    def __init__(self):
        self.reset()

    def reset(self, slow_after: int | None = None, factor: float = 3.0, cost_s: float = 1e-3):
        self.now, self.calls = 0.0, []
        self.slow_after, self.factor, self.cost_s = slow_after, factor, cost_s

    def perf_counter(self) -> float:
        return self.now

    def tick(self, name: str) -> None:
        self.calls.append(name)
        slow = self.slow_after is not None and len(self.calls) > self.slow_after
        self.now += self.cost_s * (self.factor if slow else 1.0)


CLOCK = Clock()


@dataclass(frozen=True)
class Tag:
    tag: str = "a"


class Clocked(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, q, k, v):
        CLOCK.tick(self.name)
        return F.scaled_dot_product_attention(q, k, v)


@register_method("t_clocked", family="other", exact=True, params=Tag)
def build_clocked(p: Tag, ctx: BuildContext) -> nn.Module:
    return Clocked(p.tag)
