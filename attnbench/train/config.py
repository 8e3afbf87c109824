"""The ``[train]`` table of a suite: the model, the optimiser's budget and the task, validated before
anything runs and expanded into one resolved configuration per combination of listed values.

```toml
[sweep]
level = ["train"]
seed = [0, 1, 2]
[train]
task = ["mqar", "listops"]   # one or more of mqar, listops, mlm
layers = 2
d_model = 128
heads = 4                    # head_dim = d_model / heads
ffn_dim = 256
steps = 300
batch = 32                   # sequences per step (or batch_tokens = tokens per step: batch = that / n)
lr = 1e-3
eval_every = 100
eval_batches = 4
token_shift = false          # true: each position also sees the previous token (H3's shift)
positions = "learned"        # or "sinusoidal": fixed sin/cos positions (Vaswani et al.) with a learned gain
[train.mqar]                 # the task's knobs (see attnbench.train.tasks), and [train] keys
num_kv_pairs = 16            # that differ for this task (steps = 600, ...)
```

Any key may list values (``lr = [1e-3, 3e-3]``), each giving its own cells. For a ``train`` cell the
sweep's batch, heads, head_dim, mode, causal, batching and inputs do not apply: the model is the
encoder above, trained forward and backward on the task's data. The sweep's ``causal`` does apply:
``causal = [true]`` makes every layer's attention causal (each position sees itself and the ones
before it, as in Zoology's language models); a method without a causal variant is then unsupported.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from attnbench.params import NonNegative, Positive, Range, check_params
from attnbench.train.tasks import TASKS

TaskName = Literal["mqar", "listops", "mlm"]
NonNegativeFloat = Annotated[float, Range(0.0)]
Fraction = Annotated[float, Range(0.0, 0.99)]
# Case fields a train cell sets from [train]; the rest of [train] goes into the cell's ``train`` key
CASE_KEYS = ("layers", "heads", "ffn_dim", "batch", "d_model")
# Keys added after runs were committed: left out of a cell's identity at their default, so that the
# cells of those runs keep their ids (and --resume finds them)
LATER_KEYS = {"token_shift": False, "positions": "learned"}
Positions = Literal["learned", "sinusoidal"]


@dataclass(frozen=True)
class TrainParams:
    task: TaskName = "mqar"
    layers: Positive = 2
    d_model: Positive = 128
    heads: Positive = 4
    ffn_dim: Positive = 256
    steps: Positive = 200
    batch: Positive = 32             # sequences per step
    batch_tokens: NonNegative = 0    # > 0: batch = max(1, batch_tokens // n), the same tokens per step
    lr: NonNegativeFloat = 1e-3      # peak learning rate (after warm-up)
    warmup_frac: Fraction = 0.1      # share of the steps spent warming up linearly
    weight_decay: NonNegativeFloat = 0.01
    clip: NonNegativeFloat = 1.0     # gradient-norm clip
    eval_every: Positive = 50        # steps between evaluations (and one after the last step)
    eval_batches: Positive = 4       # held-out batches per evaluation
    token_shift: bool = False        # add a learned projection of the previous token at each position
    positions: Positions = "learned"  # learned absolute embeddings, or fixed sinusoids (learned gain)


def check_train(c, table: Any) -> list[dict[str, Any]]:
    """The resolved configurations of ``[train]`` (every key, task knobs included, one value each).
    ``c.fail(key, value, allowed)`` raises the suite's error."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        c.fail("train", table, "expected a table of training settings ([train])")
    table = dict(table)
    knob_tables = {k: table.pop(k) for k in list(table) if k in TASKS and isinstance(table[k], dict)}
    grid = check_params(c, "train", TrainParams, table)
    defaults = dataclasses.asdict(TrainParams())
    full = {k: grid.get(k, [v]) for k, v in defaults.items()}
    for name, knobs in knob_tables.items():
        if name not in full["task"]:
            c.fail(f"train.{name}", knobs, f"task {name!r} is not in train.task "
                   f"({', '.join(full['task'])}); list it there or drop this table")
    overrides = {}
    for name, knobs in knob_tables.items():  # [train.<task>] may also set [train] keys for that task
        own = {k: v for k, v in knobs.items() if k in defaults and k != "task"}
        overrides[name] = check_params(c, f"train.{name}", TrainParams, own)
        knob_tables[name] = {k: v for k, v in knobs.items() if k not in own}
    configs = []
    for task in full["task"]:
        params_cls = TASKS[task][0]
        knobs = check_params(c, f"train.{task}", params_cls, knob_tables.get(task, {}))
        task_defaults = dataclasses.asdict(params_cls())
        mine = {**full, **overrides.get(task, {}), "task": [task]}
        _check_model(c, mine, f"train.{task}" if task in overrides else "train")
        for combo in _grid(mine):
            for task_combo in _grid({k: knobs.get(k, [v]) for k, v in task_defaults.items()}):
                configs.append({**combo, **task_combo})
    return configs


def _check_model(c, full: dict[str, list], where: str) -> None:
    for lr in full["lr"]:
        if lr <= 0:
            c.fail(f"{where}.lr", full["lr"], "expected a learning rate > 0")
    for d_model, heads in itertools.product(full["d_model"], full["heads"]):
        if d_model % heads:
            c.fail(f"{where}.d_model", d_model,
                   f"d_model={d_model} must be divisible by heads={heads} (head_dim = d_model / heads)")


def _grid(table: dict[str, list]) -> list[dict]:
    keys = list(table)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(table[k] for k in keys))]


def case_fields(config: dict[str, Any], n: int) -> dict[str, Any]:
    """What a train cell of length ``n`` puts in its Case: the model's shape, the batch, and the rest
    of the configuration as its ``train`` key."""
    batch = max(1, config["batch_tokens"] // n) if config["batch_tokens"] else config["batch"]
    rest = {k: v for k, v in config.items()
            if k not in CASE_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])}
    return {"batch": batch, "heads": config["heads"], "head_dim": config["d_model"] // config["heads"],
            "layers": config["layers"], "ffn_dim": config["ffn_dim"],
            "train": tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                  for k, v in rest.items()))}


FEW_EVAL_ITEMS = 400  # below this an accuracy's binomial standard error can exceed 0.025


def small_eval_notes(cases) -> list[str]:
    """One line per (task, n) of train cells whose held-out set scores fewer than
    :data:`FEW_EVAL_ITEMS` predictions per evaluation: an accuracy there cannot tell small
    differences (or chance) apart. Shown by ``validate`` and ``run --dry-run`` before anything runs."""
    notes, seen = [], set()
    for case in cases:
        if case.level != "train":
            continue
        cfg = case.train_dict
        key = (cfg["task"], case.n, case.batch, cfg["eval_batches"])
        if key in seen:
            continue
        seen.add(key)
        task = TASKS[cfg["task"]][1]
        items = task.planned_eval_items(cfg, case.batch) if task.metric == "accuracy" else None
        if items is not None and items < FEW_EVAL_ITEMS:
            notes.append(f"{cfg['task']} at n={case.n}: an evaluation scores {items} held-out "
                         f"predictions (eval_batches {cfg['eval_batches']} x batch {case.batch}); an "
                         f"accuracy on them has a standard error up to {0.5 / items ** 0.5:.3f}. "
                         f"Raise eval_batches (in [train] or [train.{cfg['task']}]) to score at "
                         f"least {FEW_EVAL_ITEMS}")
    return notes
