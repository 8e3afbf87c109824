"""Small value checks shared by every place that reads user input (suites, CLI flags, meta.json,
the Python API), so each rule is written once."""
from __future__ import annotations

import math
from typing import Any

ROUNDS_MAX = 1000  # rounds of interleaved timing
TIMEOUT_MAX_S = 1e7  # a per-cell timeout: anything longer is a typo
ISOLATE_MODES = ("method", "cell")  # --isolate: a worker process per method, or per cell


def is_whole(v: Any) -> bool:
    """An int that is not a bool (TOML and JSON booleans are ints to Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_rounds(v: Any) -> bool:
    return is_whole(v) and 1 <= v <= ROUNDS_MAX


def is_timeout(v: Any) -> bool:
    """A per-cell timeout in seconds: a number > 0 (and below TIMEOUT_MAX_S)."""
    return is_number(v) and 0 < v < TIMEOUT_MAX_S
