"""Test plugin: methods that take their process down or never return (loaded with --plugin by the
reliability tests; only safe to run with ``--isolate``).

``t_fault`` behaves as exact attention except at ``n == n_fault``, where it does ``fault``: ``segv``
reads address 0 through ctypes, ``exit`` calls ``os._exit(7)``, ``hang`` sleeps for an hour. One method
with a knob (not three methods) so that an isolated sweep keeps one worker across the three faults
and has to restart it after each.
"""
import ctypes
import os
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import BuildContext, NoParams, register_method

EXIT_CODE = 7
HOSTILE = "<script>alert('x')</script> | a|b | [x](javascript:alert(1)) `tick` \\ $x$ & %"


@dataclass(frozen=True)
class FaultParams:
    fault: Literal["segv", "exit", "hang"] = "segv"  # what happens at n == n_fault
    n_fault: int = 128                                # the one sequence length that faults


class Fault(nn.Module):
    def __init__(self, p: FaultParams):
        super().__init__()
        self.p = p

    def forward(self, q, k, v):
        if q.shape[-2] == self.p.n_fault:
            if self.p.fault == "segv":
                ctypes.string_at(0)
            elif self.p.fault == "exit":
                os._exit(EXIT_CODE)
            else:
                time.sleep(3600)
        return F.scaled_dot_product_attention(q, k, v)


@register_method("t_fault", family="other", exact=False, params=FaultParams)
def build_fault(p: FaultParams, ctx: BuildContext) -> nn.Module:
    return Fault(p)


class Hostile(nn.Module):
    def forward(self, q, k, v):
        raise ValueError(HOSTILE)


@register_method("t_hostile", family="other", exact=False, params=NoParams)
def build_hostile(p: NoParams, ctx: BuildContext) -> nn.Module:
    return Hostile()


@register_method("../../t_escape<b>|", family="other", exact=False, params=NoParams)
def build_escape(p: NoParams, ctx: BuildContext) -> nn.Module:
    return Hostile()


class DeviceAssert(nn.Module):
    """Indexes out of bounds on the GPU: a device-side assert, which leaves the CUDA context unusable
    for the rest of the process."""

    def forward(self, q, k, v):
        if q.is_cuda and q.shape[-2] == 128:
            idx = torch.full((1,), 10**9, device=q.device, dtype=torch.long)
            q = q + q.flatten()[idx].sum()
            torch.cuda.synchronize(q.device)
        return F.scaled_dot_product_attention(q, k, v)


@register_method("t_device_assert", family="other", exact=False, params=NoParams, devices=("cuda",))
def build_device_assert(p: NoParams, ctx: BuildContext) -> nn.Module:
    return DeviceAssert()
