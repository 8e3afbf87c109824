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
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from attnbench.errors import RegistryError  # noqa: F401 (re-exported)

Family = Literal["exact", "low_rank", "sparse", "lsh", "kernel", "landmark", "recurrent", "other"]
ENTRY_POINT_GROUP = "attnbench.methods"
ALL_DEVICES = ("cpu", "cuda")
ALL_DTYPES = ("fp32", "fp16", "bf16")
ALL_LEVELS = ("core", "layer", "model")
METHOD_NAME = re.compile(r"[A-Za-z.][^\s,=*?\[\]]{0,63}")


class Unsupported(Exception):
    """A case a method cannot run; it becomes a result row with status ``unsupported`` and this reason."""




@dataclass(frozen=True)
class NoParams:
    """Params of a method without knobs."""


class SharedScope:
    """Objects shared by every layer of one model (e.g. Linformer's layerwise projection).

    A multi-layer model creates one scope and hands it to the build context of each layer; a method asks
    for a shared object by key and gets the very same object back in every layer.
    """

    def __init__(self) -> None:
        self._items: dict[Any, Any] = {}

    def get_or_create(self, key: Any, factory: Callable[[], Any]) -> Any:
        if key not in self._items:
            self._items[key] = factory()
        return self._items[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class BuildContext:
    """What a factory knows when it builds a method for one cell (or one layer of a model)."""

    n: int
    heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32
    batch: int = 1  # the cell's batch (a hint for warm-ups and compiled kernels; capacity mode varies it)
    device: torch.device = torch.device("cpu")
    causal: bool = False
    seed: int = 0
    layer: int = 0
    num_layers: int = 1
    scope: SharedScope = field(default_factory=SharedScope, compare=False)

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from the cell seed, the layer and ``salt``: reproducible setup."""
        g = torch.Generator(device="cpu")
        g.manual_seed((self.seed * 1_000_003 + self.layer * 7919 + salt) % (2**63))
        return g


Constraint = Callable[[Any, "BuildContext"], "str | None"]
Reference = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Limit:
    """A method's limiting case: the params with which it computes an exact attention up to rounding,
    and what it is exact against. ``attnbench check`` runs it against a float64 reference.

    - ``params``: knob values (a dict, or a function of the :class:`BuildContext` returning one, for
      values that depend on n) that make the method exact, e.g. ``{"window": ctx.n}``; ``{}`` for an
      exact method, whose limit is itself. ``None``: the method has no exact limit (random features);
      then ``reference`` or ``converges`` says what is checked instead.
    - ``reference``: ``(module, q, k, v) -> tensor`` computed in float64, the attention the limit case
      equals when that is neither softmax attention nor the module's ``exact_reference`` hook (e.g. the
      elu+1 kernel attention that linear attention is by definition). Default: the hook if the module
      has one, else :func:`attnbench.reference.reference_attention`.
    - ``build``: ``(params, ctx) -> module`` used instead of the registered factory, for limits its
      declared constraints refuse because they save nothing in a sweep (Linformer's k = n).
    - ``converges``: ascending values of the method's ``budget`` knob, or a function of the build
      context giving them, under which the error against softmax attention (the ``exact_reference``
      hook where there is one), averaged over seeds, must fall: for methods without an exact limit.
    - ``tol``: the relative error allowed in float64 when more than rounding remains at the limit (an
      iteration that converges but is not exact); default :data:`attnbench.conformance.TOL`.
    - ``note``: why these params are exact, in a few words (shown by ``attnbench check``).
    """

    params: dict | Callable[["BuildContext"], dict] | None = field(default_factory=dict)
    reference: Reference | None = None
    build: Callable[[Any, "BuildContext"], nn.Module] | None = None
    converges: tuple | Callable[["BuildContext"], tuple] | None = None
    tol: float | None = None
    note: str = ""

    def params_for(self, ctx: "BuildContext") -> dict | None:
        """The limit's knob values for ``ctx`` (None: no exact limit)."""
        return self.params(ctx) if callable(self.params) else self.params

    def budgets_for(self, ctx: "BuildContext") -> tuple:
        """The ascending budget values of the convergence check for ``ctx`` (empty: none declared)."""
        values = self.converges(ctx) if callable(self.converges) else self.converges
        return tuple(values or ())


def as_limit(limit: "Limit | dict | Callable[[BuildContext], dict] | None") -> "Limit | None":
    """``register_method``'s ``limit`` argument as a :class:`Limit` (a dict or function is its params)."""
    if limit is None or isinstance(limit, Limit):
        return limit
    if isinstance(limit, dict) or callable(limit):
        return Limit(params=limit)
    raise RegistryError(f"limit must be a dict of params, a function ctx -> dict or a Limit, "
                        f"got {type(limit).__name__}")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: Callable[[Any, BuildContext], nn.Module]
    family: str
    exact: bool
    params: type
    causal: bool = True
    backward: bool = True
    devices: tuple[str, ...] = ALL_DEVICES
    dtypes: tuple[str, ...] = ALL_DTYPES
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    constraints: tuple[Constraint, ...] = ()
    budget: str | None = None  # name of the knob that trades accuracy for cost (k, nb_features, ...)
    description: str = ""
    origin: str = ""
    levels: tuple[str, ...] = ALL_LEVELS
    limit: Limit | None = None  # the limiting case (see Limit); exact methods default to themselves
    # the rank bound of the attention matrix at these params: (params, stats, head_dim) -> int | None
    rank: Callable[[Any, dict, int], "int | None"] | None = None
    decode: bool = False  # init_state/step hooks: one token at a time (see the module docstring)
    varlen: bool = False  # a pack(docs) hook: attention within packed documents
    decode_note: str = ""  # why there is no decode path (shown in unsupported rows)
    # what the method approximates: "softmax" attention (its rel_err is against it), or None for an
    # operator in its own right (rows carry ref_rel_err against its float64 self instead)
    approximates: str | None = "softmax"
    available: Callable[[], "str | None"] | None = None  # () -> why not in this process (no group)

    def limit_case(self) -> Limit | None:
        """The declared limiting case; an exact method's limit is itself (its default params)."""
        if self.limit is None and self.exact:
            return Limit(params={}, note="exact method: its own default params")
        return self.limit

    @property
    def takes_hidden(self) -> bool:
        """A method without a core level is a whole self-attention layer: ``forward(x)`` on
        (B, N, d_model) with its own input and output projections (e.g. a community module)."""
        return "core" not in self.levels

    def unavailable_reason(self) -> str | None:
        """Why this method cannot be used on this installation at all, or None."""
        missing = [m for m in self.requires if importlib.util.find_spec(m.split(".")[0]) is None]
        if missing:
            hint = f" ({self.install_hint})" if self.install_hint else ""
            return f"unavailable: {', '.join(missing)} not installed{hint}"
        return self.available() if self.available is not None else None

    def unsupported_reason(self, params: Any, ctx: BuildContext, *, backward: bool = False,
                           dtype_name: str | None = None, level: str | None = None,
                           decode: bool = False, packed: bool = False) -> str | None:
        """The declared reason this case cannot run, checked before building anything. ``decode``:
        the case steps one token at a time; ``packed``: its sequences are packed documents."""
        if (why := self.unavailable_reason()) is not None:
            return why
        if level is not None and level not in self.levels:
            return (f"{self.name} runs at level {'/'.join(self.levels)}, not {level}" +
                    (" (it is a whole self-attention layer taking hidden states)"
                     if self.takes_hidden else ""))
        if ctx.device.type not in self.devices:
            return f"{self.name} runs on {'/'.join(self.devices)}, not {ctx.device.type}"
        if dtype_name is not None and dtype_name not in self.dtypes:
            return f"{self.name} supports dtypes {'/'.join(self.dtypes)}, not {dtype_name}"
        if ctx.causal and not self.causal:
            return f"{self.name} has no causal variant"
        if backward and not self.backward:
            return f"{self.name} has no backward pass"
        if decode and (why := self.decode_reason()) is not None:
            return why
        if packed and not self.varlen:
            return f"{self.name} cannot attend within packed documents (no varlen path)"
        for check in self.constraints:
            if (why := check(params, ctx)) is not None:
                return why
        return None

    def decode_reason(self) -> str | None:
        """Why this method cannot decode one token at a time, or None."""
        if self.decode:
            return None
        if not self.causal:
            return f"{self.name} is not causal (no causal variant), so it has no token-by-token decode"
        if self.decode_note:
            return f"{self.name} has no decode path: {self.decode_note}"
        return (f"{self.name} declares no decode path (register_method(decode=True) with "
                "init_state/step hooks)")

    def build(self, params: Any, ctx: BuildContext, *, checked: bool = False) -> nn.Module:
        """The method's module for ``ctx``. Its declared constraints are checked here (a violation
        raises :class:`Unsupported` with the reason) unless the caller already did (``checked``:
        the planner checks every cell once, before anything runs)."""
        if not checked:
            for check in self.constraints:
                if (why := check(params, ctx)) is not None:
                    raise Unsupported(why)
        return self.factory(params, ctx)

    def param_fields(self) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.params)}


class Registry:
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


def load_builtins() -> None:
    """Import every module of ``attnbench.methods`` (the repo's top-level ``methods/`` folder)."""
    import attnbench.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def load_entry_points(registry: Registry) -> None:
    """Import plugins installed under the ``attnbench.methods`` entry-point group.

    A broken plugin never hides the built-in methods: its error is kept in ``registry.plugin_errors``
    and shown by ``attnbench list``.
    """
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type) and not hasattr(obj, "spec"):
                obj()  # an entry point may name a function that registers methods
        except RegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin may fail in any way
            registry.plugin_errors.append(f"entry point {ep.name} ({ep.value}): "
                                          f"{type(exc).__name__}: {exc}")


def load_plugin_file(path: str | Path) -> list[str]:
    """Import a Python file that registers methods; returns the names it added."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"--plugin {path}: no such file")
    if path.suffix != ".py":
        raise RegistryError(f"--plugin {path}: expected a .py file")
    REGISTRY.ensure_loaded()
    before = set(REGISTRY._specs)
    mod_name = f"attnbench_plugin_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        return []
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except RegistryError:
        del sys.modules[mod_name]
        raise
    except (Exception, SystemExit) as exc:  # a plugin that exits at import must not end the run
        del sys.modules[mod_name]
        what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else \
            f"{type(exc).__name__}: {exc}"
        raise RegistryError(f"--plugin {path}: failed to import: {what}") from None
    return sorted(set(REGISTRY._specs) - before)


def get_method(name: str) -> MethodSpec:
    return REGISTRY.get(name)


def list_methods() -> list[MethodSpec]:
    return REGISTRY.specs()
