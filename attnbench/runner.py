"""A run: check the options, plan the cells, resume or start a run directory with its meta.json,
choose the executor, then hand over to the sweep loop (:mod:`attnbench.sweep`), which appends each row
at once and never loses a result.

- ``--resume RUN_DIR`` runs exactly the cells that have no row yet, of the very suite that was saved
  (its hash is checked against meta.json; :mod:`attnbench.resume`); ``--rerun STATUS`` runs again the
  cells whose latest row has that status.
- How a cell runs (in process, in a worker process, interleaved with its comparison group, re-timed
  when noisy, on Dask workers) is the executor's business (:mod:`attnbench.executors`).
"""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from attnbench import scaleout
from attnbench.checks import ISOLATE_MODES, ROUNDS_MAX, is_number, is_rounds, is_timeout, is_whole
from attnbench.context import CellContext
from attnbench.env import device_tag, parse_device, provenance
from attnbench.errors import BadInput
from attnbench.executors import make_executor
from attnbench.planning import parse_names, plan
from attnbench.plugins import loaded_plugins
from attnbench.registry import load_plugin_file
from attnbench.resume import check_rerun, resumed_run
from attnbench.schema import SCHEMA_VERSION
from attnbench.store import META, RunDirError, RunLock, new_run_dir, write_json_atomic
from attnbench.suite import load_suite
from attnbench.suite_parse import Suite, parse_suite
from attnbench.sweep import EXIT_INTERRUPTED, EXIT_WRITE_FAILED, RunOutcome, now, sweep


def check_options(out, timeout_s, capacity_limit_mib, isolate, rounds, retry_noisy, plugins,
                   progress, on_row) -> None:
    """The API's arguments, checked as the CLI's are: one clear message instead of a TypeError
    somewhere inside the sweep."""
    if not isinstance(out, (str, Path)):
        raise BadInput(f"out={out!r}: expected a directory path (str or Path)")
    if timeout_s is not None and not is_timeout(timeout_s):
        raise BadInput(f"--timeout-s {timeout_s!r}: expected a number of seconds > 0")
    if not (is_number(capacity_limit_mib) and capacity_limit_mib >= 0):
        raise BadInput(f"--capacity-limit-mib {capacity_limit_mib!r}: expected a finite number of "
                       "MiB >= 0 (0 = the device's own memory)")
    if isolate is not None and isolate not in ISOLATE_MODES:
        raise BadInput(f"--isolate {isolate!r}: allowed: {', '.join(ISOLATE_MODES)}")
    if rounds is not None and not is_rounds(rounds):
        raise BadInput(f"--rounds {rounds!r}: expected a whole number from 1 to {ROUNDS_MAX}")
    if not (is_whole(retry_noisy) and 0 <= retry_noisy <= 100):
        raise BadInput(f"--retry-noisy {retry_noisy!r}: expected a whole number from 0 to 100")
    if plugins is not None and (isinstance(plugins, (str, Path)) or
                                not all(isinstance(p, (str, Path)) for p in plugins)):
        raise BadInput(f"plugins={plugins!r}: expected a list of .py file paths")
    if not isinstance(progress, bool):
        raise BadInput(f"progress={progress!r}: expected True or False")
    if on_row is not None and not callable(on_row):
        raise BadInput(f"on_row={on_row!r}: expected a function taking a row dict")


def run_suite(suite: Suite | dict | str | Path, device: str | torch.device = "cpu", *,
              out: str | Path = "results", only: str | Iterable[str] | None = None,
              skip: str | Iterable[str] | None = None, resume: str | Path | None = None,
              progress: bool = True, command: list[str] | None = None, cuda_graphs: bool = False,
              capacity_limit_mib: float = 0.0, on_row: Callable[[dict], Any] | None = None,
              isolate: str | None = None, timeout_s: float | None = None,
              plugins: list[str | Path] | None = None, rounds: int | None = None,
              retry_noisy: int = 0, executor: str | None = None, workers: int | None = None,
              scheduler: str | None = None, shard: str | tuple[int, int] | None = None,
              costs_from: str | Path | None = None,
              rerun: str | Iterable[str] | None = None) -> RunOutcome:
    """Run a suite and return where its rows went (:class:`RunOutcome`: ``run_dir``, ``counts``,
    ``exit_code``).

    ``suite``: a :class:`Suite`, a dict of suite tables (``Suite.from_dict``), a built-in name or a
    path. ``only``/``skip``: method names or wildcards, a list or one comma-separated string; a name
    the suite lacks is added with its default params. With ``resume``, the suite is the copy saved
    in that run directory and only cells without a row run. ``isolate`` ("method" or "cell") runs
    cells in worker processes with a per-cell ``timeout_s``; ``plugins`` are plugin files to load
    (workers load them too; default: those already loaded here). ``rounds`` (default: the suite's
    ``[timing] rounds``) above 1 times the cells of each comparison group interleaved.
    ``retry_noisy`` re-times a noisy cell up to that many times and keeps the steadiest attempt.
    ``on_row(row)`` is called after each row is on disk. ``rerun`` (with ``resume``; statuses, a list
    or one comma-separated string) also runs again the cells whose row has one of those statuses,
    e.g. ``unsupported`` after the environment was fixed: the new row supersedes the old one, which
    stays in results.jsonl (readers take a cell's latest row).

    ``executor="dask"`` spreads the cells over Dask workers (:mod:`attnbench.dask_executor`):
    ``workers`` local worker processes (one per GPU), or those of the cluster at ``scheduler``.
    ``shard="I/N"`` runs shard I of N (:mod:`attnbench.shards`), balanced by the plan's cost
    estimate or by the wall times of the run at ``costs_from``; ``attnbench merge`` joins shards.
    """
    out = "results" if out is None else out
    check_options(out, timeout_s, capacity_limit_mib, isolate, rounds, retry_noisy, plugins,
                   progress, on_row)
    executor = scaleout.check(executor, workers, scheduler, shard, costs_from)
    rerun_statuses = check_rerun(rerun, resume)
    # the workers of a remote cluster have the GPUs: the driver may have none
    device = device if isinstance(device, torch.device) else parse_device(
        str(device), present=scheduler is None)
    for path in plugins or ():
        load_plugin_file(path)  # up front: a missing or broken plugin is exit 2, not crashed rows
    if resume is not None:
        run_dir, suite, meta = resumed_run(Path(resume), device)
        only, skip = meta.get("only"), meta.get("skip")
        cuda_graphs = meta.get("cuda_graphs", cuda_graphs)
        isolate = isolate or meta.get("isolate")
        timeout_s = timeout_s or meta.get("timeout_s")
        rounds = rounds or meta.get("rounds")
        retry_noisy = retry_noisy or meta.get("retry_noisy") or 0
        if shard is not None:
            raise BadInput(f"--shard: {run_dir} is resumed as the shard it was started as "
                           f"({meta.get('shard') or 'the whole suite'}); leave out --shard")
    elif isinstance(suite, dict):
        suite = Suite.from_dict(suite)
    elif not isinstance(suite, Suite):
        if not isinstance(suite, (str, Path)):
            raise BadInput(f"suite={suite!r}: expected a Suite, a dict, a built-in name or a path")
        suite = load_suite(str(suite))
    # the suite's [timing] cuda_graphs = true asks for the mode as --cuda-graphs does
    cuda_graphs = bool(cuda_graphs or suite.timing.get("cuda_graphs"))
    rounds = suite.timing.get("rounds", 1) if rounds is None else rounds
    if rounds > 1 and (isolate is not None or timeout_s is not None):
        raise BadInput(f"--rounds {rounds} times a group's cells together in one process; "
                       "--isolate and --timeout-s run each cell in a worker of its own: "
                       "use one or the other (--rounds 1 turns interleaving off)")
    if timeout_s is not None and isolate is None:
        isolate = "method"  # a hung cell can only be stopped from outside its process
    if isolate and not suite.text:
        raise BadInput(f"{suite.path}: --isolate needs a suite with its TOML text (its workers load "
                       "the run directory's suite.toml); build it with Suite.from_dict or load_suite")
    plugin_files = [str(Path(p).resolve()) for p in (plugins if plugins is not None
                                                     else loaded_plugins())]
    cells = plan(suite, device, only, skip)
    shard_meta: dict = {}
    if shard is not None:
        cells, shard_meta = scaleout.shard_of(cells, shard, rounds, suite, device.type, costs_from)
    elif resume is not None and meta.get("shard") is not None:
        cells = scaleout.resumed_shard(cells, run_dir, meta)
    # plan() has checked them: parse_names gives the names it selected by, for meta.json
    only_list = None if only is None else sorted(parse_names(only, "--only"))
    skip_list = None if skip is None else sorted(parse_names(skip, "--skip"))
    if resume is None:
        local = device.type != "cuda" or torch.cuda.is_available()
        run_dir = new_run_dir(Path(out), suite.name, device_tag(device) if local else "cuda")
        meta = {"schema_version": SCHEMA_VERSION, "suite": suite.name, "suite_version": suite.version,
                "suite_path": suite.path,
                "suite_sha256": suite.text_hash, "baseline": suite.baseline,
                "device_type": device.type,
                "command": shlex.join(command if command is not None else sys.argv),
                "only": only_list, "skip": skip_list, "cuda_graphs": cuda_graphs,
                "cells_planned": len(cells), "started": now(),
                "provenance": provenance(device if local else torch.device("cpu")), **shard_meta}
        _start_run_dir(run_dir, suite, meta)
    meta.update(isolate=isolate, timeout_s=timeout_s, plugins=plugin_files, rounds=rounds,
                retry_noisy=retry_noisy, executor=executor, workers=workers, scheduler=scheduler)
    ctx = CellContext(suite=suite, device=device, cuda_graphs=cuda_graphs,
                      capacity_limit_mib=capacity_limit_mib, run_dir=run_dir)
    init = {"op": "init", "suite": str((run_dir / "suite.toml").resolve()), "plugins": plugin_files,
            "device": str(device), "cuda_graphs": cuda_graphs,
            "capacity_limit_mib": capacity_limit_mib,
            "fault_log": str((run_dir / "worker_faults.log").resolve())}
    dask = None if executor != "dask" else {
        "workers": workers, "scheduler": scheduler,
        "costs": scaleout.order_costs(cells, suite, device.type, Path(out), costs_from)}
    with RunLock(run_dir):  # workers start once the run directory is ours
        runner = make_executor(ctx, isolate=isolate, timeout_s=timeout_s, rounds=rounds,
                               retry_noisy=retry_noisy, worker_init=init, dask=dask)
        return sweep(suite, cells, run_dir, meta, device, runner, progress, on_row,
                      resumed=resume is not None, rerun=rerun_statuses)


def _start_run_dir(run_dir: Path, suite: Suite, meta: dict) -> None:
    """suite.toml and the first meta.json; if they cannot be written (disk full, read-only), the
    half-made directory goes again and nothing is left behind."""
    try:
        (run_dir / "suite.toml").write_text(suite.text, encoding="utf-8")
        write_json_atomic(run_dir / META, {**meta, "state": "planned"})
    except OSError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise RunDirError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}; "
                          "nothing was run (free space or choose another --out)") from None


__all__ = ["run_suite", "plan", "RunOutcome", "parse_device", "parse_suite", "loaded_plugins",
           "EXIT_INTERRUPTED", "EXIT_WRITE_FAILED"]
