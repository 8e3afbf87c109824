"""The method contract and the strict registry of attention implementations.

A method is a factory registered by name. Given its params dataclass and a :class:`BuildContext`, it
builds a ``torch.nn.Module`` whose ``forward(q, k, v)`` maps ``(B, H, N, D)`` tensors to ``(B, H, N, D)``.
Building is setup (projections, masks, compilation) and is never timed; calling the module is.

Optional hooks a built module may define, all read by the harness and never required:

- ``exact_reference(q, k, v) -> Tensor``: the exact attention this method approximates, when that is not
  plain softmax attention on the same q, k, v (e.g. Reformer's shared-QK attention). Called in float64.
  For a method registered with ``approximates=None`` (it approximates nothing: a linear recurrence,
  say) it is the method itself computed in float64, and rows name its error ``ref_rel_err``.
- ``stats() -> dict``: extra result columns (``density``, ``compiled``, ``compile_s``, ...), read once
  after the cell's first call.
- ``flops(q, k, v) -> float``: forward FLOPs of one call, for achieved FLOP/s.

Decoding (``register_method(..., decode=True)``; :mod:`attnbench.decode` runs the cells, the contract is
checked by :mod:`attnbench.consistency`): a causal method that can advance one token at a time against
what it kept from the past defines

- ``init_state(q, k, v, capacity=None) -> state``: the state after the prefix q, k, v (B, H, n, D),
  n >= 1, processed causally. ``capacity`` is the most tokens the state will have seen once the steps
  to come are done (prefix included): a growing cache allocates that much once; None lets it grow.
- ``step(q_t, k_t, v_t, state) -> (out_t, state)``: one new token (B, H, 1, D) each; ``out_t`` is its
  output (B, H, 1, D), equal (to the dtype's rounding) to the last row of the causal forward over the
  prefix and every token stepped so far. The state may be updated in place and returned.
- ``state_bytes(state) -> int`` (optional): the bytes the method keeps between steps; default: the
  distinct tensor storages reachable from the state (:func:`attnbench.decode_state.tensor_bytes`).
- ``decode_graphs`` (optional attribute, default False): True when a step can be captured in a CUDA
  graph and replayed, i.e. it keeps every position it needs on the device and allocates nothing whose
  shape changes from step to step.

An fla (flash-linear-attention) method plugs in the same way: ``decode=True`` and the three hooks on
its module, ``step`` calling its ``fused_recurrent_*`` kernel with the state it returns.

Packed documents (``register_method(..., varlen=True)``; :mod:`attnbench.varlen`): the module defines
``pack(docs) -> nn.Module``, a module (built once, untimed) whose ``forward(q, k, v)`` attends within each
document of ``docs`` (an :class:`attnbench.varlen.Documents`) only, causal or not as the method was built.

A method registered with ``levels=("layer", "model")`` (no core level) is a whole self-attention layer
instead: ``forward(x)`` on (B, N, d_model), d_model = heads · head_dim, with its own projections; its
``exact_reference(x)`` hook, if any, is the same layer with exact attention.

The types live in :mod:`attnbench.methodspec` (``MethodSpec``, ``BuildContext``, ``Limit``,
``SharedScope``, ``Unsupported``) and the loading of built-in methods, entry points and plugin files
in :mod:`attnbench.plugins`; both are re-exported here.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from attnbench.errors import RegistryError  # noqa: F401 (re-exported)
from attnbench.methodspec import (ALL_DEVICES, ALL_DTYPES, ALL_LEVELS,  # noqa: F401 (re-exported)
                                  BuildContext, Constraint, Family, Limit, MethodSpec, NoParams,
                                  Reference, SharedScope, Unsupported, as_limit)
from attnbench.plugins import (ENTRY_POINT_GROUP, import_plugin_file,  # noqa: F401 (re-exported)
                               load_builtins, load_entry_points)

METHOD_NAME = re.compile(r"[A-Za-z.][^\s,=*?\[\]]{0,63}")


class Registry:
    """Methods by name, strict: a duplicate name raises naming both definitions, an unknown one
    suggests close names. The built-in methods and entry points load on first use."""

    def __init__(self) -> None:
        self._specs: dict[str, MethodSpec] = {}
        self._loaded_builtins = False
        self._loaded_entry_points = False
        self.plugin_errors: list[str] = []

    def add(self, spec: MethodSpec) -> None:
        if not isinstance(spec.name, str) or not METHOD_NAME.fullmatch(spec.name):
            raise RegistryError(f"method name {spec.name!r} ({spec.origin}): 1 to 64 printable "
                                "characters without spaces, starting with a letter or '.', and "
                                "none of , = * ? [ ] (names are listed with commas, paired with "
                                "'=' and matched by wildcards in --only)")
        old = self._specs.get(spec.name)
        if old is not None:
            raise RegistryError(
                f"duplicate method name {spec.name!r}: defined by {old.origin} and again by {spec.origin}")
        self._specs[spec.name] = spec

    def remove(self, name: str) -> None:
        self._specs.pop(name, None)

    def ensure_loaded(self) -> None:
        if not self._loaded_builtins:
            self._loaded_builtins = True
            load_builtins()
        if not self._loaded_entry_points:
            self._loaded_entry_points = True
            load_entry_points(self)

    def get(self, name: str) -> MethodSpec:
        self.ensure_loaded()
        try:
            return self._specs[name]
        except KeyError:
            raise RegistryError(unknown_name_message("method", name, self._specs)) from None

    def __contains__(self, name: str) -> bool:
        self.ensure_loaded()
        return name in self._specs

    def names(self) -> list[str]:
        self.ensure_loaded()
        return sorted(self._specs)

    def specs(self) -> list[MethodSpec]:
        return [self._specs[n] for n in self.names()]


REGISTRY = Registry()


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Available: {', '.join(known) or '(none)'}"


def register_method(name: str, *, family: str, exact: bool, params: type = NoParams,
                    causal: bool = True, backward: bool = True,
                    devices: tuple[str, ...] = ALL_DEVICES, dtypes: tuple[str, ...] = ALL_DTYPES,
                    requires: tuple[str, ...] = (), install_hint: str = "",
                    constraints: tuple[Constraint, ...] = (), budget: str | None = None,
                    description: str = "", levels: tuple[str, ...] = ALL_LEVELS,
                    limit: Limit | dict | Callable[[BuildContext], dict] | None = None,
                    rank: Callable[[Any, dict, int], "int | None"] | None = None,
                    decode: bool = False, varlen: bool = False, decode_note: str = "",
                    approximates: str | None = "softmax", registry: Registry | None = None,
                    available: Callable[[], "str | None"] | None = None):
    """Decorator registering ``factory(params, ctx) -> nn.Module`` under ``name``.

    ``limit`` declares the limiting case that ``attnbench check`` compares with exact attention: a dict
    of params (or a function of the build context returning one) with which the method is exact, or a
    :class:`Limit`; ``rank`` maps (params, stats, head_dim) to the rank bound of the attention matrix.
    ``decode``: the built module has the init_state/step hooks (module docstring); ``decode_note``:
    why a causal method has none; ``varlen``: it has a pack(docs) hook.
    ``approximates=None`` declares an operator that is no approximation of softmax attention (its
    error is measured against its own ``exact_reference`` hook and named ``ref_rel_err``).
    ``available``: ``() -> reason | None``, why the method cannot run in this process at all (e.g. it
    needs a process group); its cells are then ``unsupported`` with that reason.
    """
    if not dataclasses.is_dataclass(params):
        raise RegistryError(f"method {name!r}: params must be a dataclass, got {params!r}")
    limit = as_limit(limit)
    if limit is not None and isinstance(limit.params, dict):  # a function is checked by `check`
        known = [f.name for f in dataclasses.fields(params)]
        if bad := sorted(set(limit.params) - set(known)):
            raise RegistryError(f"method {name!r}: limit names unknown params {bad}; "
                                f"{params.__name__} has {known}")

    def wrap(factory):
        try:
            src = f"{inspect.getsourcefile(factory)}:{inspect.getsourcelines(factory)[1]}"
        except (OSError, TypeError):
            src = "<unknown file>"
        origin = f"{factory.__module__}.{factory.__qualname__} ({src})"
        doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        spec = MethodSpec(name=name, factory=factory, family=family, exact=exact, params=params,
                          causal=causal, backward=backward, devices=tuple(devices),
                          dtypes=tuple(dtypes), requires=tuple(requires), install_hint=install_hint,
                          constraints=tuple(constraints), budget=budget, description=doc,
                          origin=origin, levels=tuple(levels), limit=limit, rank=rank,
                          decode=bool(decode), varlen=bool(varlen), decode_note=decode_note,
                          approximates=approximates, available=available)
        (registry or REGISTRY).add(spec)
        factory.spec = spec
        return factory

    return wrap


def load_plugin_file(path: str | Path) -> list[str]:
    """Import a Python file that registers methods; returns the names it added."""
    return import_plugin_file(path, REGISTRY)


def get_method(name: str) -> MethodSpec:
    return REGISTRY.get(name)


def list_methods() -> list[MethodSpec]:
    return REGISTRY.specs()
