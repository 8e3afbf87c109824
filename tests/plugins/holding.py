"""Test plugin for the Dask tests: ``t_hold`` is exact attention that, at ``n == n_hold``, leaves a
file named after its process id in ``$ATTNBENCH_TEST_HOLD_DIR`` and then sleeps for ten minutes, so
that a test can kill the process running that cell while it is mid-cell, at a moment it knows."""
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from attnbench.registry import BuildContext, register_method


@dataclass(frozen=True)
class HoldParams:
    n_hold: int = 64  # the one sequence length whose cell holds


class Hold(nn.Module):
    def __init__(self, p: HoldParams):
        super().__init__()
        self.p = p

    def forward(self, q, k, v):
        if q.shape[-2] == self.p.n_hold:
            where = os.environ.get("ATTNBENCH_TEST_HOLD_DIR")
            if where:
                Path(where, str(os.getpid())).write_text("")
            time.sleep(600)
        return F.scaled_dot_product_attention(q, k, v)


@register_method("t_hold", family="other", exact=False, params=HoldParams)
def build_hold(p: HoldParams, ctx: BuildContext) -> nn.Module:
    return Hold(p)
