"""The sweep loop of one run: hand the cells to an executor, append each row the moment it comes back,
never lose a result. :mod:`attnbench.runner` sets the run up (options, resume, run directory, meta,
executor) and calls :func:`sweep`.

- Declared unsupported cases (capabilities, constraints, missing optional libraries) are written as
  ``unsupported`` rows without running.
- An out-of-memory at some n records ``oom``; larger n of the same method, params and other axes are
  recorded as ``oom-pruned`` without running.
- Ctrl-C or SIGTERM abandons the current cell, records the run as interrupted and returns 130; more
  signals during the clean-up change nothing. A failed write (disk full) stops the run the same way
  and returns 3; the rows before it are safe.
- meta.json says ``complete`` only when every planned cell has a row.
"""
from __future__ import annotations

import datetime as _dt
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnbench.accounting import Accounting, Tally
from attnbench.case import Case
from attnbench.env import host_load
from attnbench.errors import Interrupted, WriteFailed
from attnbench.planning import PlannedCell
from attnbench.progress import Progress
from attnbench.registry import REGISTRY
from attnbench.resume import kept_rows
from attnbench.store import META, ResultWriter, RunDirError, iter_rows, write_json_atomic
from attnbench.suite_parse import Suite

FAILED = ("error", "crashed", "timeout")  # statuses that make the run exit 1
EXIT_INTERRUPTED = 130
EXIT_WRITE_FAILED = 3


@dataclass
class RunOutcome:
    run_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False  # by a signal
    write_failed: str | None = None  # why rows or meta.json could not be written
    planned: int = 0
    accounting: Accounting | None = None  # makespan, cell time, parallel efficiency

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.write_failed is None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.write_failed is not None:
            return EXIT_WRITE_FAILED
        return 1 if any(self.counts.get(s, 0) for s in FAILED) else 0


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _base_row(case: Case, suite: Suite, device: torch.device) -> dict:
    spec = REGISTRY.get(case.method)
    row = case.identity()
    row.update(cell_id=case.cell_id, suite=suite.name, label=case.label(), family=spec.family,
               exact=spec.exact, device=str(device), budget=spec.budget,
               budget_value=case.params_dict.get(spec.budget) if spec.budget else None)
    return row


INTERRUPTED_BY: str | None = None  # the signal that interrupted a sweep of this process, if any


class _Signals:
    """SIGINT and SIGTERM during the sweep: the first raises :class:`Interrupted` where the sweep is;
    later ones, arriving while it cleans up, are noted and change nothing (any number of signals ends
    as one interruption)."""

    def __init__(self):
        self.first: str | None = None
        self.more = 0
        self.deferred = False  # set once clean-up starts: signals are noted, never raised
        self.old = {}

    def _handle(self, signum, frame):
        global INTERRUPTED_BY
        if self.first is None:
            self.first = INTERRUPTED_BY = signal.Signals(signum).name
            if not self.deferred:
                raise Interrupted(self.first)
        else:
            self.more += 1

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self.old[s] = signal.getsignal(s)
            signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False


def _oom_families(rows: list[dict]) -> dict[tuple, int]:
    oom_at: dict[tuple, int] = {}
    for r in rows:
        if r.get("status") == "oom":
            try:
                key = Case.from_identity(r).family_key()
            except (KeyError, TypeError, ValueError):
                continue
            oom_at[key] = min(oom_at.get(key, r["n"]), r["n"])
    return oom_at


def sweep(suite: Suite, cells: list[PlannedCell], run_dir: Path, meta: dict,
           device: torch.device, executor, progress: bool, on_row, resumed: bool,
           rerun: frozenset[str] = frozenset()) -> RunOutcome:
    try:
        writer = ResultWriter(run_dir)  # sets a torn last line aside before the rows are read
    except OSError as exc:
        raise RunDirError(f"{run_dir}: cannot open its results: {exc.strerror or exc}") from None
    planned_ids = {c.case.cell_id for c in cells}
    rows = list(iter_rows(run_dir))  # the latest row of each cell
    existing = kept_rows(rows, rerun, planned_ids)
    done = {r["cell_id"] for r in existing}
    oom_at = _oom_families(existing)
    by_id = {c.case.cell_id: c for c in cells}
    todo = [c.case for c in cells if c.case.cell_id not in done]
    outcome = RunOutcome(run_dir, planned=len(cells))
    for r in existing:
        outcome.counts[r["status"]] = outcome.counts.get(r["status"], 0) + 1
    meta.update(state="running", cells_planned=len(cells), host_load_before=host_load(device),
                resumes=meta.get("resumes", 0) + (1 if resumed else 0))
    if rerun:
        meta.setdefault("reruns", []).append({"statuses": sorted(rerun), "at": now(),
                                              "cells": len(rows) - len(existing)})
    started: dict[str, str] = {}
    failure: BaseException | None = None
    tally = Tally()  # makespan, cell time and devices of this session

    def gate(case: Case) -> dict | None:
        started[case.cell_id] = now()
        tally.begin(case.cell_id)
        planned = by_id[case.cell_id]
        if planned.skip_reason is not None:
            return {"status": "unsupported", "reason": planned.skip_reason}
        fam = case.family_key()
        if fam in oom_at and case.n > oom_at[fam]:
            return {"status": "oom-pruned", "reason": f"out of memory at n={oom_at[fam]}; larger n not run"}
        return None

    bar = Progress(len(cells), len(cells) - len(todo), enabled=progress)

    def on_start(case: Case) -> None:
        started[case.cell_id] = now()
        tally.begin(case.cell_id)
        bar.start(f"{case.label()} n={case.n} {case.mode} {case.dtype}")

    def write(case: Case, fields: dict) -> None:
        row = {**_base_row(case, suite, device), "started": started.get(case.cell_id, now()),
               **fields, "finished": now()}
        try:
            writer.append(row)
        except OSError as exc:
            raise WriteFailed(f"could not write a row to {writer.path}: {exc.strerror or exc}") from None
        done.add(case.cell_id)
        outcome.counts[row["status"]] = outcome.counts.get(row["status"], 0) + 1
        if row["status"] == "oom":
            fam = case.family_key()
            oom_at[fam] = min(oom_at.get(fam, case.n), case.n)
        tally.add(case.cell_id, row)
        bar.finish(f"{case.label()} n={case.n} {case.mode} {case.dtype}", row["status"],
                   worker=row.get("worker"))
        if on_row is not None:
            on_row(row)

    signals = _Signals()
    try:
        with signals, bar:
            tally.restart()
            try:
                _write_meta(run_dir, meta)
                for case, fields in executor.run(todo, gate, on_start):
                    write(case, fields)
            except (Interrupted, KeyboardInterrupt) as exc:
                outcome.interrupted = True
                meta["interrupted_by"] = str(exc) or type(exc).__name__
            except WriteFailed as exc:
                outcome.write_failed = str(exc)
                meta["interrupted_by"] = str(exc)
            except BaseException as exc:  # noqa: BLE001 - recorded in meta, then raised again
                failure = exc
                meta["interrupted_by"] = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                signals.deferred = True  # the clean-up below runs to its end whatever arrives
                executor.close()  # also on interruption: no worker outlives the run
                writer.close()
                if signals.first and not outcome.interrupted:  # arrived during the clean-up
                    outcome.interrupted = True
                    meta["interrupted_by"] = signals.first
                missing = len(planned_ids - done)
                outcome.accounting = tally.result(getattr(executor, "workers", 1))
                meta["accounting"] = {**outcome.accounting.as_meta(),
                                      "startup_s": getattr(executor, "startup_s", None)}
                if (devices := tally.devices(meta.get("devices"))) is not None:
                    meta["devices"] = devices
                meta.update(state="complete" if not missing else "interrupted", finished=now(),
                            counts=outcome.counts, cells_missing=missing,
                            host_load_after=host_load(device))
                if signals.more:
                    meta["signals_during_cleanup"] = signals.more
                try:
                    _write_meta(run_dir, meta)
                except WriteFailed as exc:
                    outcome.write_failed = outcome.write_failed or str(exc)
    except (Interrupted, KeyboardInterrupt):  # a signal between the sweep's own handlers
        outcome.interrupted = True
    if failure is not None:
        raise failure
    return outcome


def _write_meta(run_dir: Path, meta: dict) -> None:
    try:
        write_json_atomic(run_dir / META, meta)
    except OSError as exc:
        raise WriteFailed(f"could not write {run_dir / META}: {exc.strerror or exc}") from None
