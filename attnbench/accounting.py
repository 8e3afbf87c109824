"""What a run cost and where it ran: makespan, summed cell time and parallel efficiency; the devices
that took part and whether they were all of one model.

- **makespan**: wall time of the sweep in this session, from its start (cluster start-up included) to
  its last row.
- **cell time**: the summed wall time of the cells run in this session (as measured where each ran:
  ``cell_s`` in a row from a distributed worker, else ``finished - started``).
- **parallel efficiency**: cell time / (makespan x workers); 1.0 means every worker was busy with
  cells all the time.

Rows of a distributed run carry ``worker``, ``worker_host``, ``gpu_index``, ``gpu_uuid`` and
``gpu_name``; :func:`devices_from_rows` gathers them into meta.json's ``devices`` list, and
:func:`mixed_devices_note` is the warning reports print when a run mixes device models.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from typing import Iterable

from attnbench.checks import is_number


def cell_seconds(row: dict) -> float:
    """The wall seconds a row's cell took where it ran (0 for rows that were never run)."""
    if is_number(row.get("cell_s")):
        return max(float(row["cell_s"]), 0.0)
    try:
        a = _dt.datetime.fromisoformat(row["started"])
        b = _dt.datetime.fromisoformat(row["finished"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return max((b - a).total_seconds(), 0.0)


@dataclass(frozen=True)
class Accounting:
    makespan_s: float
    cell_time_s: float
    workers: int
    cells: int

    @property
    def parallel_efficiency(self) -> float | None:
        if self.makespan_s <= 0 or self.workers < 1:
            return None
        return self.cell_time_s / (self.makespan_s * self.workers)

    def as_meta(self) -> dict:
        return {**asdict(self), "parallel_efficiency": self.parallel_efficiency}

    def describe(self) -> str:
        eff = self.parallel_efficiency
        share = "n/a" if eff is None else f"{eff:.0%}"
        who = "1 worker" if self.workers == 1 else f"{self.workers} workers"
        return (f"makespan {_clock(self.makespan_s)}, cell time {_clock(self.cell_time_s)} over "
                f"{self.cells} cells on {who}: parallel efficiency {share}")


class Tally:
    """A sweep's rows as they are written, for its :class:`Accounting` and ``devices``.

    ``begin(cell_id)`` when a cell is gated or starts, ``add(cell_id, row)`` when its row is
    written. A row timed where it ran (``cell_s``) says how long it took; otherwise the cell ran in
    this process, where cells never overlap, and its time is from its start (or the previous row,
    if later) to its row."""

    def __init__(self):
        self.start = time.monotonic()
        self.last: float | None = None
        self.began: dict[str, float] = {}
        self.rows: list[dict] = []  # per row: its seconds and where it ran

    def restart(self) -> None:
        self.start = time.monotonic()

    def begin(self, cell_id: str) -> None:
        self.began[cell_id] = time.monotonic()

    def add(self, cell_id: str, row: dict) -> None:
        now = time.monotonic()
        secs = cell_seconds(row) if "cell_s" in row else \
            now - max(self.began.get(cell_id, now), self.last or self.start)
        self.last = now
        self.rows.append({"cell_s": secs, **{k: row.get(k) for k in DEVICE_KEYS}})

    def result(self, workers: int) -> Accounting:
        return Accounting((self.last or self.start) - self.start,
                          sum(r["cell_s"] for r in self.rows), max(1, int(workers or 1)),
                          len(self.rows))

    def devices(self, known) -> list[dict] | None:
        """meta.json's ``devices`` after this session, or None when no row came from a worker."""
        if not known and not any(r.get("worker") for r in self.rows):
            return None
        return devices_from_rows(self.rows, known or ())


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


DEVICE_KEYS = ("worker", "worker_host", "gpu_index", "gpu_uuid", "gpu_name")


def devices_from_rows(rows: Iterable[dict], known: Iterable[dict] = ()) -> list[dict]:
    """One entry per device that ran cells (a GPU by its UUID, else a worker by host and name), with
    the number of rows it produced, merged into ``known`` (an earlier list, e.g. before a resume)."""
    out: dict[tuple, dict] = {}
    for d in known:
        if isinstance(d, dict):
            out[_device_id(d)] = dict(d)
    for r in rows:
        if not r.get("worker"):
            continue
        d = {k: r.get(k) for k in DEVICE_KEYS}
        entry = out.setdefault(_device_id(d), {**d, "cells": 0})
        entry["cells"] = int(entry.get("cells") or 0) + 1
    return sorted(out.values(), key=lambda d: tuple(str(d.get(k)) for k in DEVICE_KEYS))


def _device_id(d: dict) -> tuple:
    if d.get("gpu_uuid"):
        return ("gpu", str(d["gpu_uuid"]))
    return ("worker", str(d.get("worker_host")), str(d.get("worker")))


def device_models(devices: Iterable[dict]) -> list[str]:
    """The distinct GPU models among ``devices`` (CPU workers have none)."""
    return sorted({str(d["gpu_name"]) for d in devices if isinstance(d, dict) and d.get("gpu_name")})


def mixed_devices_note(meta: dict) -> str | None:
    """A warning when the run's rows come from more than one GPU model, else None."""
    models = device_models(meta.get("devices") or ())
    if len(models) < 2:
        return None
    return (f"warning: this run mixes GPU models ({', '.join(models)}): times and memory of cells on "
            "different models are not comparable; split the rows by gpu_name (each row names its "
            "GPU) or run each model on its own")
