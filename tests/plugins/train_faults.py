"""Methods that break during training, for the train level's tests (loaded with --plugin)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnbench.registry import BuildContext, register_method


@dataclass(frozen=True)
class After:
    calls: int = 5  # training-mode calls that behave before the output turns to NaN


class NaNAfter(nn.Module):
    """Exact attention until ``calls`` training-mode calls have been made, then NaN."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls, self.seen = calls, 0

    def forward(self, q, k, v):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        if self.training:
            self.seen += 1
            if self.seen > self.calls:
                return out * float("nan")
        return out


@register_method("t_nan_after", family="other", exact=False, params=After)
def build_nan_after(p: After, ctx: BuildContext) -> nn.Module:
    """Exact attention that turns to NaN after some training calls."""
    return NaNAfter(p.calls)
