"""Suites: TOML files validated against the registry and expanded into cells (``Case``).

Every problem is reported before anything runs, as a ``SuiteError`` naming the file, the key, the bad
value and what is allowed. This module finds and reads a suite (a built-in name or a path); the rest
lives in modules of its own, re-exported here:

- :mod:`attnbench.case`: ``Case``, one cell and its identity (``cell_id``);
- :mod:`attnbench.suite_checks`: the sweep axes, table defaults and the checks values go through;
- :mod:`attnbench.suite_parse`: ``Suite`` and ``parse_suite`` (the tables of a file made into one);
- :mod:`attnbench.expand`: ``expand``, a suite's cells in run order.
"""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from attnbench.case import Case  # noqa: F401 (re-exported)
from attnbench.errors import SuiteError
from attnbench.expand import expand  # noqa: F401 (re-exported)
from attnbench.registry import unknown_name_message
from attnbench.suite_checks import (AXIS_MAX, BATCHING, CAPACITY_DEFAULTS,  # noqa: F401 (re-exported)
                                    CAUSAL_MODES, DECODE_DEFAULTS, DEVICE_TYPES, ERROR_DEFAULTS,
                                    LEVELS, MODEL_DEFAULTS, MODES, OPTIONAL_AXES, SAFE_NAME, SEED_MAX,
                                    SWEEP_AXES, SWEEP_DEFAULTS, TIMING_DEFAULTS, TOP_KEYS,
                                    check_total_tokens)
from attnbench.suite_parse import PLUGIN_HINT, Suite, parse_suite  # noqa: F401 (re-exported)


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
