"""What the conformance kit (:mod:`attnbench.conformance`) reports and at which sizes: the shapes the
checks run at, the tolerances they allow, a check's :class:`Row` and a method's :class:`Report`, and the
two ways a check ends other than passing (:class:`CheckFailed`, :class:`CheckSkipped`).

Tolerances of the limit (relative Frobenius error). It runs in float64 where the method does; there
rounding leaves at most ~4e-14 in the built-in methods (Nyström's exact pseudo-inverse of a 128×128
softmax matrix; ~1e-15 elsewhere), while a limit off by one key in a few hundred is wrong by 1e-3 or
more, so 1e-9 separates them with four decades to spare either way. A method that cannot run float64
is checked in its own dtype at roughly 100× the rounding measured there: fp32 1e-4 (measured ≤ 2e-5),
fp16 1e-2 (≤ 1.5e-3), bf16 5e-2 (≤ 1.3e-2), the input's own rounding to that dtype included.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

B, H, D = 2, 2, 32
SIZES = (128, 256, 512, 1024)
TOL = 1e-9
DTYPE_TOL = {torch.float64: TOL, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
CAUSAL_RTOL = 1e-5  # is_causal: the past may move by rounding of a global reduction, not more
SEEDS = 4  # the convergence check averages the error over this many seeds ...
CONVERGE_SCALE = 0.5  # ... on q, k ~ N(0, 0.5²): flat enough for random features to be informative


@dataclass(frozen=True)
class Row:
    check: str
    status: str  # pass | fail | skip
    detail: str


@dataclass
class Report:
    method: str
    device: str
    n: int | None = None
    rows: list[Row] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def ok(self) -> bool:
        return self.count("fail") == 0

    def row(self, check: str) -> Row:
        return next(r for r in self.rows if r.check == check)

    def summary(self) -> str:
        return f"{self.count('pass')} passed, {self.count('fail')} failed, {self.count('skip')} skipped"


class CheckFailed(Exception):
    """A check found a violation; the message is the row's detail."""


class CheckSkipped(Exception):
    """A check does not apply; the message says why."""


def fmt_number(x: float) -> str:
    """A number for a detail: 3 significant digits, or 1.2e-05 style when tiny or huge."""
    return f"{x:.1e}" if x and (abs(x) < 1e-2 or abs(x) >= 1e4) else f"{x:.3g}"


def shape_text(shape) -> str:
    """A shape as one word, 2×2×128×32."""
    return "×".join(map(str, shape))  # one word: a table wraps around it, never inside


def params_text(values: dict) -> str:
    """Params as ``k=v, ...`` (or "default params")."""
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "default params"
