"""Suites: TOML files validated against the registry and expanded into cells (``Case``).

Every problem is reported before anything runs, as a ``SuiteError`` naming the file, the key, the bad
value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import tomllib
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from attnbench.checks import is_number, is_rounds, is_whole
from attnbench.dtypes import DTYPES
from attnbench.errors import SuiteError  # noqa: F401 (re-exported)
from attnbench.inputs import REGIMES, STORAGES
from attnbench.varlen import check_lengths
from attnbench.params import check_params
from attnbench.registry import REGISTRY, RegistryError, unknown_name_message

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


PLUGIN_HINT = (". A method defined in your own file needs --plugin FILE (attnbench run SUITE "
               "--plugin FILE); one from an installed package registers itself through the "
               "'attnbench.methods' entry point")




@dataclass(frozen=True)
class Case:
    """One cell of a sweep: a method with fixed params on one shape, dtype, mode and input."""

    method: str
    params: tuple[tuple[str, Any], ...]
    level: str
    n: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    mode: str
    causal: bool
    batching: str
    input: tuple[tuple[str, Any], ...]
    seed: int
    layers: int = 1
    ffn_dim: int = 0
    total_tokens: int = 0  # a constant-token sweep: batch = total_tokens / n (0: batch as given)
    # level "train" only: the resolved [train] configuration (task, steps, lr, task knobs, ...); left
    # out of identity() when empty, so the cells of other levels keep their ids
    train: tuple[tuple[str, Any], ...] = ()

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def train_dict(self) -> dict[str, Any]:
        return dict(self.train)

    @property
    def input_dict(self) -> dict[str, Any]:
        return dict(self.input)

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["params"] = self.params_dict
        d["input"] = self.input_dict
        if not self.total_tokens:  # fields added later stay out at their defaults: old ids hold
            d.pop("total_tokens")
        if self.train:
            d["train"] = self.train_dict
        else:
            del d["train"]
        return d

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> "Case":
        """The case back from :meth:`identity` (a row, or JSON sent to a worker)."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        fields["params"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                        for k, v in (d.get("params") or {}).items()))
        fields["input"] = tuple(sorted((d.get("input") or {}).items()))
        fields["train"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                       for k, v in (d.get("train") or {}).items()))
        return cls(**fields)

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def family_key(self) -> tuple:
        """Everything but n: cells that differ only in n share it (used for OOM pruning)."""
        d = self.identity()
        d.pop("n")
        if self.total_tokens:  # the batch follows n in a constant-token sweep
            d.pop("batch")
        return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in d.items()))

    def label(self) -> str:
        """Method name with the params that differ from its defaults (and its budget knob)."""
        shown = self.params
        if self.method in REGISTRY:
            spec = REGISTRY.get(self.method)
            defaults = dataclasses.asdict(spec.params())
            shown = tuple((k, v) for k, v in self.params if k == spec.budget or
                          _norm(defaults.get(k, object())) != _norm(v))
        p = ",".join(f"{k}={_fmt(v)}" for k, v in shown)
        return f"{self.method}({p})" if p else self.method


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _fmt(v: Any) -> str:
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    baseline: str
    path: str
    text: str
    sweep: dict[str, Any]
    methods: list[tuple[str, dict[str, list[Any]]]]
    inputs: list[dict[str, list[Any]]]
    timing: dict[str, Any]
    error: dict[str, Any]
    model: dict[str, Any]
    seed: int
    capacity: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(CAPACITY_DEFAULTS))
    # one dict per entry of ``methods``: sweep axes that entry overrides (its table's ``sweep = {...}``)
    method_sweeps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    decode: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DECODE_DEFAULTS))
    # the resolved [train] configurations (attnbench.train.config), for level "train"
    train: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "Suite":
        """A suite from the same tables a TOML file holds, e.g.
        ``Suite.from_dict({"name": "mine", "sweep": {"n": [256, 512]}, "methods": {"sdpa": {}}})``.
        It is validated as a file would be, and its TOML text is kept, so a run of it can be resumed
        and run in worker processes."""
        from attnbench.tomlwrite import dumps

        if not isinstance(data, dict):
            raise SuiteError(f"{source}: expected a dict of suite tables, got {type(data).__name__}")
        try:
            text = dumps(data)
        except (TypeError, ValueError) as exc:
            raise SuiteError(f"{source}: {exc}") from None
        return parse_suite(tomllib.loads(text), source, text)


def builtin_suites() -> dict[str, Path]:
    root = resources.files("attnbench.suites")
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".toml")}


def resolve_suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists() or "/" in name_or_path:
        if not p.is_file():
            raise SuiteError(f"{name_or_path}: no such suite file")
        return p
    suites = builtin_suites()
    if name_or_path not in suites:
        raise SuiteError(unknown_name_message("suite", name_or_path, suites))
    return suites[name_or_path]


class _Checker:
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


def _check_axis(c: _Checker, key: str, value: Any, device: str | None = None,
                where: str = "sweep") -> Any:
    kind, arg = SWEEP_AXES[key]
    if isinstance(value, dict) and device is None:  # per device: dtype = {cpu = [..], cuda = [..]}
        c.unknown_keys(f"{where}.{key}.", value, DEVICE_TYPES)
        return {dev: _check_axis(c, key, v, dev, where) for dev, v in value.items()}
    name = f"{where}.{key}" + (f".{device}" if device else "")
    if kind == "seed":
        return c.int_list(name, value, minimum=0, maximum=SEED_MAX)
    return c.int_list(name, value, minimum=arg) if kind == "int" else c.choice_list(name, value, arg)


def load_suite(name_or_path: str) -> Suite:
    path = resolve_suite_path(name_or_path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{file}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{file}: not valid TOML: {exc}") from None
    except RecursionError:
        raise SuiteError(f"{file}: not valid for attnbench: arrays or tables nested too deeply "
                         "(a suite needs at most a list of lists)") from None
    if (depth := _nesting(data)) > MAX_NESTING:
        raise SuiteError(f"{file}: values nested {depth} levels deep; a suite needs at most "
                         f"{MAX_NESTING} (tables of lists of lists)")
    return parse_suite(data, file, text)


MAX_NESTING = 8


def _nesting(value: Any, depth: int = 0) -> int:
    """How deeply lists and tables nest in ``value`` (stops counting past MAX_NESTING)."""
    if depth > MAX_NESTING or not isinstance(value, (list, dict)):
        return depth
    items = value.values() if isinstance(value, dict) else value
    return max((_nesting(v, depth + 1) for v in items), default=depth + 1)


def parse_suite(data: dict, file: str, text: str = "") -> Suite:
    c = _Checker(file)
    c.unknown_keys("", data, TOP_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        c.fail("name", name, "required; letters, digits, '_', '.', '-' (max 64), starting with a "
                             "letter or digit")
    version = data.get("version", 1)
    if not is_whole(version):
        c.fail("version", version, "expected an integer")
    description = data.get("description", "")
    if not isinstance(description, str):
        c.fail("description", description, "expected a string")
    seed = data.get("seed", 0)
    if not is_whole(seed) or not 0 <= seed <= SEED_MAX:
        c.fail("seed", seed, f"expected an integer from 0 to 2**62 ({SEED_MAX})")

    sweep_t = data.get("sweep")
    if not isinstance(sweep_t, dict):
        c.fail("sweep", sweep_t, "required table with at least n = [...]")
    c.unknown_keys("sweep.", sweep_t, SWEEP_AXES)
    if "n" not in sweep_t:
        c.fail("sweep.n", None, "required: a list of sequence lengths")
    if "seed" in sweep_t and "seed" in data:
        c.fail("sweep.seed", sweep_t["seed"], "the top-level seed is given too; give seeds in one place "
                                              "(sweep.seed = [...] for several)")
    sweep = {k: _check_axis(c, k, sweep_t.get(k, SWEEP_DEFAULTS.get(k, [seed]))) for k in SWEEP_AXES
             if k in sweep_t or k not in OPTIONAL_AXES}

    methods_t = data.get("methods")
    if not isinstance(methods_t, dict) or not methods_t:
        c.fail("methods", methods_t, "required table with at least one [methods.NAME]")
    try:
        REGISTRY.ensure_loaded()
    except RegistryError as exc:
        raise SuiteError(f"{file}: {exc}") from None
    methods: list[tuple[str, dict[str, list[Any]]]] = []
    method_sweeps: list[dict[str, Any]] = []
    for mname, tables in methods_t.items():
        if mname not in REGISTRY:
            c.fail(f"methods.{mname}", tables, unknown_name_message("method", mname, REGISTRY.names())
                   + PLUGIN_HINT)
        spec = REGISTRY.get(mname)
        if isinstance(tables, list) and not tables:
            c.fail(f"methods.{mname}", tables, "an empty list of tables runs nothing; give at least "
                                              "one [[methods.NAME]] table or use [methods.NAME]")
        for i, table in enumerate(tables if isinstance(tables, list) else [tables]):
            if not isinstance(table, dict):
                c.fail(f"methods.{mname}", table, "expected a table of params")
            where = f"methods.{mname}" + (f"[{i}]" if isinstance(tables, list) else "")
            table = dict(table)
            override = table.pop("sweep", {})  # this entry's own values for some sweep axes
            if not isinstance(override, dict):
                c.fail(f"{where}.sweep", override, "expected a table of sweep axes, e.g. "
                                                   "sweep = { dtype = [\"fp32\"] }")
            c.unknown_keys(f"{where}.sweep.", override, SWEEP_AXES)
            method_sweeps.append({k: _check_axis(c, k, v, where=f"{where}.sweep")
                                  for k, v in override.items()})
            methods.append((mname, check_params(c, where, spec.params, table)))

    baseline = data.get("baseline", "sdpa")
    if not isinstance(baseline, str) or baseline not in REGISTRY:
        c.fail("baseline", baseline, unknown_name_message("method", str(baseline), REGISTRY.names()))
    if not REGISTRY.get(baseline).exact:
        c.fail("baseline", baseline, "the baseline must be an exact method; exact methods: " +
               ", ".join(s.name for s in REGISTRY.specs() if s.exact))

    inputs_t = data.get("inputs", {"gaussian": {"regime": "gaussian"}})
    if not isinstance(inputs_t, dict) or not inputs_t:
        c.fail("inputs", inputs_t, "expected tables [inputs.LABEL] with regime = ...")
    inputs = []
    for label, table in inputs_t.items():
        if not isinstance(table, dict):
            c.fail(f"inputs.{label}", table, "expected a table with regime = ...")
        regime = table.get("regime", "gaussian")
        if not isinstance(regime, str) or regime not in REGIMES:  # a list or table is unhashable
            c.fail(f"inputs.{label}.regime", regime, f"allowed: {', '.join(REGIMES)}")
        rest = {k: v for k, v in table.items() if k not in ("regime", "storage", "lengths")}
        grid = check_params(c, f"inputs.{label}", REGIMES[regime].params, rest)
        entry = {"regime": [regime], **grid}
        layouts = table.get("storage", STORAGES[0])
        layouts = layouts if isinstance(layouts, list) else [layouts]
        if not layouts or any(not isinstance(x, str) or x not in STORAGES for x in layouts):
            c.fail(f"inputs.{label}.storage", table.get("storage"),
                   f"allowed: {', '.join(map(repr, STORAGES))} or a list of them (core-level q, k, v "
                   "in (B, H, N, D) memory, or (B, N, H, D) memory as a layer's projection makes them)")
        if layouts != [STORAGES[0]]:  # the default stays out of the cell keys (older runs resume)
            entry["storage"] = layouts
        if "lengths" in table:  # packed documents (attnbench.varlen); absent, the key stays out
            entry["lengths"] = check_lengths(c, f"inputs.{label}.lengths", table["lengths"])
        inputs.append(entry)

    timing = _check_table(c, data, "timing", TIMING_DEFAULTS, {
        "warmup": lambda v: is_whole(v) and v >= 0,
        "warmup_s": lambda v: is_number(v) and v >= 0,
        "repeats": lambda v: is_whole(v) and v >= 1,
        "max_time_s": lambda v: is_number(v) and v > 0,
        "cuda_graphs": lambda v: isinstance(v, bool),
        "rounds": is_rounds})
    error = _check_table(c, data, "error", ERROR_DEFAULTS, {
        "enabled": lambda v: isinstance(v, bool),
        "max_n": lambda v: is_whole(v) and v >= 1})
    model = _check_table(c, data, "model", MODEL_DEFAULTS, {
        "layers": lambda v: is_whole(v) and v >= 1,
        "ffn_dim": lambda v: is_whole(v) and v >= 1})
    capacity = _check_table(c, data, "capacity", CAPACITY_DEFAULTS, {
        "max_batch": lambda v: is_whole(v) and v >= 1,
        "rel_tol": lambda v: is_number(v) and 0 <= v < 1,
        "limit_mib": lambda v: is_number(v) and v >= 0})
    decode = _check_table(c, data, "decode", DECODE_DEFAULTS, {
        "steps": lambda v: is_whole(v) and 1 <= v <= 100_000,
        "warmup": lambda v: is_whole(v) and 0 <= v <= 100_000,
        "cuda_graphs": lambda v: isinstance(v, bool)})
    check_total_tokens(c, sweep_t, sweep, method_sweeps)
    train = _check_train(c, data, sweep, method_sweeps, timing)
    return Suite(name=name, version=version, description=description, baseline=baseline, path=file,
                 text=text, sweep=sweep, methods=methods, inputs=inputs, timing=timing, error=error,
                 model=model, seed=seed, capacity=capacity, method_sweeps=method_sweeps,
                 decode=decode, train=train)


def _all_values(axis: Any) -> list:
    """Every value an axis takes, on any device."""
    return [v for vs in axis.values() for v in vs] if isinstance(axis, dict) else list(axis)


def _check_train(c: _Checker, data: dict, sweep: dict, method_sweeps: list[dict],
                 timing: dict) -> list[dict]:
    """The [train] table's configurations, for suites whose level axis has "train"."""
    from attnbench.train.config import check_train

    levels = _all_values(sweep["level"]) + [v for o in method_sweeps
                                            for v in _all_values(o.get("level", []))]
    if "train" not in levels:
        if "train" in data:
            c.fail("train", data["train"], "applies to level \"train\" only; add \"train\" to "
                                           "sweep.level")
        return []
    if "capacity" in _all_values(sweep["batching"]):
        c.fail("sweep.batching", sweep["batching"], "capacity mode does not apply to train cells "
                                                    "(they train at [train] batch)")
    if timing.get("cuda_graphs"):
        c.fail("timing.cuda_graphs", True, "CUDA graphs do not apply to train cells (each step "
                                           "runs eagerly)")
    return check_train(c, data.get("train"))


_RULES = {"warmup": "an integer >= 0", "warmup_s": "a number >= 0", "repeats": "an integer >= 1",
          "max_time_s": "a number > 0", "cuda_graphs": "true or false",
          "rounds": "an integer from 1 to 1000 (rounds of interleaved timing)", "enabled": "true or false", "max_n": "an integer >= 1",
          "layers": "an integer >= 1", "ffn_dim": "an integer >= 1", "max_batch": "an integer >= 1",
          "rel_tol": "a number in [0, 1)", "limit_mib": "a number >= 0 (MiB; 0 = the device's)",
          "steps": "an integer from 1 to 100000 (timed decode steps)"}
_DECODE_RULES = {"warmup": "an integer from 0 to 100000 (untimed decode steps first)"}


def _check_table(c: _Checker, data: dict, key: str, defaults: dict, rules: dict) -> dict:
    table = data.get(key, {})
    if not isinstance(table, dict):
        c.fail(key, table, f"expected a table with keys {', '.join(defaults)}")
    c.unknown_keys(f"{key}.", table, defaults)
    for k, v in table.items():
        if not rules[k](v):
            rule = _DECODE_RULES.get(k, _RULES[k]) if key == "decode" else _RULES[k]
            c.fail(f"{key}.{k}", v, f"expected {rule}")
    return {**defaults, **table}


def _grid(table: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(table)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(table[k] for k in keys))]


def _axis(suite: Suite, key: str, device_type: str, override: dict | None = None) -> list[Any]:
    v = (override or {}).get(key, suite.sweep.get(key, []))
    if isinstance(v, dict):
        return v.get(device_type, SWEEP_DEFAULTS.get(key, [suite.seed] if key == "seed" else []))
    return v


def expand(suite: Suite, device_type: str = "cpu") -> list[Case]:
    """All cells in run order: per method and params, every other axis, then n ascending (so an OOM
    at some n can prune the larger n of the same family)."""
    inputs = [tuple(sorted({**dataclasses.asdict(REGIMES[d["regime"]].params()), **d}.items()))
              for t in suite.inputs for d in _grid(t)]
    from attnbench.train.config import case_fields

    cases, seen = [], set()
    overrides = suite.method_sweeps or [{}] * len(suite.methods)
    for (mname, grid), override in zip(suite.methods, overrides):
        axes = {k: _axis(suite, k, device_type, override) for k in SWEEP_AXES}
        ns = sorted(set(axes.pop("n")))
        totals = axes.pop("total_tokens")
        if totals:  # batch = total_tokens / n, each n doing the same work
            axes["batch"] = [0]
        defaults = dataclasses.asdict(REGISTRY.get(mname).params())
        for given in _grid(grid):
            params = {**defaults, **given}  # rows carry every param, defaults included
            for combo in _grid({**axes, "input": inputs, "total_tokens": totals or [0]}):
                if combo["level"] == "train":
                    # the sweep's batch, heads, head_dim, mode, batching, inputs do not apply
                    for config in suite.train:
                        for n in ns:
                            fixed = dict(combo, mode="fwd_bwd", batching="fixed", total_tokens=0,
                                         input=(), **case_fields(config, n))
                            case = Case(method=mname, params=tuple(sorted(params.items())), n=n,
                                        **fixed)
                            if case.cell_id not in seen:
                                seen.add(case.cell_id)
                                cases.append(case)
                    continue
                if combo["mode"] in CAUSAL_MODES:  # causal by definition: listed once, as causal
                    if not combo["causal"] and True in axes["causal"]:
                        continue
                    combo["causal"] = True
                for n in ns:
                    layers = suite.model["layers"] if combo["level"] == "model" else 1
                    ffn = suite.model["ffn_dim"] if combo["level"] == "model" else 0
                    if combo["total_tokens"]:
                        combo["batch"] = combo["total_tokens"] // n
                    cases.append(Case(method=mname, params=tuple(sorted(params.items())), n=n,
                                      layers=layers, ffn_dim=ffn, **combo))
    return cases


def _values(axis: Any, device: str) -> list[Any]:
    """The values an axis takes on ``device`` (a per-device table resolved)."""
    if isinstance(axis, dict):
        return list(axis.get(device, []))
    return list(axis or [])


def check_total_tokens(c: _Checker, given: dict, sweep: dict, method_sweeps: list[dict]) -> None:
    """``total_tokens`` (batch = total_tokens / n): exclusive with ``batch`` and capacity batching,
    and a whole multiple of every n it meets on each device. ``given``: the sweep table as written."""
    for i, override in enumerate([{}, *method_sweeps]):
        where = "sweep" if i == 0 else f"the sweep of method table {i}"
        for device in DEVICE_TYPES:
            totals = _values(override.get("total_tokens", sweep.get("total_tokens")), device)
            if not totals:
                continue
            if "batch" in override or "batch" in given:
                c.fail(f"{where}.total_tokens", totals, "give batch or total_tokens, not both "
                       "(with total_tokens, batch = total_tokens / n)")
            if "capacity" in _values(override.get("batching", sweep.get("batching")), device):
                c.fail(f"{where}.total_tokens", totals, "batching = \"capacity\" finds the batch "
                       "itself; total_tokens fixes it: use one or the other")
            for total in totals:
                for n in _values(override.get("n", sweep.get("n")), device):
                    if total % n:
                        c.fail(f"{where}.total_tokens", total, f"not a whole multiple of n = {n} "
                               f"on {device} (batch = total_tokens / n must be a whole number >= 1)")
