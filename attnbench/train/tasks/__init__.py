"""The training tasks, by name: each a params dataclass (its knobs in ``[train.<task>]``) and a
:class:`~attnbench.train.tasks.base.Task` built for one cell."""
from __future__ import annotations

import dataclasses
from typing import Any

from attnbench.train.tasks.base import IGNORE, Batch, Task, Tally, loss_fn
from attnbench.train.tasks.listops import ListOps, ListOpsParams
from attnbench.train.tasks.mlm import MLM, MLMParams
from attnbench.train.tasks.mqar import MQAR, MQARParams

TASKS: dict[str, tuple[type, type[Task]]] = {
    "mqar": (MQARParams, MQAR),
    "listops": (ListOpsParams, ListOps),
    "mlm": (MLMParams, MLM),
}


def task_knobs(name: str) -> list[str]:
    """The knob names of task ``name`` (its params dataclass's fields)."""
    return [f.name for f in dataclasses.fields(TASKS[name][0])]


def make_task(name: str, knobs: dict[str, Any], *, n: int, batch: int, seed: int,
              eval_batches: int) -> Task:
    params_cls, task_cls = TASKS[name]
    mine = {k: tuple(v) if isinstance(v, list) else v for k, v in knobs.items()
            if k in task_knobs(name)}
    return task_cls(params_cls(**mine), n=n, batch=batch, seed=seed, eval_batches=eval_batches)


__all__ = ["IGNORE", "TASKS", "Batch", "Task", "Tally", "loss_fn", "make_task", "task_knobs"]
