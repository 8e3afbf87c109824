"""The words of a suite and the checks its values go through: the sweep axes with their allowed
values and defaults, the defaults of the [timing], [error], [model], [capacity] and [decode] tables and
their rules, and :class:`SuiteChecker`, which turns any violation into a ``SuiteError`` naming the file,
the key, the bad value and what is allowed.
"""
from __future__ import annotations

import re
import typing
from typing import Any

from attnbench.checks import ROUNDS_MAX, is_number, is_rounds, is_whole
from attnbench.dtypes import DTYPES
from attnbench.errors import SuiteError

AXIS_MAX = 2**31 - 1  # n, batch, heads, head_dim: beyond this no tensor dimension is indexable
SEED_MAX = 2**62  # seeds are mixed into 63-bit generator seeds with small offsets
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LEVELS = ("core", "layer", "model", "train")  # train: attnbench.train (a model trained on a task)
MODES = ("fwd", "fwd_bwd", "prefill", "decode")
CAUSAL_MODES = ("prefill", "decode")  # causal by definition: their cells have causal = true
BATCHING = ("fixed", "capacity")
DEVICE_TYPES = ("cpu", "cuda")
TOP_KEYS = {"name", "version", "description", "baseline", "seed", "sweep", "methods", "inputs",
            "timing", "error", "model", "capacity", "decode", "train"}


class SuiteChecker:
    """Checks the values of one suite file; ``fail`` raises the ``SuiteError`` every check ends in."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, value: Any, allowed: str) -> typing.NoReturn:
        raise SuiteError(f"{self.file}: {key} = {value!r}: {allowed}")

    def int_list(self, key, value, *, minimum=1, maximum=AXIS_MAX):
        vals = value if isinstance(value, list) else [value]
        if not vals:
            self.fail(key, value, f"expected a non-empty list of integers >= {minimum}")
        for v in vals:
            if not is_whole(v) or not minimum <= v <= maximum:
                self.fail(key, value, f"expected integers >= {minimum} (and at most {maximum})")
        return self.distinct(key, value, vals)

    def choice_list(self, key, value, allowed):
        vals = value if isinstance(value, list) else [value]
        if not vals:
            self.fail(key, value, f"expected a non-empty list; allowed: {', '.join(map(str, allowed))}")
        want_bool = all(isinstance(a, bool) for a in allowed)
        for v in vals:
            if isinstance(v, bool) != want_bool or v not in allowed:
                self.fail(key, value, f"allowed: {', '.join(map(str, allowed))}")
        return self.distinct(key, value, vals)

    def distinct(self, key, value, vals: list) -> list:
        """A sweep list names each value once: a repeat would run the same cell twice."""
        seen = []
        for v in vals:
            if v in seen and type(v) is type(seen[seen.index(v)]):
                self.fail(key, value, f"{v!r} is listed twice; list each value once")
            seen.append(v)
        return vals

    def unknown_keys(self, where: str, table: dict, known) -> None:
        for key in table:
            if key not in known:
                self.fail(f"{where}{key}", table[key], f"unknown key; allowed keys: "
                          f"{', '.join(sorted(known))}")


SWEEP_AXES: dict[str, tuple] = {
    "n": ("int", 1), "batch": ("int", 1), "heads": ("int", 1), "head_dim": ("int", 1),
    "dtype": ("choice", tuple(d for d in DTYPES if d != "fp64")), "mode": ("choice", MODES),
    "causal": ("choice", (False, True)), "level": ("choice", LEVELS),
    "batching": ("choice", BATCHING), "total_tokens": ("int", 1), "seed": ("seed", 0),
}
OPTIONAL_AXES = ("total_tokens",)  # no default: left out, the axis does not apply
SWEEP_DEFAULTS = {"batch": [1], "heads": [8], "head_dim": [64], "dtype": ["fp32"], "mode": ["fwd"],
                  "causal": [False], "level": ["core"], "batching": ["fixed"]}
TIMING_DEFAULTS = {"warmup": 3, "warmup_s": 0.1, "repeats": 10, "max_time_s": 2.0,
                   "cuda_graphs": False, "rounds": 1}
ERROR_DEFAULTS = {"enabled": True, "max_n": 16384}
MODEL_DEFAULTS = {"layers": 12, "ffn_dim": 3072}
CAPACITY_DEFAULTS = {"max_batch": 1 << 16, "rel_tol": 0.0, "limit_mib": 0.0}
DECODE_DEFAULTS = {"steps": 32, "warmup": 8, "cuda_graphs": True}
# what each key of those tables accepts (RULES below says it in words)
TIMING_CHECKS = {
    "warmup": lambda v: is_whole(v) and v >= 0,
    "warmup_s": lambda v: is_number(v) and v >= 0,
    "repeats": lambda v: is_whole(v) and v >= 1,
    "max_time_s": lambda v: is_number(v) and v > 0,
    "cuda_graphs": lambda v: isinstance(v, bool),
    "rounds": is_rounds}
ERROR_CHECKS = {
    "enabled": lambda v: isinstance(v, bool),
    "max_n": lambda v: is_whole(v) and v >= 1}
MODEL_CHECKS = {
    "layers": lambda v: is_whole(v) and v >= 1,
    "ffn_dim": lambda v: is_whole(v) and v >= 1}
CAPACITY_CHECKS = {
    "max_batch": lambda v: is_whole(v) and v >= 1,
    "rel_tol": lambda v: is_number(v) and 0 <= v < 1,
    "limit_mib": lambda v: is_number(v) and v >= 0}
DECODE_CHECKS = {
    "steps": lambda v: is_whole(v) and 1 <= v <= 100_000,
    "warmup": lambda v: is_whole(v) and 0 <= v <= 100_000,
    "cuda_graphs": lambda v: isinstance(v, bool)}


def check_axis(c: SuiteChecker, key: str, value: Any, device: str | None = None,
               where: str = "sweep") -> Any:
    """One sweep axis's values (or a per-device table of them) checked against what it allows."""
    kind, arg = SWEEP_AXES[key]
    if isinstance(value, dict) and device is None:  # per device: dtype = {cpu = [..], cuda = [..]}
        c.unknown_keys(f"{where}.{key}.", value, DEVICE_TYPES)
        return {dev: check_axis(c, key, v, dev, where) for dev, v in value.items()}
    name = f"{where}.{key}" + (f".{device}" if device else "")
    if kind == "seed":
        return c.int_list(name, value, minimum=0, maximum=SEED_MAX)
    return c.int_list(name, value, minimum=arg) if kind == "int" else c.choice_list(name, value, arg)


RULES = {"warmup": "an integer >= 0", "warmup_s": "a number >= 0", "repeats": "an integer >= 1",
         "max_time_s": "a number > 0", "cuda_graphs": "true or false",
         "rounds": f"an integer from 1 to {ROUNDS_MAX} (rounds of interleaved timing)",
         "enabled": "true or false", "max_n": "an integer >= 1",
         "layers": "an integer >= 1", "ffn_dim": "an integer >= 1", "max_batch": "an integer >= 1",
         "rel_tol": "a number in [0, 1)", "limit_mib": "a number >= 0 (MiB; 0 = the device's)",
         "steps": "an integer from 1 to 100000 (timed decode steps)"}
DECODE_RULES = {"warmup": "an integer from 0 to 100000 (untimed decode steps first)"}


def check_table(c: SuiteChecker, data: dict, key: str, defaults: dict, rules: dict) -> dict:
    """A settings table ([timing], [error], ...) checked key by key, with its defaults filled in."""
    table = data.get(key, {})
    if not isinstance(table, dict):
        c.fail(key, table, f"expected a table with keys {', '.join(defaults)}")
    c.unknown_keys(f"{key}.", table, defaults)
    for k, v in table.items():
        if not rules[k](v):
            rule = DECODE_RULES.get(k, RULES[k]) if key == "decode" else RULES[k]
            c.fail(f"{key}.{k}", v, f"expected {rule}")
    return {**defaults, **table}


def axis_values(axis: Any, device: str) -> list[Any]:
    """The values an axis takes on ``device`` (a per-device table resolved)."""
    if isinstance(axis, dict):
        return list(axis.get(device, []))
    return list(axis or [])


def all_axis_values(axis: Any) -> list:
    """Every value an axis takes, on any device."""
    return [v for vs in axis.values() for v in vs] if isinstance(axis, dict) else list(axis)


def check_total_tokens(c: SuiteChecker, given: dict, sweep: dict, method_sweeps: list[dict]) -> None:
    """``total_tokens`` (batch = total_tokens / n): exclusive with ``batch`` and capacity batching,
    and a whole multiple of every n it meets on each device. ``given``: the sweep table as written."""
    for i, override in enumerate([{}, *method_sweeps]):
        where = "sweep" if i == 0 else f"the sweep of method table {i}"
        for device in DEVICE_TYPES:
            totals = axis_values(override.get("total_tokens", sweep.get("total_tokens")), device)
            if not totals:
                continue
            if "batch" in override or "batch" in given:
                c.fail(f"{where}.total_tokens", totals, "give batch or total_tokens, not both "
                       "(with total_tokens, batch = total_tokens / n)")
            if "capacity" in axis_values(override.get("batching", sweep.get("batching")), device):
                c.fail(f"{where}.total_tokens", totals, "batching = \"capacity\" finds the batch "
                       "itself; total_tokens fixes it: use one or the other")
            for total in totals:
                for n in axis_values(override.get("n", sweep.get("n")), device):
                    if total % n:
                        c.fail(f"{where}.total_tokens", total, f"not a whole multiple of n = {n} "
                               f"on {device} (batch = total_tokens / n must be a whole number >= 1)")
