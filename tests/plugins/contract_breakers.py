"""Test plugin: methods that break the output or input contract in the ways a hostile probe found."""
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import BuildContext, NoParams, register_method


class MutatesQ(nn.Module):
    """Doubles q in place, then attends: its own output looks plausible, its inputs are ruined."""

    def forward(self, q, k, v):
        q.mul_(2.0)
        return F.scaled_dot_product_attention(q, k, v)


@register_method("t_mutate_q", family="other", exact=False, params=NoParams, backward=False)
def build_mutate_q(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Writes into q in place."""
    return MutatesQ()


WrongOutput = Literal["one_row", "scalar", "fp64", "fp16", "int64"]


@dataclass(frozen=True)
class WrongParams:
    kind: WrongOutput = "one_row"


class Wrong(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, q, k, v):
        out = F.scaled_dot_product_attention(q, k, v)
        if self.kind == "one_row":
            return out[..., :1, :]  # (B, H, 1, D): broadcasts against the reference
        if self.kind == "scalar":
            return out.mean()
        if self.kind == "fp64":
            return out.double()
        if self.kind == "fp16":
            return out.half()
        return torch.zeros(out.shape, dtype=torch.int64)


@register_method("t_wrong_output", family="other", exact=False, params=WrongParams, backward=False)
def build_wrong(p: WrongParams, ctx: BuildContext) -> nn.Module:
    """Returns an output of the wrong shape or dtype."""
    return Wrong(p.kind)
