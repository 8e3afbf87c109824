"""Test plugin: methods that fail in controlled ways (loaded with --plugin by the tests)."""
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

import torch.nn.functional as F

from attnbench.registry import BuildContext, NoParams, register_method


class Exact(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


@dataclass(frozen=True)
class FailAt:
    n_fail: int = 512  # the first n at which the method fails


class Boom(Exact):
    def __init__(self, n_fail):
        super().__init__()
        self.n_fail = n_fail

    def forward(self, q, k, v):
        if q.shape[-2] >= self.n_fail:
            raise ValueError(f"boom at n={q.shape[-2]}")
        return super().forward(q, k, v)


class FakeOOM(Exact):
    def __init__(self, n_fail):
        super().__init__()
        self.n_fail = n_fail

    def forward(self, q, k, v):
        if q.shape[-2] >= self.n_fail:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (simulated)")
        return super().forward(q, k, v)


class NaNOut(Exact):
    def forward(self, q, k, v):
        return super().forward(q, k, v) * float("nan")


class Slow(Exact):
    def forward(self, q, k, v):
        time.sleep(float(os.environ.get("ATTNBENCH_TEST_SLEEP", "0.05")))
        return super().forward(q, k, v)


@register_method("t_boom", family="other", exact=False, params=FailAt)
def build_boom(p: FailAt, ctx: BuildContext) -> nn.Module:
    return Boom(p.n_fail)


@register_method("t_oom", family="other", exact=False, params=FailAt)
def build_oom(p: FailAt, ctx: BuildContext) -> nn.Module:
    return FakeOOM(p.n_fail)


@register_method("t_nan", family="other", exact=False, params=NoParams)
def build_nan(p: NoParams, ctx: BuildContext) -> nn.Module:
    return NaNOut()


@register_method("t_slow", family="other", exact=False, params=NoParams)
def build_slow(p: NoParams, ctx: BuildContext) -> nn.Module:
    return Slow()


@register_method("t_needs_env", family="other", exact=True, params=NoParams)
def build_needs_env(p: NoParams, ctx: BuildContext) -> nn.Module:
    """Unsupported until ATTNBENCH_T_ENV_READY=1: an environment fixed between a run and its rerun."""
    from attnbench.methodspec import Unsupported

    if os.environ.get("ATTNBENCH_T_ENV_READY") != "1":
        raise Unsupported("t_needs_env: its library is not installed")
    return Exact()
