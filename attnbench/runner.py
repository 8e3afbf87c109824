"""The sweep: plan the cells, run them one by one, append each row at once, never lose a result.

- Declared unsupported cases (capabilities, constraints, missing optional libraries) are written as
  ``unsupported`` rows without running.
- An out-of-memory at some n records ``oom``; larger n of the same method, params and other axes are
  recorded as ``oom-pruned`` without running.
- ``--resume RUN_DIR`` runs exactly the cells that have no row yet.
- Ctrl-C or SIGTERM abandons the current cell, records the run as interrupted and returns 130.
- ``rounds > 1`` (``--rounds``, or the suite's ``[timing] rounds``) runs each comparison group (the
  cells that share shape and inputs, whatever the method) together, its timing interleaved in that
  many rounds (:func:`attnbench.interleave.run_interleaved`); an interruption then abandons the group.
- ``isolate="method"`` or ``"cell"`` runs cells in worker processes (:mod:`attnbench.isolate`): a
  worker that dies gives a ``crashed`` row, a cell past ``timeout_s`` a ``timeout`` row, and the sweep
  goes on in a fresh worker.
"""
from __future__ import annotations

import datetime as _dt
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from attnbench.cell import CellContext, run_cell
from attnbench.interleave import batches, run_interleaved
from attnbench.env import device_tag, provenance
from attnbench.registry import REGISTRY, BuildContext
from attnbench.store import (META, ResultWriter, RunDirError, RunLock, iter_rows, new_run_dir,
                             read_meta, write_json_atomic)
from attnbench.suite import Case, Suite, SuiteError, expand, load_suite, parse_suite


FAILED = ("error", "crashed", "timeout")  # statuses that make the run exit 1
ISOLATE_MODES = ("method", "cell")


class Interrupted(BaseException):
    """Raised inside the sweep when SIGINT or SIGTERM arrives (a BaseException, so a method's
    own `except Exception` cannot swallow it)."""


@dataclass
class PlannedCell:
    case: Case
    skip_reason: str | None = None  # set: written as ``unsupported`` without running


@dataclass
class RunOutcome:
    run_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if any(self.counts.get(s, 0) for s in FAILED) else 0


def parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SuiteError(f"--device {name!r}: allowed: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise SuiteError(f"--device {name!r}: allowed: cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SuiteError(f"--device {name}: CUDA is not available in this torch "
                             f"({torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SuiteError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _select(cases: list[Case], only: Iterable[str] | None, skip: Iterable[str] | None) -> list[Case]:
    only, skip = set(only or ()), set(skip or ())
    for name in only | skip:
        if name not in REGISTRY:
            from attnbench.registry import unknown_name_message

            raise SuiteError(f"--only/--skip: {unknown_name_message('method', name, REGISTRY.names())}")
    return [c for c in cases if (not only or c.method in only) and c.method not in skip]


def plan(suite: Suite, device: torch.device, only=None, skip=None) -> list[PlannedCell]:
    """Expand the suite for ``device`` and mark what cannot run, with the reason."""
    from attnbench.dtypes import to_torch

    cells = []
    for case in _select(expand(suite, device.type), only, skip):
        spec = REGISTRY.get(case.method)
        ctx = BuildContext(n=case.n, heads=case.heads, head_dim=case.head_dim,
                           dtype=to_torch(case.dtype), device=device, causal=case.causal,
                           seed=case.seed, num_layers=case.layers)
        try:
            params = spec.params(**case.params_dict)
            why = spec.unsupported_reason(params, ctx, backward=case.mode == "fwd_bwd",
                                          dtype_name=case.dtype, level=case.level)
        except Exception as exc:  # noqa: BLE001 - a constraint that crashes is reported, not fatal
            why = f"constraint check failed: {type(exc).__name__}: {exc}"
        cells.append(PlannedCell(case, why))
    return cells


def _base_row(case: Case, suite: Suite, device: torch.device) -> dict:
    spec = REGISTRY.get(case.method)
    row = case.identity()
    row.update(cell_id=case.cell_id, suite=suite.name, label=case.label(), family=spec.family,
               exact=spec.exact, device=str(device), budget=spec.budget,
               budget_value=case.params_dict.get(spec.budget) if spec.budget else None)
    return row


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _raise_interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def run_suite(suite: Suite | str | Path, device: str | torch.device = "cpu", *,
              out: str | Path = "results", only=None, skip=None, resume: str | Path | None = None,
              progress: bool = True, command: list[str] | None = None, cuda_graphs: bool = False,
              capacity_limit_mib: float = 0.0, on_row=None, isolate: str | None = None,
              timeout_s: float | None = None, plugins: list[str | Path] | None = None,
              rounds: int | None = None) -> RunOutcome:
    """Run a suite (object, built-in name or path) and return where its rows went.

    With ``resume``, the suite is the copy saved in that run directory and only cells without a row run.
    ``isolate`` ("method" or "cell") runs cells in worker processes with a per-cell ``timeout_s``;
    ``plugins`` are the plugin files the workers load (default: those loaded in this process).
    ``rounds`` (default: the suite's ``[timing] rounds``) above 1 times the cells of each comparison
    group (same shape and inputs, any method) interleaved, in that many rounds
    (:func:`attnbench.interleave.run_interleaved`).
    """
    if isolate is not None and isolate not in ISOLATE_MODES:
        raise SuiteError(f"--isolate {isolate!r}: allowed: {', '.join(ISOLATE_MODES)}")
    if timeout_s is not None and not 0 < timeout_s < 1e7:
        raise SuiteError(f"--timeout-s {timeout_s!r}: expected a number of seconds > 0")
    device = parse_device(str(device)) if not isinstance(device, torch.device) else device
    if resume is not None:
        run_dir = Path(resume)
        meta = read_meta(run_dir)
        suite_path = run_dir / "suite.toml"
        if not suite_path.is_file():
            raise RunDirError(f"{run_dir}: no suite.toml to resume from")
        suite = load_suite(str(suite_path))
        if meta.get("device_type") and meta["device_type"] != device.type:
            raise RunDirError(f"{run_dir} was run on {meta['device_type']}; resume it with "
                              f"--device {meta['device_type']}")
        _check_meta(run_dir, meta)
        only, skip = meta.get("only"), meta.get("skip")
        cuda_graphs = meta.get("cuda_graphs", cuda_graphs)
        isolate = isolate or meta.get("isolate")
        timeout_s = timeout_s or meta.get("timeout_s")
        rounds = rounds or meta.get("rounds")
    elif not isinstance(suite, Suite):
        suite = load_suite(str(suite))
    # the suite's [timing] cuda_graphs = true asks for the mode as --cuda-graphs does
    cuda_graphs = bool(cuda_graphs or suite.timing.get("cuda_graphs"))
    rounds = suite.timing.get("rounds", 1) if rounds is None else rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 1000:
        raise SuiteError(f"--rounds {rounds!r}: expected a whole number from 1 to 1000")
    if rounds > 1 and (isolate is not None or timeout_s is not None):
        raise SuiteError(f"--rounds {rounds} times a group's cells together in one process; "
                         "--isolate and --timeout-s run each cell in a worker of its own: "
                         "use one or the other (--rounds 1 turns interleaving off)")
    if timeout_s is not None and isolate is None:
        isolate = "method"  # a hung cell can only be stopped from outside its process
    if isolate and not suite.text:
        raise SuiteError(f"{suite.path}: --isolate needs a suite read from TOML (its workers load "
                         "the run directory's suite.toml)")
    plugins = [str(Path(p).resolve()) for p in (plugins if plugins is not None else loaded_plugins())]
    cells = plan(suite, device, only, skip)
    if resume is None:
        run_dir = new_run_dir(Path(out), suite.name, device_tag(device))
        (run_dir / "suite.toml").write_text(suite.text, encoding="utf-8")
        meta = {"suite": suite.name, "suite_version": suite.version, "suite_path": suite.path,
                "suite_sha256": suite.text_hash, "baseline": suite.baseline, "device_type": device.type,
                "command": shlex.join(command if command is not None else sys.argv),
                "only": sorted(only) if only else None, "skip": sorted(skip) if skip else None,
                "cuda_graphs": cuda_graphs, "cells_planned": len(cells), "started": _now(),
                "provenance": provenance(device)}
    meta.update(isolate=isolate, timeout_s=timeout_s, plugins=plugins, rounds=rounds)
    executor = None
    if isolate:
        from attnbench.isolate import IsolatedCells

        init = {"op": "init", "suite": str((run_dir / "suite.toml").resolve()), "plugins": plugins,
                "device": str(device), "cuda_graphs": cuda_graphs,
                "capacity_limit_mib": capacity_limit_mib,
                "fault_log": str((run_dir / "worker_faults.log").resolve())}
        executor = IsolatedCells(init, isolate, timeout_s)
    with RunLock(run_dir):
        return _sweep(suite, cells, run_dir, meta, device, progress, cuda_graphs, capacity_limit_mib,
                      on_row, resumed=resume is not None, executor=executor, rounds=rounds)


def _check_meta(run_dir: Path, meta: dict) -> None:
    """meta.json is data from disk: check the fields a resume acts on before using them."""
    def bad(key):
        raise RunDirError(f"{run_dir}/{META}: {key} = {meta.get(key)!r} is not valid; is this a run "
                          "directory written by attnbench?")

    for key in ("only", "skip"):
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
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 1000):
        bad("rounds")
    t = meta.get("timeout_s")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1e7):
        bad("timeout_s")
    if isinstance(meta.get("resumes", 0), bool) or not isinstance(meta.get("resumes", 0), int):
        bad("resumes")


def loaded_plugins() -> list[str]:
    """Files loaded with ``--plugin`` in this process (workers of an isolated run load them too)."""
    return sorted({m.__file__ for name, m in list(sys.modules.items())
                   if name.startswith("attnbench_plugin_") and getattr(m, "__file__", None)})


def _sweep(suite, cells, run_dir, meta, device, progress, cuda_graphs, capacity_limit_mib, on_row,
           resumed, executor=None, rounds=1):
    writer = ResultWriter(run_dir)  # sets a torn last line aside before the rows are read
    existing = list(iter_rows(run_dir))
    done = {r["cell_id"] for r in existing}
    oom_at: dict[tuple, int] = {}
    for r in existing:
        if r.get("status") == "oom":
            key = Case(**{**{k: r[k] for k in Case.__dataclass_fields__},
                          "params": tuple(sorted(r["params"].items())),
                          "input": tuple(sorted(r["input"].items()))}).family_key()
            oom_at[key] = min(oom_at.get(key, r["n"]), r["n"])
    todo = [c for c in cells if c.case.cell_id not in done]
    meta.update(state="running", cells_planned=len(cells),
                resumes=meta.get("resumes", 0) + (1 if resumed else 0))
    write_json_atomic(run_dir / META, meta)
    ctx = CellContext(suite=suite, device=device, cuda_graphs=cuda_graphs,
                      capacity_limit_mib=capacity_limit_mib)
    counts: dict[str, int] = {}
    for r in existing:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _raise_interrupt)
    interrupted = False

    def write(row):
        row["finished"] = _now()
        writer.append(row)
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        if on_row is not None:
            on_row(row)

    try:
        with _progress(progress, len(cells), len(cells) - len(todo)) as bar:
            for batch in batches(todo, rounds):
                runnable = []
                for cell in batch:
                    case = cell.case
                    row = _base_row(case, suite, device)
                    row["started"] = _now()
                    fam = case.family_key()
                    if cell.skip_reason is not None:
                        row.update(status="unsupported", reason=cell.skip_reason)
                    elif fam in oom_at and case.n > oom_at[fam]:
                        row.update(status="oom-pruned",
                                   reason=f"out of memory at n={oom_at[fam]}; larger n not run")
                    else:
                        runnable.append((case, row))
                        continue
                    bar(case)
                    write(row)
                if rounds > 1 and runnable:
                    bar(runnable[0][0])
                    results = run_interleaved(ctx, [case for case, _ in runnable], rounds)
                else:
                    results = None
                for i, (case, row) in enumerate(runnable):
                    if results is None:
                        bar(case)
                        row.update(run_cell(ctx, case) if executor is None else executor.run(case))
                    else:
                        if i:
                            bar(case)
                        row.update(results[i])
                    if row["status"] == "oom":
                        fam = case.family_key()
                        oom_at[fam] = min(oom_at.get(fam, case.n), case.n)
                    write(row)
    except Interrupted as exc:
        interrupted = True
        meta["interrupted_by"] = str(exc)
    finally:
        if executor is not None:
            executor.close()  # also on interruption: no worker outlives the run
        for s, h in old.items():
            signal.signal(s, h)
        writer.close()
        meta.update(state="interrupted" if interrupted else "complete", finished=_now(),
                    counts=counts)
        write_json_atomic(run_dir / META, meta)
    return RunOutcome(run_dir, counts, interrupted)


class _progress:
    """A rich progress bar on stderr: cells done/total, elapsed, ETA and the current cell."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done
        self.bar = self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task("starting", total=self.total, completed=self.done)
        return self

    def __call__(self, case: Case) -> None:
        if self.bar is not None:
            if self._started:
                self.bar.advance(self.task)
            self.bar.update(self.task, description=f"{case.label()[:40]} n={case.n} {case.mode} "
                                                   f"{case.dtype}")
        self._started = True

    _started = False

    def __exit__(self, *exc):
        if self.bar is not None:
            if self._started and exc[0] is None:
                self.bar.advance(self.task)
                self.bar.update(self.task, description="done")
            self.bar.__exit__(*exc)
        return False


def dry_run(suite: Suite, device: torch.device, only=None, skip=None) -> list[PlannedCell]:
    return plan(suite, device, only, skip)


__all__ = ["run_suite", "plan", "dry_run", "parse_device", "RunOutcome", "parse_suite"]
