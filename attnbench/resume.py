"""Picking a run up again (``--resume RUN_DIR``, and ``merge``, which reads the suite of its shards):
meta.json is data from disk, so every field a resume acts on is checked first; the saved suite.toml
is loaded (with the plugin files the run loaded, or a message naming them) and must be the suite the
run started with (its sha256 in meta.json); the device type must be the run's. ``--rerun STATUS``
also runs again the planned cells whose latest row has one of those statuses.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import torch

from attnbench.checks import ISOLATE_MODES, is_rounds, is_timeout, is_whole
from attnbench.errors import BadInput, RunDirError, SuiteError
from attnbench.planning import parse_names
from attnbench.plugins import loaded_plugins
from attnbench.schema import STATUSES
from attnbench.store import META, read_meta
from attnbench.suite import load_suite
from attnbench.suite_parse import Suite


def resumed_run(run_dir: Path, device: torch.device) -> tuple[Path, Suite, dict]:
    """The run directory to resume, its saved suite and its meta.json, each checked: meta.json as data
    from disk, the suite against the hash the run started with, the device type against the run's."""
    meta = read_meta(run_dir)
    check_meta(run_dir, meta)
    suite_path = run_dir / "suite.toml"
    if not suite_path.is_file():
        raise RunDirError(f"{run_dir}: no suite.toml to resume from")
    try:
        suite = load_suite(str(suite_path))
    except SuiteError as exc:
        missing = [p for p in meta.get("plugins") or () if p not in loaded_plugins()]
        if missing:
            flags = " ".join(f"--plugin {shlex.quote(p)}" for p in missing)
            raise SuiteError(f"{exc}. This run loaded plugin files; resume it with them: "
                             f"attnbench run --resume {shlex.quote(str(run_dir))} {flags}") from None
        raise
    want = meta.get("suite_sha256")
    if want and suite.text_hash != want:
        raise RunDirError(f"{suite_path} is not the suite this run started with: its sha256 is "
                          f"{suite.text_hash}, meta.json records {want}; resuming would mix two "
                          "suites' rows in one run (start a new run for the changed suite)")
    if meta.get("device_type") and meta["device_type"] != device.type:
        raise RunDirError(f"{run_dir} was run on {meta['device_type']}; resume it with "
                          f"--device {meta['device_type']}")
    return run_dir, suite, meta


def check_meta(run_dir: Path, meta: dict) -> None:
    """meta.json is data from disk: check the fields a resume acts on before using them."""
    def bad(key):
        raise RunDirError(f"{run_dir}/{META}: {key} = {meta.get(key)!r} is not valid; is this a run "
                          "directory written by attnbench?")

    for key in ("only", "skip", "plugins"):
        v = meta.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            bad(key)
    if not isinstance(meta.get("device_type", "cpu"), str):
        bad("device_type")
    if not isinstance(meta.get("cuda_graphs", False), bool):
        bad("cuda_graphs")
    if meta.get("isolate") not in (None, *ISOLATE_MODES):
        bad("isolate")
    r = meta.get("rounds")
    if r is not None and not is_rounds(r):
        bad("rounds")
    t = meta.get("timeout_s")
    if t is not None and not is_timeout(t):
        bad("timeout_s")
    for key in ("resumes", "retry_noisy"):
        if not is_whole(meta.get(key) or 0):
            bad(key)
    if not isinstance(meta.get("suite_sha256", ""), str):
        bad("suite_sha256")


def check_rerun(rerun, resume) -> frozenset[str]:
    """The statuses ``rerun`` names (none when None), each one a row status; only with ``resume``."""
    names = parse_names(rerun, "--rerun", what="status", whats="statuses")
    if names is None:
        return frozenset()
    if resume is None:
        raise BadInput("--rerun runs cells of an existing run again: give it with --resume RUN_DIR")
    bad = [n for n in names if n not in STATUSES]
    if bad:
        raise BadInput(f"--rerun {','.join(names)}: {', '.join(bad)} is not a row status; expected "
                       f"one or more of {', '.join(STATUSES)}")
    return frozenset(names)


def kept_rows(rows: list[dict], rerun: frozenset[str], planned_ids: set[str]) -> list[dict]:
    """The rows a resume keeps (their cells count as done): all but the planned cells' rows whose
    status ``rerun`` names."""
    return [r for r in rows if r["status"] not in rerun or r["cell_id"] not in planned_ids]
