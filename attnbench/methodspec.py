"""What a method is, as the registry holds it: :class:`MethodSpec` (its factory, params dataclass and
declared capabilities), the :class:`BuildContext` its factory builds for, the :class:`SharedScope` of
one model's layers, its limiting case (:class:`Limit`) and :class:`Unsupported`, the reason a case
cannot run. The contract a built module keeps (forward, optional hooks, decode, packed documents) is
described in :mod:`attnbench.registry`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

from attnbench.errors import RegistryError

Family = Literal["exact", "low_rank", "sparse", "lsh", "kernel", "landmark", "recurrent", "other"]
ALL_DEVICES = ("cpu", "cuda")
ALL_DTYPES = ("fp32", "fp16", "bf16")
ALL_LEVELS = ("core", "layer", "model")


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
    # the autocast dtype the module will run under (the train level's bf16 on GPU), None when it runs
    # in ``dtype``: warm-ups that autotune kernels run under it, so they tune what the cell will call
    amp: torch.dtype | None = None

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype the module's matmuls and kernels see: ``amp`` where set, else ``dtype``."""
        return self.amp or self.dtype

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
