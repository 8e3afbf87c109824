"""One ``train`` cell: build the task and the model, train, and return the row.

Columns beside the cell's identity (units in the names, as everywhere):

- the metric: ``metric`` ("accuracy" or "perplexity") and its final value under that name, on the
  held-out set after the last step; ``eval_best`` (with ``eval_best_step``) and ``eval_last``
  (``eval_last_step``) over the evaluations; ``chance`` and ``train_loss_last``;
- ``quality_vs_exact``: the final metric relative to exact attention's (the suite's baseline) with the
  same seed and settings in the same run, oriented so that 1 is as good and below 1 worse (accuracy /
  exact accuracy, exact perplexity / perplexity). A row has it when that cell ran earlier in the same
  process; reports recompute it from all rows;
- cost: ``time_ms`` (median time of one training step, forward + backward + optimiser, over the steps
  after the first tenth), ``time_ms_iqr``, ``time_samples_ms``, ``tokens_per_s``, ``train_wall_s``
  (training with its evaluations), ``peak_mem_mib`` / ``extra_mem_mib`` (CUDA: the allocator's peak
  over the whole training; CPU: one step's forward and backward as the profiler traces it, plus
  parameters, gradients and AdamW's moments), ``n_params``, ``n_attn_params`` (the method's own,
  shared ones once);
- ``status``: ``ok``, ``diverged`` (with ``diverged_step``: the loss or an evaluation stopped being
  finite there, and training stopped), ``unsupported``, ``oom`` or ``error``.
"""
from __future__ import annotations

import secrets
import statistics
import time
import traceback
from typing import TYPE_CHECKING, Any

import torch

from attnbench.cell_build import module_stats
from attnbench.errors import Interrupted, one_line
from attnbench.measure import MIB, free_memory, is_oom, measure_memory
from attnbench.methodspec import Unsupported
from attnbench.registry import REGISTRY
from attnbench.schema import STATS
from attnbench.train.curves import CurveWriter
from attnbench.train.loop import EvalPoint, Schedule, autocast, train
from attnbench.train.model import build_model, method_modules, parameter_counts
from attnbench.train.tasks import Task, loss_fn, make_task

if TYPE_CHECKING:
    from attnbench.case import Case
    from attnbench.context import CellContext

WARMUP_SHARE = 0.1  # the first tenth of the steps is left out of the step-time statistics


def exact_key(case: "Case") -> tuple:
    """What a cell shares with the exact cell it is compared with: all but the method and params."""
    d = case.identity()
    for k in ("method", "params"):
        d.pop(k)
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def quality_vs_exact(metric: str, value: float | None, exact: float | None) -> float | None:
    """``value`` relative to exact attention's, 1 = as good, below 1 worse."""
    if value is None or exact is None or not (value > 0 and exact > 0):
        return None
    return value / exact if metric == "accuracy" else exact / value


def _amp(dtype: str) -> torch.dtype | None:
    if dtype == "fp16":
        raise Unsupported("fp16 training needs loss scaling; train in bf16 (autocast) or fp32")
    return torch.bfloat16 if dtype == "bf16" else None


def run_train_cell(ctx: "CellContext", case: "Case") -> dict[str, Any]:
    """Train one cell's model and return its row fields (never raises for a failing method)."""
    row: dict[str, Any] = {}
    device = ctx.device
    failed = False
    writer = None
    try:
        cfg = case.train_dict
        amp = _amp(case.dtype)
        spec = REGISTRY.get(case.method)
        params = spec.params(**case.params_dict)
        t0 = time.perf_counter()
        task = make_task(cfg["task"], cfg, n=case.n, batch=case.batch, seed=case.seed,
                         eval_batches=cfg["eval_batches"])
        row.update(task=task.name, metric=task.metric, chance=task.chance(), **task.info)
        row["data_s"] = time.perf_counter() - t0
        row["eval_items"] = task.eval_items()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t0 = time.perf_counter()
        model = build_model(spec, params, vocab=task.vocab, outputs=task.outputs, n=case.n,
                            d_model=case.heads * case.head_dim, heads=case.heads, layers=case.layers,
                            ffn_dim=case.ffn_dim, pooled=task.pooled, pad=task.pad, device=device,
                            seed=case.seed, batch=case.batch, causal=case.causal,
                            token_shift=cfg.get("token_shift", False),
                            positions=cfg.get("positions", "learned"), amp=amp)
        row["build_s"] = time.perf_counter() - t0
        row.update(parameter_counts(model))
        if ctx.cuda_graphs:
            row["graph_error"] = "CUDA graphs do not apply to train cells: steps run eagerly"
        schedule = Schedule(steps=cfg["steps"], lr=cfg["lr"], warmup_frac=cfg["warmup_frac"],
                            weight_decay=cfg["weight_decay"], clip=cfg["clip"],
                            eval_every=cfg["eval_every"])
        attempt = secrets.token_hex(4)
        writer = CurveWriter(ctx.run_dir) if ctx.run_dir is not None else None
        if writer is not None:
            row["curve_attempt"] = attempt

        def on_eval(p: EvalPoint) -> None:
            if writer is not None:
                writer.append({"cell_id": case.cell_id, "attempt": attempt, "step": p.step,
                               "train_loss": p.train_loss, "eval_loss": p.eval_loss,
                               "metric": task.metric, task.metric: p.value,
                               "elapsed_s": p.elapsed_s})

        result = train(model, task, schedule, device, amp, on_eval)
        row[STATS] = module_stats(method_modules(model)[0])  # the method's own columns, apart from the harness's
        row.update(_timing(result.step_ms, case))
        row["train_wall_s"] = result.wall_s
        row["steps_run"] = len(result.step_ms)
        row["train_loss_last"] = result.losses[-1] if result.losses else None
        row.update(_memory(model, task, device, amp, before))
        row.update(_metrics(task, result))
        value = row.get(task.metric)
        key = exact_key(case)
        if spec.exact and case.method == ctx.suite.baseline and value is not None:
            ctx.notes[("train-exact", key)] = value
        row["quality_vs_exact"] = quality_vs_exact(task.metric, value,
                                                   ctx.notes.get(("train-exact", key)))
        if result.diverged_step is not None:
            row.update(status="diverged", diverged_step=result.diverged_step,
                       reason=f"diverged: the training loss or an evaluation was not finite at step "
                              f"{result.diverged_step}; training stopped there")
        else:
            row.update(status="ok", reason="")
        return row
    except Unsupported as exc:
        return {**row, "status": "unsupported", "reason": str(exc)}
    except (KeyboardInterrupt, GeneratorExit, Interrupted):
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of a method becomes a row
        failed = True
        if is_oom(exc):
            return {**row, "status": "oom", "reason": one_line(exc, 200)}
        tb = traceback.extract_tb(exc.__traceback__)[-3:]
        where = "; ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in tb)
        return {**row, "status": "error", "reason": one_line(exc), "where": where}
    finally:
        if writer is not None:
            writer.close()
        model = task = None  # noqa: F841 - drop the references before freeing memory
        free_memory(device, collect=failed)


def _timing(step_ms: list[float], case: "Case") -> dict:
    if not step_ms:
        return {}
    skip = min(len(step_ms) - 1, max(1, int(len(step_ms) * WARMUP_SHARE))) if len(step_ms) > 1 else 0
    kept = step_ms[skip:]
    q = statistics.quantiles(kept, n=4, method="inclusive") if len(kept) > 1 else [kept[0]] * 3
    median = statistics.median(kept)
    return {"time_ms": median, "time_ms_iqr": q[2] - q[0], "time_ms_min": min(kept),
            "time_samples_ms": kept, "n_samples": len(kept), "timing_mode": "train-step",
            "tokens_per_s": case.batch * case.n / (median / 1e3) if median > 0 else None}


def _memory(model, task: Task, device: torch.device, amp, before: int) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mem_mib": peak / MIB, "extra_mem_mib": (peak - before) / MIB}
    params = [p for p in model.parameters()]
    trained = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    live = sum(p.numel() * p.element_size() for p in params) + 3 * trained  # grads, exp_avg(_sq)
    batch = task.eval_set()[0]

    def step():
        model.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = loss_fn(model(batch.inputs), batch.labels)
        loss.backward()

    mem = measure_memory(step, device, live=live)
    model.zero_grad(set_to_none=True)
    return {"peak_mem_mib": mem["peak_mem_mib"], "extra_mem_mib": mem["extra_mem_mib"]}


def _metrics(task: Task, result) -> dict:
    points = [p for p in result.points if p.value == p.value]
    out: dict[str, Any] = {task.metric: None}
    if not points:
        return out
    better = max if task.higher_is_better else min
    best = better(points, key=lambda p: p.value)
    last = points[-1]
    out.update(eval_best=best.value, eval_best_step=best.step, eval_last=last.value,
               eval_last_step=last.step, eval_loss_last=last.eval_loss)
    if result.diverged_step is None:
        out[task.metric] = last.value
    return out
