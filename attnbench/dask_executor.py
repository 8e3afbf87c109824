"""Scale-out on Dask: the cells of a run spread over Dask workers, one worker per GPU.

The driver (the ``attnbench run`` process) plans, gates, submits and writes; it is the only writer of
results.jsonl. Workers only turn resolved cells into row fields. Where the workers come from:

- ``--workers N`` (no ``--scheduler``): a local cluster of N worker processes started here, each
  pinned to one GPU with ``CUDA_VISIBLE_DEVICES`` on CUDA (named ``gpu<index>``), or N processes on
  CPU (``cpu<i>``) sharing the cores; one thread each, no memory limit (the benchmark measures memory
  itself; Dask must not kill a worker for using it).
- ``--scheduler ADDRESS``: the workers of an existing cluster (``dask worker``, dask-jobqueue's
  ``SLURMCluster``/``PBSCluster``/``LSFCluster``, ...); with ``--workers N`` the run waits until N
  have joined. Each worker should see one GPU and run one thread (``--nthreads 1``); workers on other
  hosts need attnbench and any ``--plugin`` file at the same path.

Scheduling (:mod:`attnbench.shards`): a unit (a cell, or an interleaved comparison group as one task)
runs on one worker; units of one chain (an OOM family, in ascending n) run one after another, and
each is gated (unsupported, OOM-pruned) right before it is submitted, so pruning works as in a serial
run. At most one unit per worker is in flight; the next one is the head of the chain with the most
estimated work left (longest first: capacity cells and big n go early).

Guarantees: a cell is timed once, on one GPU. Dask's retries are off for our tasks: the local
cluster's scheduler allows no failure (a worker that dies mid-cell gives that cell a ``crashed``
row at once); on a scheduler that allows retries a re-run task finds on the scheduler that a worker
already died running it and returns a ``crashed`` row instead of timing the cell again. The worker
runs cells in its own process (a segfault kills it; its nanny starts a fresh one and the run goes on),
or, with ``--isolate``/``--timeout-s``, in a cell subprocess of its own (:mod:`attnbench.isolate`), so a
crash or a hang costs one row and not the Dask worker.
"""
from __future__ import annotations

import datetime as _dt
import heapq
import itertools
import logging
import os
import secrets
import socket
import tempfile
import time
from pathlib import Path
from typing import Sequence

import distributed
from distributed import Client, KilledWorker

from attnbench.case import Case
from attnbench.errors import BadInput, first_line, one_line
from attnbench.shards import chains

POLL_S = 0.5  # how often the driver wakes while waiting (signals, joining workers)
SLOTS_EVERY_S = 2.0  # how often the driver asks an external cluster how many workers it has
WAIT_WORKERS_S = 3600.0  # --scheduler with --workers N: the longest wait for N workers to join
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
            "NVSHMEM_DISABLE_NVLS": "1"}
QUIET_LOGGERS = ("distributed", "tornado")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        return [e.strip() for e in env.split(",") if e.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def local_worker_specs(n: int, device: str) -> dict[str, dict]:
    """One Nanny per worker: pinned to one GPU on CUDA, a share of the cores on CPU."""
    from distributed import Nanny

    dev_type, _, index = device.partition(":")
    threads = str(max(1, (os.cpu_count() or 1) // n))
    specs = {}
    if dev_type == "cuda":
        gpus = visible_gpus()
        first = int(index) if index else 0
        chosen = gpus[first:first + n]
        if len(chosen) < n:
            raise BadInput(f"--workers {n}: {len(gpus) - first} CUDA device(s) from {device} here; "
                           "a local Dask cluster runs one worker per GPU (give at most that many, or "
                           "--scheduler ADDRESS for workers elsewhere)")
        for gpu in chosen:
            specs[f"gpu{gpu}"] = {"CUDA_VISIBLE_DEVICES": gpu}
    else:
        for i in range(n):
            specs[f"cpu{i}"] = {}
    for env in specs.values():
        env.update(NCCL_ENV, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return {name: {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": 0, "name": name,
                                             "host": "127.0.0.1", "env": env, "dashboard": False,
                                             "silence_logs": logging.CRITICAL}}
            for name, env in specs.items()}


def _allowed_failures(dask_scheduler=None) -> int:
    return int(dask_scheduler.allowed_failures)


def _suspicious(key, dask_scheduler=None) -> int:
    ts = dask_scheduler.tasks.get(key)
    return int(ts.suspicious) if ts is not None else 0


class DaskCells:
    """The executor (``run(cases, gate, on_start)``, ``close()``) on a Dask cluster."""

    def __init__(self, init: dict, *, workers: int | None, scheduler: str | None, rounds: int,
                 costs: dict[str, float] | None = None):
        self.token = secrets.token_hex(4)
        self.init = {**init, "token": self.token}
        self.rounds, self.costs = rounds, costs or {}
        self.cluster = self.client = None
        self.slots = self.peak = 0
        self._asked = 0.0
        self._count = itertools.count()
        self._quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
        for name in QUIET_LOGGERS:  # the rows say what happened; Dask's own log lines are noise
            logging.getLogger(name).setLevel(logging.CRITICAL)
        t0 = time.monotonic()
        try:
            self._start(workers, scheduler)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - t0

    def _start(self, workers: int | None, scheduler: str | None) -> None:
        if scheduler is None:
            from distributed import Scheduler, SpecCluster

            n = workers or 1
            self.cluster = SpecCluster(
                workers=local_worker_specs(n, self.init["local_device"]),
                scheduler={"cls": Scheduler, "options": {
                    "host": "127.0.0.1", "dashboard": False, "dashboard_address": None,
                    "allowed_failures": 0}},
                silence_logs=logging.CRITICAL, name="attnbench")
            self.client = Client(self.cluster, set_as_default=False)
            self.address = self.cluster.scheduler_address
            self.local = True
        else:
            try:
                self.client = Client(scheduler, timeout=30, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise BadInput(f"--scheduler {scheduler}: cannot reach a Dask scheduler there: "
                               f"{first_line(exc, 200) or type(exc).__name__}"
                               ) from None
            self.address = scheduler
            self.local = False
        want = workers or 1
        try:
            self.client.wait_for_workers(want, timeout=WAIT_WORKERS_S)
        except TimeoutError:
            raise BadInput(f"the Dask cluster at {self.address} has fewer than {want} worker(s) "
                           f"after {WAIT_WORKERS_S:g} s") from None
        try:
            self.check_retry = self.client.run_on_scheduler(_allowed_failures) > 0
        except Exception:  # noqa: BLE001 - a scheduler that refuses to run our function
            self.check_retry = True
        self.slots = self.peak = len(self.client.nthreads())
        # every worker loads the suite, plugins and torch now, not during its first cell (a worker
        # that joins later does so at its first cell)
        futures = [self.client.submit(_prepare, self.init, workers=[addr], allow_other_workers=False,
                                      pure=False, key=f"attnbench-{self.token}-prepare-{i}")
                   for i, addr in enumerate(self.client.nthreads())]
        try:
            self.client.gather(futures)
        except Exception as exc:  # noqa: BLE001 - e.g. a plugin file missing on a worker's host
            text = one_line(exc)
            raise BadInput(f"a Dask worker could not prepare the run: {text}") from None

    @property
    def workers(self) -> int:
        """The most workers the run had at once (for its parallel efficiency)."""
        return self.peak

    def _refresh_slots(self) -> int:
        # workers may join (or leave) an external cluster during the run: asked every few seconds
        if not self.local and time.monotonic() - self._asked > SLOTS_EVERY_S:
            self._asked = time.monotonic()
            try:
                self.slots = max(1, len(self.client.nthreads()))
            except Exception:  # noqa: BLE001 - keep the last count
                pass
        self.peak = max(self.peak, self.slots)
        return self.slots

    def run(self, cases: Sequence[Case], gate, on_start):
        found = chains(cases, self.rounds, self.costs)
        pending = [list(ch.units) for ch in found]
        left = [ch.cost for ch in found]
        ready = [(-left[i], i) for i in range(len(found))]
        heapq.heapify(ready)
        inflight: dict = {}
        try:
            while ready or inflight:
                while ready and len(inflight) < self._refresh_slots():
                    _, i = heapq.heappop(ready)
                    unit = pending[i].pop(0)
                    left[i] -= sum(self.costs.get(c.cell_id, 1.0) for c in unit)
                    runnable = []
                    for case in unit:
                        if (fields := gate(case)) is not None:
                            yield case, fields
                        else:
                            runnable.append(case)
                    if runnable:
                        on_start(runnable[0])
                        inflight[self._submit(runnable, left[i])] = (i, runnable,
                                                                     time.monotonic())
                    elif pending[i]:
                        heapq.heappush(ready, (-left[i], i))
                if not inflight:
                    continue
                done = [f for f in inflight if f.done()]
                if not done:
                    try:
                        with self.client.as_current():
                            distributed.wait(list(inflight), timeout=POLL_S,
                                             return_when="FIRST_COMPLETED")
                    except TimeoutError:
                        pass
                    done = [f for f in inflight if f.done()]
                for fut in done:
                    i, unit, t0 = inflight.pop(fut)
                    yield from zip(unit, self._rows(fut, unit, time.monotonic() - t0))
                    if pending[i]:
                        heapq.heappush(ready, (-left[i], i))
        finally:
            if inflight and self.client is not None:
                try:
                    self.client.cancel(list(inflight), force=True)
                except Exception:  # noqa: BLE001 - the cluster may be gone already
                    pass

    def _submit(self, unit: list[Case], priority: float):
        key = f"attnbench-{self.token}-{next(self._count)}-{unit[0].cell_id}"
        return self.client.submit(run_unit, self.init, [c.identity() for c in unit],
                                  [c.cell_id for c in unit], self.rounds, self.check_retry,
                                  key=key, pure=False, retries=0, priority=int(priority * 1000))

    def _rows(self, fut, unit: list[Case], waited_s: float) -> list[dict]:
        """The unit's row fields; a unit that failed outside its cells gets one row per cell, timed
        from its submission (``cell_s``)."""
        cell_s = round(waited_s / len(unit), 6)
        try:
            rows = fut.result()
        except KilledWorker as exc:
            w = getattr(exc, "last_worker", None)
            name = str(getattr(w, "name", None) or getattr(w, "address", "?"))
            host = str(getattr(w, "host", "") or "") or None
            return [{"status": "crashed", "worker": name, "worker_host": host, "cell_s": cell_s,
                     "reason": f"the Dask worker running it ({name}) died; the cell is not timed "
                               "again"} for _ in unit]
        except Exception as exc:  # noqa: BLE001 - the task failed outside any cell: its cells' rows
            text = one_line(exc)
            return [{"status": "error", "reason": f"on the Dask worker: {text}", "cell_s": cell_s}
                    for _ in unit]
        if not isinstance(rows, list) or len(rows) != len(unit):
            return [{"status": "error", "reason": f"the Dask worker sent {rows!r:.120}"} for _ in unit]
        return rows

    def close(self) -> None:
        for obj in (self.client, self.cluster):
            if obj is not None:
                try:
                    obj.close(timeout=20) if obj is self.client else obj.close(timeout=30)
                except Exception:  # noqa: BLE001 - closing what is already gone
                    pass
        self.client = self.cluster = None
        for name, level in self._quiet.items():
            logging.getLogger(name).setLevel(level)


# ---- on the worker -------------------------------------------------------------------------------

class _WorkerState:
    """What a worker keeps between the cells of one run: the cell context and who it is."""

    def __init__(self, init: dict):
        import tomllib

        from attnbench.context import CellContext
        from attnbench.env import parse_device
        from attnbench.registry import load_plugin_file
        from attnbench.suite_parse import parse_suite

        for path in init.get("plugins") or ():
            load_plugin_file(path)
        suite = parse_suite(tomllib.loads(init["suite_text"]), init["suite_path"], init["suite_text"])
        self.device = parse_device(init["device"])
        self.ctx = CellContext(suite=suite, device=self.device,
                               cuda_graphs=bool(init.get("cuda_graphs")),
                               capacity_limit_mib=float(init.get("capacity_limit_mib") or 0.0))
        self.info = worker_info(self.device)
        self.cells = None
        if init.get("isolate"):
            from attnbench.isolate import IsolatedCells

            where = Path(tempfile.mkdtemp(prefix="attnbench-dask-"))
            (where / "suite.toml").write_text(init["suite_text"], encoding="utf-8")
            iso = {"op": "init", "suite": str(where / "suite.toml"), "plugins": init.get("plugins") or [],
                   "device": init["device"], "cuda_graphs": bool(init.get("cuda_graphs")),
                   "capacity_limit_mib": float(init.get("capacity_limit_mib") or 0.0),
                   "fault_log": str(where / "worker_faults.log")}
            self.cells = IsolatedCells(iso, init["isolate"], init.get("timeout_s"))

    def close(self) -> None:
        if self.cells is not None:
            self.cells.close()


_STATE: dict[str, _WorkerState] = {}


def _state(init: dict) -> _WorkerState:
    key = init["token"]
    if key not in _STATE:
        for old in _STATE.values():
            old.close()
        _STATE.clear()
        _STATE[key] = _WorkerState(init)
    return _STATE[key]


def _prepare(init: dict) -> dict:
    """Run on every worker before the sweep: load everything a cell needs, and say who it is."""
    from attnbench.isolate import _warm_up

    state = _state(init)
    _warm_up(state.device)
    return state.info


def worker_info(device) -> dict:
    """The fields every row from this worker carries: who ran it, on which GPU."""
    import torch

    try:
        w = distributed.get_worker()
        name = w.name if isinstance(w.name, str) and w.name else w.address
    except ValueError:
        name = None
    info = {"worker": str(name or f"{socket.gethostname()}:{os.getpid()}"),
            "worker_host": socket.gethostname(), "worker_pid": os.getpid(),
            "worker_threads": torch.get_num_threads(),
            "gpu_index": None, "gpu_uuid": None, "gpu_name": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        uuid = str(getattr(props, "uuid", "") or "") or None
        info["gpu_name"] = props.name
        info["gpu_uuid"] = uuid if uuid is None or uuid.startswith("GPU-") else f"GPU-{uuid}"
        index = device.index or 0
        visible = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
                   if e.strip()]
        info["gpu_index"] = (int(visible[index]) if index < len(visible) and visible[index].isdigit()
                             else index)
    return info


def run_unit(init: dict, identities: list[dict], cell_ids: list[str], rounds: int,
             check_retry: bool) -> list[dict]:
    """A Dask task: run one unit (a cell, or an interleaved group) and return its rows' fields."""
    from attnbench.case import Case
    from attnbench.dispatch import run_cell
    from attnbench.interleave import run_interleaved

    state = _state(init)
    cases = [Case.from_identity(d) for d in identities]
    for case, cell_id in zip(cases, cell_ids):
        if case.cell_id != cell_id:
            raise ValueError(f"rebuilt cell {case.cell_id} is not {cell_id}")
    if check_retry:
        key = distributed.get_worker().get_current_task()
        if distributed.get_client().run_on_scheduler(_suspicious, key) > 0:
            return [{**state.info, "status": "crashed",
                     "reason": "a Dask worker died while running this cell; the scheduler retried "
                               "it, and a cell is not timed twice"} for _ in cases]
    started = _now()
    t0 = time.perf_counter()
    if rounds > 1:
        rows = run_interleaved(state.ctx, cases, rounds)
    elif state.cells is not None:
        rows = [state.cells.run(case) for case in cases]
    else:
        rows = [run_cell(state.ctx, case) for case in cases]
    cell_s = (time.perf_counter() - t0) / max(1, len(cases))
    return [{**row, **state.info, "started": started, "cell_s": round(cell_s, 6)} for row in rows]
