"""Validation of a method's (or input regime's) params table from a suite against its dataclass.

Every value is checked against the field's annotation (int, float, bool, str, Literal, tuples, unions);
a list sweeps over values, except for sequence-typed params, where a list of lists does.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from attnbench.checks import is_whole


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric param, given as ``Annotated[int, Range(1)]``: suites outside them are
    rejected before anything runs (``k = 0`` is bad input, not a sweep of unsupported rows)."""

    minimum: float | None = None
    maximum: float | None = None

    def violation(self, value: Any) -> str | None:
        if self.minimum is not None and value < self.minimum:
            return f"expected a value >= {self.minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return f"expected a value <= {self.maximum:g}"
        return None


Positive = Annotated[int, Range(1)]  # counts and lengths: at least 1
NonNegative = Annotated[int, Range(0)]  # counts where 0 means none (or "auto", as documented)


def _type_ok(value: Any, tp: Any) -> str | None:
    """None if ``value`` fits the annotation ``tp``, else a description of what is allowed."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        if (why := _type_ok(value, base)) is not None:
            return why
        for extra in extras:
            if isinstance(extra, Range) and not isinstance(value, (list, tuple)) and \
                    (why := extra.violation(value)) is not None:
                return why
        return None
    if origin is Literal:
        allowed = get_args(tp)
        return None if value in allowed and type(value) is type(allowed[0]) else \
            f"allowed: {', '.join(map(str, allowed))}"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        reasons = [_type_ok(value, a) for a in get_args(tp)]
        return None if any(r is None for r in reasons) else " or ".join(filter(None, reasons))
    if tp is type(None):
        return None if value is None else "expected nothing"
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            return f"expected a list of {getattr(args[0], '__name__', args[0]) if args else 'values'}"
        for v in value:
            if args and (why := _type_ok(v, args[0])) is not None:
                return why
        return None
    if tp is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if tp is int:
        return None if is_whole(value) else "expected an integer"
    if tp is float:
        return None if is_whole(value) or isinstance(value, float) else "expected a number"  # inf too
    if tp is str:
        return None if isinstance(value, str) else "expected a string"
    return None


def check_params(c, where: str, params_cls: type, table: dict) -> dict[str, list[Any]]:
    """Validate a params table against a dataclass; every value becomes a list of grid values.
    ``c.fail(key, value, allowed)`` raises the caller's error (the suite checker's SuiteError)."""
    hints = typing.get_type_hints(params_cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(params_cls)}
    grid: dict[str, list[Any]] = {}
    for key, value in table.items():
        if key not in fields:
            listing = ", ".join(f"{f}: {_type_name(hints[f])}" for f in sorted(fields)) or "(none)"
            c.fail(f"{where}.{key}", value, f"unknown param; {where.split('.')[-1]} params are {listing}")
        tp = hints[key]
        is_seq = get_origin(_bare(tp)) in (tuple, list)
        # a list is a sweep over values, except for sequence params where a list of lists is
        values = value if isinstance(value, list) and (not is_seq or all(
            isinstance(v, list) for v in value)) and value else [value]
        for v in values:
            if (why := _type_ok(v, tp)) is not None:
                c.fail(f"{where}.{key}", value, why)
        grid[key] = [tuple(v) if isinstance(v, list) else v for v in values]
        if len(values) > 1:
            c.distinct(f"{where}.{key}", value, grid[key])
    return grid


def _bare(tp: Any) -> Any:
    """The annotation without ``Annotated`` metadata."""
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Annotated:
        base, *extras = get_args(tp)
        bounds = [e for e in extras if isinstance(e, Range)]
        text = _type_name(base)
        for b in bounds:
            text += (f" >= {b.minimum:g}" if b.minimum is not None else "") + \
                (f" <= {b.maximum:g}" if b.maximum is not None else "")
        return text
    if get_origin(tp) is Literal:
        return "|".join(map(str, get_args(tp)))
    return getattr(tp, "__name__", str(tp))
