"""How cells run: one interface, several executors. The runner plans, writes and resumes; an executor
only turns cells into rows.

``executor.run(cases, gate, on_start)`` yields ``(case, row fields)`` for every case, in an order of
its choosing. Right before a case would run it asks ``gate(case)``: fields to record instead of
running (an ``unsupported`` or ``oom-pruned`` row), or None. ``on_start(case)`` reports that a case
starts. ``close()`` stops whatever the executor started (worker processes).

- :class:`InProcess`: one cell after another in this process (:func:`attnbench.dispatch.run_cell`).
- :class:`Isolated`: each cell in a worker process (:mod:`attnbench.isolate`): a crash or hang costs
  one ``crashed`` or ``timeout`` row.
- :class:`Interleaved`: the cells of each comparison group timed together in alternating rounds
  (:mod:`attnbench.interleave`).
- ``DaskCells`` (:mod:`attnbench.dask_executor`, optional extra ``dist``): cells spread over the
  workers of a Dask cluster, one GPU each.
- :class:`RetryNoisy` wraps any of them: a cell whose timing came back noisy is timed again, up to
  ``retries`` more times, and the steadiest attempt is kept.

:func:`make_executor` picks one from the run's options.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence

from attnbench.case import Case
from attnbench.context import CellContext
from attnbench.dispatch import run_cell
from attnbench.interleave import group_key, run_interleaved

Gate = Callable[[Case], "dict | None"]
OnStart = Callable[[Case], None]


class Executor(Protocol):
    def run(self, cases: Sequence[Case], gate: Gate, on_start: OnStart) -> Iterator[tuple[Case, dict]]:
        ...

    def close(self) -> None:
        ...


class InProcess:
    def __init__(self, ctx: CellContext):
        self.ctx = ctx

    def run(self, cases, gate, on_start):
        for case in cases:
            if (fields := gate(case)) is not None:
                yield case, fields
                continue
            on_start(case)
            yield case, run_cell(self.ctx, case)

    def close(self) -> None:
        pass


class Isolated:
    """Cells in worker processes, one per method (``mode="method"``) or per cell (``"cell"``)."""

    def __init__(self, init: dict, mode: str, timeout_s: float | None):
        from attnbench.isolate import IsolatedCells

        self.cells = IsolatedCells(init, mode, timeout_s)

    def run(self, cases, gate, on_start):
        for case in cases:
            if (fields := gate(case)) is not None:
                yield case, fields
                continue
            on_start(case)
            yield case, self.cells.run(case)

    def close(self) -> None:
        self.cells.close()


class Interleaved:
    """Each comparison group (same shape and inputs, any method) timed together in ``rounds``
    alternating rounds; groups in the order their first cell was planned."""

    def __init__(self, ctx: CellContext, rounds: int):
        self.ctx, self.rounds = ctx, rounds

    def run(self, cases, gate, on_start):
        groups: dict[tuple, list[Case]] = {}
        for case in cases:
            if case.level == "train":  # trained, not timed call by call: nothing to interleave
                if (fields := gate(case)) is None:
                    on_start(case)
                    fields = run_cell(self.ctx, case)
                yield case, fields
                continue
            groups.setdefault(group_key(case), []).append(case)
        for group in groups.values():
            runnable = []
            for case in group:
                if (fields := gate(case)) is not None:
                    yield case, fields
                else:
                    runnable.append(case)
            if not runnable:
                continue
            if runnable[0].mode in ("prefill", "decode"):  # causal cells run one by one
                for case in runnable:
                    on_start(case)
                    yield case, run_cell(self.ctx, case)
                continue
            on_start(runnable[0])
            yield from zip(runnable, run_interleaved(self.ctx, runnable, self.rounds))

    def close(self) -> None:
        pass


def _spread(row: dict) -> float:
    """Relative IQR of a row's timing (inf when it has none)."""
    t, iqr = row.get("time_ms"), row.get("time_ms_iqr")
    return iqr / t if isinstance(t, (int, float)) and t > 0 and isinstance(iqr, (int, float)) \
        else float("inf")


class RetryNoisy:
    """Times a cell again when its row is ``ok`` but noisy (IQR over 10% of the median), up to
    ``retries`` more times, and keeps the attempt with the smallest relative IQR. The row says how
    many attempts there were (``timing_attempts``) and every attempt's median
    (``attempt_medians_ms``). A retry runs the one cell on its own, also under interleaving."""

    def __init__(self, inner: Executor, retries: int):
        self.inner, self.retries = inner, retries

    def run(self, cases, gate, on_start):
        for case, row in self.inner.run(cases, gate, on_start):
            attempts = [row]
            while (row.get("status") == "ok" and row.get("noisy")
                   and len(attempts) <= self.retries):
                (_, row), = self.inner.run([case], lambda c: None, on_start)
                attempts.append(row)
            if len(attempts) > 1:
                ok = [a for a in attempts if a.get("status") == "ok"]
                row = dict(min(ok, key=_spread) if ok else attempts[-1])
                row.update(timing_attempts=len(attempts),
                           attempt_medians_ms=[a.get("time_ms") for a in attempts])
            yield case, row

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):  # workers, startup_s: what the wrapped executor says
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def make_executor(ctx: CellContext, *, isolate: str | None = None, timeout_s: float | None = None,
                  rounds: int = 1, retry_noisy: int = 0, worker_init: dict | None = None,
                  dask: dict | None = None) -> Executor:
    """The executor for a run's options (they were checked to be compatible by the runner).
    ``dask``: ``{"workers": N, "scheduler": ADDRESS, "costs": {cell_id: seconds}}`` for a run on
    Dask; cells then run in the workers (``isolate``: in a cell subprocess of each worker)."""
    if dask is not None:
        from attnbench.dask_executor import DaskCells

        init = {"suite_text": ctx.suite.text, "suite_path": ctx.suite.path,
                "plugins": (worker_init or {}).get("plugins", []), "device": ctx.device.type,
                "local_device": str(ctx.device), "cuda_graphs": ctx.cuda_graphs,
                "capacity_limit_mib": ctx.capacity_limit_mib, "isolate": isolate,
                "timeout_s": timeout_s}
        executor: Executor = DaskCells(init, workers=dask.get("workers"),
                                       scheduler=dask.get("scheduler"), rounds=rounds,
                                       costs=dask.get("costs"))
    elif isolate:
        executor = Isolated(worker_init or {}, isolate, timeout_s)
    elif rounds > 1:
        executor = Interleaved(ctx, rounds)
    else:
        executor = InProcess(ctx)
    return RetryNoisy(executor, retry_noisy) if retry_noisy else executor
