"""Planning a run: which cells a suite expands to on a device, after ``--only``/``--skip``, and which of
them cannot run (with the reason), decided once before anything runs.

``--only`` and ``--skip`` take method names or wildcards (``linformer*``, ``peer_*``). A name in
``--only`` that the suite does not list but the registry knows (a plugin's method, say) is added with
its default params on the suite's axes, so ``attnbench run quick --plugin mine.py --only mine,sdpa``
measures ``mine`` beside ``sdpa``. A selection that leaves no cell is bad input.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from attnbench.case import Case
from attnbench.decode import plan_reason
from attnbench.dtypes import to_torch
from attnbench.errors import BadInput
from attnbench.expand import expand
from attnbench.methodspec import BuildContext, MethodSpec
from attnbench.registry import REGISTRY, unknown_name_message
from attnbench.suite_parse import PLUGIN_HINT, Suite


@dataclass
class PlannedCell:
    """A cell resolved once: its case, method spec and params instance, and why it cannot run (set:
    it is written as ``unsupported`` without running)."""

    case: Case
    skip_reason: str | None = None
    spec: MethodSpec | None = None
    params: Any = None


@dataclass(frozen=True)
class Selection:
    """``--only``/``--skip`` resolved against a suite: the method names kept, those added to the
    suite with default params, and the names left out."""

    only: frozenset[str] | None
    skip: frozenset[str]
    added: tuple[str, ...] = ()


def parse_names(value: str | Iterable[str] | None, flag: str, what: str = "method name",
                whats: str | None = None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; None stays None. Empty names are bad input;
    messages call one item ``what`` and several ``whats`` (default ``what`` + "s")."""
    whats = whats or f"{what}s"
    if value is None:
        return None
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",")]
    elif isinstance(value, Iterable):
        items = list(value)
        if not all(isinstance(s, str) for s in items):
            raise BadInput(f"{flag} {value!r}: expected {whats} (strings)")
        items = [s.strip() for s in items]
    else:
        raise BadInput(f"{flag} {value!r}: expected a comma-separated string or a list of {whats}")
    if not items or any(not s for s in items):
        hint = " (wildcards allowed: 'linformer*')" if what == "method name" else ""
        raise BadInput(f"{flag} {value!r}: an empty {what}; give {whats} separated by commas{hint}")
    return items


def _expand_pattern(pattern: str, known: list[str], flag: str) -> list[str]:
    if any(ch in pattern for ch in "*?["):
        hits = fnmatch.filter(known, pattern)
        if not hits:
            raise BadInput(f"{flag} {pattern!r} matches no method; registered: {', '.join(known)}")
        return hits
    if pattern not in known:
        raise BadInput(f"{flag}: {unknown_name_message('method', pattern, known)}{PLUGIN_HINT}")
    return [pattern]


def select(suite: Suite, only=None, skip=None) -> Selection:
    only_names, skip_names = parse_names(only, "--only"), parse_names(skip, "--skip")
    known = REGISTRY.names()
    in_suite = [name for name, _ in suite.methods]
    keep = None
    added: list[str] = []
    if only_names is not None:
        keep = set()
        for pattern in only_names:
            wild = any(ch in pattern for ch in "*?[")
            for name in _expand_pattern(pattern, known, "--only"):
                if name in in_suite:
                    keep.add(name)
                elif not wild:  # named outright: measure it on the suite's axes
                    keep.add(name)
                    added.append(name)
    drop = set()
    for pattern in skip_names or ():
        drop.update(_expand_pattern(pattern, known, "--skip"))
    return Selection(None if keep is None else frozenset(keep), frozenset(drop),
                     tuple(a for a in added if a not in drop))


def with_methods(suite: Suite, names: Iterable[str]) -> Suite:
    """The suite with each of ``names`` added as a method table of default params."""
    names = list(names)
    if not names:
        return suite
    sweeps = suite.method_sweeps or [{}] * len(suite.methods)
    return dataclasses.replace(suite, methods=[*suite.methods, *((n, {}) for n in names)],
                               method_sweeps=[*sweeps, *({} for _ in names)])


def plan(suite: Suite, device: torch.device, only=None, skip=None) -> list[PlannedCell]:
    """Expand the suite for ``device`` and mark what cannot run, with the reason."""
    sel = select(suite, only, skip)
    suite = with_methods(suite, sel.added)
    cases = [c for c in expand(suite, device.type)
             if (sel.only is None or c.method in sel.only) and c.method not in sel.skip]
    if not cases:
        raise BadInput(_nothing_selected(suite, device, only, skip))
    cells, seen = [], {}
    for case in cases:
        if (other := seen.get(case.cell_id)) is not None:
            raise BadInput(f"{suite.path}: {case.label()} at n={case.n} is planned twice (the same "
                           f"cell from two method tables, or repeated values); first as #{other}")
        seen[case.cell_id] = len(cells)
        spec = REGISTRY.get(case.method)
        ctx = BuildContext(n=case.n, heads=case.heads, head_dim=case.head_dim,
                           dtype=to_torch(case.dtype), device=device, causal=case.causal,
                           seed=case.seed, num_layers=case.layers)
        params = None
        try:
            params = spec.params(**case.params_dict)
            # a train cell's model is the model level's encoder, trained (attnbench.train)
            why = spec.unsupported_reason(params, ctx, backward=case.mode == "fwd_bwd",
                                          dtype_name=case.dtype,
                                          level="model" if case.level == "train" else case.level,
                                          decode=case.mode == "decode",
                                          packed="lengths" in case.input_dict) or plan_reason(case)
        except Exception as exc:  # noqa: BLE001 - a constraint that crashes is reported, not fatal
            why = f"constraint check failed: {type(exc).__name__}: {exc}"
        cells.append(PlannedCell(case, why, spec, params))
    return cells


def _nothing_selected(suite: Suite, device: torch.device, only, skip) -> str:
    methods = sorted({name for name, _ in suite.methods})
    if only is None and skip is None:
        return (f"{suite.path}: no cell on {device.type}: an axis given per device has no values for "
                f"{device.type} (e.g. n = {{cuda = [...]}} without cpu); give {device.type} values or "
                "run on the device the suite is for")
    return (f"--only {only!r} --skip {skip!r} select no cell of suite {suite.name!r} on "
            f"{device.type}; its methods: {', '.join(methods)}")


def added_note(suite: Suite, only=None, skip=None) -> str | None:
    """One line for the plan: methods ``--only`` added to the suite with their default params."""
    added = select(suite, only, skip).added
    if not added:
        return None
    return (f"added to suite {suite.name!r} with default params on its axes (named in --only, not in "
            f"the suite): {', '.join(added)}")
