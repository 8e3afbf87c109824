"""Test plugin: methods that end their call with a BaseException instead of returning."""
import sys

import torch.nn.functional as F
from torch import nn

from attnbench.registry import BuildContext, NoParams, register_method


class HomeMade(BaseException):
    """A BaseException that is not an Exception, as some libraries define."""


class Raises(nn.Module):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, q, k, v):
        if q.shape[-2] >= 128:
            raise self.make()
        return F.scaled_dot_product_attention(q, k, v)


def _register(name, make, doc):
    def build(p: NoParams, ctx: BuildContext) -> nn.Module:
        return Raises(make)

    build.__doc__ = doc
    build.__name__ = f"build_{name}"
    register_method(name, family="other", exact=False, params=NoParams, backward=False)(build)


_register("t_sysexit", lambda: SystemExit(5), "Calls sys.exit(5) at n >= 128.")
_register("t_homemade", HomeMade, "Raises a home-made BaseException at n >= 128.")
_register("t_keyboard", KeyboardInterrupt, "Raises KeyboardInterrupt itself at n >= 128.")
