"""The training loop of a ``train`` cell: AdamW, linear warm-up then cosine decay to zero, gradient
clipping, bf16 autocast where asked (fp32 otherwise), evaluation on the held-out set every
``eval_every`` steps and after the last one.

Each step is timed alone (CUDA events on GPU, ``perf_counter`` on CPU): the next batch is drawn on
the host while the device still works on the current step, and evaluations run between steps, so
neither counts in a step's time. Losses stay on the device and are looked at every ``CHECK_EVERY``
steps and at each evaluation (one host sync each, not one per step): the first non-finite loss, or a
non-finite evaluation, ends training as ``diverged`` at that step, never as a silent NaN.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from attnbench.train.tasks import Batch, Tally, Task, loss_fn

CHECK_EVERY = 20  # steps between looks at the losses (a host sync on GPU)
BETAS = (0.9, 0.98)
EPS = 1e-6


@dataclass(frozen=True)
class Schedule:
    """The optimiser's knobs from ``[train]``."""

    steps: int
    lr: float
    warmup_frac: float = 0.1
    weight_decay: float = 0.01
    clip: float = 1.0
    eval_every: int = 50

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_frac * self.steps))

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, then cosine decay to 0."""
        w = self.warmup_steps
        if step < w:
            return self.lr * (step + 1) / w
        span = max(1, self.steps - w)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / span)))


@dataclass
class EvalPoint:
    step: int            # steps taken before this evaluation
    train_loss: float    # mean training loss of the steps since the previous evaluation
    value: float         # the task's metric on the held-out set
    eval_loss: float
    elapsed_s: float     # wall time since training started, evaluations included


@dataclass
class TrainResult:
    points: list[EvalPoint] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    diverged_step: int | None = None  # first step (1-based) whose loss or evaluation was not finite
    wall_s: float = 0.0


def make_optimizer(model: torch.nn.Module, s: Schedule, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (embeddings included), none on biases and norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=s.lr_at(0), betas=BETAS, eps=EPS, **fused)


def autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)


def evaluate(model: torch.nn.Module, batches: list[Batch], task: Task, device: torch.device,
             amp: torch.dtype | None) -> tuple[float, float]:
    """(metric, mean loss) on the held-out batches."""
    model.eval()
    tally = Tally()
    with torch.no_grad(), autocast(device, amp):
        for b in batches:
            tally.add(model(b.inputs), b.labels)
    model.train()
    return tally.value(task.metric), tally.loss()


class Clock:
    """Per-step times: CUDA events on GPU (read in one go at the end), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.cpu_ms: list[float] = []

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, begun) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append((begun, ev))
        else:
            self.cpu_ms.append((time.perf_counter() - begun) * 1e3)

    def samples_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self.marks]
        return self.cpu_ms


def train(model: torch.nn.Module, task: Task, s: Schedule, device: torch.device,
          amp: torch.dtype | None, on_eval: Callable[[EvalPoint], None] | None = None,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model`` on ``task`` for ``s.steps`` steps; ``on_eval(point)`` after each evaluation.
    ``on_step(i)`` is called before step i (tests use it to break things mid-run)."""
    result = TrainResult()
    opt = make_optimizer(model, s, device)
    params = [p for p in model.parameters() if p.requires_grad]
    held_out = [b.to(device) for b in task.eval_set()]
    losses = torch.zeros(s.steps, device=device)
    clock = Clock(device)
    pin = device.type == "cuda"
    nxt = _move(task.train_batch(0), device, pin)
    checked = 0  # losses[:checked] are known to be finite
    since = 0    # first step whose loss the next evaluation point averages
    t0 = time.perf_counter()
    model.train()
    for i in range(s.steps):
        if on_step is not None:
            on_step(i)
        batch = nxt
        for g in opt.param_groups:
            g["lr"] = s.lr_at(i)
        begun = clock.start()
        with autocast(device, amp):
            loss = loss_fn(model(batch.inputs), batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.clip)
        opt.step()
        losses[i] = loss.detach()
        clock.stop(begun)
        if i + 1 < s.steps:
            nxt = _move(task.train_batch(i + 1), device, pin)
        at_eval = (i + 1) % s.eval_every == 0 or i + 1 == s.steps
        if at_eval or (i + 1) % CHECK_EVERY == 0:
            seen = losses[checked:i + 1].cpu()
            bad = (~torch.isfinite(seen)).nonzero()
            if len(bad):
                result.diverged_step = checked + int(bad[0]) + 1
                break
            checked = i + 1
        if at_eval:
            value, eval_loss = evaluate(model, held_out, task, device, amp)
            point = EvalPoint(i + 1, float(losses[since:i + 1].mean()), value, eval_loss,
                              time.perf_counter() - t0)
            since = i + 1
            result.points.append(point)
            if on_eval is not None:
                on_eval(point)
            if not math.isfinite(value):
                result.diverged_step = i + 1
                break
    result.wall_s = time.perf_counter() - t0
    result.step_ms = clock.samples_ms()
    result.losses = losses[:len(result.step_ms)].cpu().tolist()
    return result


def _move(batch: Batch, device: torch.device, pin: bool) -> Batch:
    if pin:
        batch = Batch(batch.inputs.pin_memory(), batch.labels.pin_memory())
    return batch.to(device)
