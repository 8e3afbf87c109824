"""A suite as data (:class:`Suite`) and :func:`parse_suite`, which validates the tables of a suite file
against the registry and the suite's words (:mod:`attnbench.suite_checks`) and makes one.

Every problem is reported before anything runs, as a ``SuiteError`` naming the file, the key, the bad
value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from dataclasses import dataclass
from typing import Any

from attnbench.checks import is_whole
from attnbench.errors import RegistryError, SuiteError
from attnbench.inputs import REGIMES, STORAGES
from attnbench.params import check_params
from attnbench.registry import REGISTRY, unknown_name_message
from attnbench.suite_checks import (CAPACITY_CHECKS, CAPACITY_DEFAULTS, DECODE_CHECKS, DECODE_DEFAULTS,
                                    ERROR_CHECKS, ERROR_DEFAULTS, MODEL_CHECKS, MODEL_DEFAULTS,
                                    OPTIONAL_AXES, SAFE_NAME, SEED_MAX, SWEEP_AXES, SWEEP_DEFAULTS,
                                    TIMING_CHECKS, TIMING_DEFAULTS, TOP_KEYS, SuiteChecker,
                                    all_axis_values, check_axis, check_table, check_total_tokens)
from attnbench.varlen import check_lengths

PLUGIN_HINT = (". A method defined in your own file needs --plugin FILE (attnbench run SUITE "
               "--plugin FILE); one from an installed package registers itself through the "
               "'attnbench.methods' entry point")


@dataclass(frozen=True)
class Suite:
    """A validated suite: its sweep axes, methods with their params grids, inputs and settings tables
    (defaults filled in), and the TOML text it was read from (kept in a run directory for resumes)."""

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


def parse_suite(data: dict, file: str, text: str = "") -> Suite:
    """The suite in ``data`` (the tables of a TOML file named ``file``, whose text is ``text``),
    every value checked first."""
    c = SuiteChecker(file)
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
    sweep = {k: check_axis(c, k, sweep_t.get(k, SWEEP_DEFAULTS.get(k, [seed]))) for k in SWEEP_AXES
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
            method_sweeps.append({k: check_axis(c, k, v, where=f"{where}.sweep")
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

    timing = check_table(c, data, "timing", TIMING_DEFAULTS, TIMING_CHECKS)
    error = check_table(c, data, "error", ERROR_DEFAULTS, ERROR_CHECKS)
    model = check_table(c, data, "model", MODEL_DEFAULTS, MODEL_CHECKS)
    capacity = check_table(c, data, "capacity", CAPACITY_DEFAULTS, CAPACITY_CHECKS)
    decode = check_table(c, data, "decode", DECODE_DEFAULTS, DECODE_CHECKS)
    check_total_tokens(c, sweep_t, sweep, method_sweeps)
    train = _check_train(c, data, sweep, method_sweeps, timing)
    return Suite(name=name, version=version, description=description, baseline=baseline, path=file,
                 text=text, sweep=sweep, methods=methods, inputs=inputs, timing=timing, error=error,
                 model=model, seed=seed, capacity=capacity, method_sweeps=method_sweeps,
                 decode=decode, train=train)


def _check_train(c: SuiteChecker, data: dict, sweep: dict, method_sweeps: list[dict],
                 timing: dict) -> list[dict]:
    """The [train] table's configurations, for suites whose level axis has "train"."""
    from attnbench.train.config import check_train

    levels = all_axis_values(sweep["level"]) + [v for o in method_sweeps
                                                for v in all_axis_values(o.get("level", []))]
    if "train" not in levels:
        if "train" in data:
            c.fail("train", data["train"], "applies to level \"train\" only; add \"train\" to "
                                           "sweep.level")
        return []
    if "capacity" in all_axis_values(sweep["batching"]):
        c.fail("sweep.batching", sweep["batching"], "capacity mode does not apply to train cells "
                                                    "(they train at [train] batch)")
    if timing.get("cuda_graphs"):
        c.fail("timing.cuda_graphs", True, "CUDA graphs do not apply to train cells (each step "
                                           "runs eagerly)")
    return check_train(c, data.get("train"))
