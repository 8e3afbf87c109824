"""The train level's own overhead: a train cell's time per step against a plain PyTorch loop over the
same model and data (pytest-benchmark; not part of the pass/fail suite).

Run with ``pytest tests/perf/test_train_overhead.py --benchmark-only -s``. The plain loop is what
anyone would write: draw the batch, forward under autocast, loss, zero_grad, backward, clip, AdamW
with the same learning-rate schedule. The harness adds per-step timing (perf_counter on CPU, CUDA
events on GPU), the losses kept on the device and looked at every 20 steps, and the evaluations
(outside the timed steps). ``extra_info`` records both medians and their ratio; the target is at
most 1.05 (not asserted: no wall-clock assertions in tests).
"""
import statistics
import time

import pytest
import torch

from attnbench.context import CellContext
from attnbench.registry import REGISTRY
from attnbench.suite import expand, parse_suite
from attnbench.train.cell import run_train_cell
from attnbench.train.loop import Schedule, make_optimizer
from attnbench.train.model import build_model
from attnbench.train.tasks import loss_fn, make_task

STEPS = 120
SUITE = {
    "name": "train_overhead",
    "sweep": {"n": [64], "level": ["train"], "seed": [0]},
    "train": {"task": "mqar", "layers": 2, "d_model": 64, "heads": 4, "ffn_dim": 128,
              "steps": STEPS, "batch": 32, "lr": 1e-3, "eval_every": STEPS, "eval_batches": 1,
              "mqar": {"num_kv_pairs": 8, "vocab": 64}},
    "methods": {"sdpa": {}},
}


def plain_loop(case, device) -> list[float]:
    """Per-step milliseconds of the textbook loop on the cell's model and batches."""
    cfg = case.train_dict
    task = make_task("mqar", cfg, n=case.n, batch=case.batch, seed=case.seed, eval_batches=1)
    spec = REGISTRY.get(case.method)
    model = build_model(spec, spec.params(), vocab=task.vocab, outputs=task.outputs, n=case.n,
                        d_model=case.heads * case.head_dim, heads=case.heads, layers=case.layers,
                        ffn_dim=case.ffn_dim, pooled=False, pad=None, device=device,
                        seed=case.seed, batch=case.batch)
    s = Schedule(steps=cfg["steps"], lr=cfg["lr"])
    opt = make_optimizer(model, s, device)
    times = []
    for i in range(s.steps):
        b = task.train_batch(i).to(device)
        for g in opt.param_groups:
            g["lr"] = s.lr_at(i)
        t0 = time.perf_counter()
        loss = loss_fn(model(b.inputs), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times[len(times) // 10:]


@pytest.fixture(scope="module")
def cell():
    suite = parse_suite(SUITE, "<train_overhead>")
    return CellContext(suite=suite, device=torch.device("cpu")), expand(suite)[0]


def test_train_cell_vs_plain_loop(benchmark, cell):
    ctx, case = cell
    rows = []
    plain = []

    def both():
        rows.append(run_train_cell(ctx, case))
        plain.append(statistics.median(plain_loop(case, ctx.device)))

    benchmark.pedantic(both, rounds=3, iterations=1)
    harness = statistics.median(r["time_ms"] for r in rows)
    loop = statistics.median(plain)
    benchmark.extra_info.update(harness_step_ms=harness, plain_step_ms=loop, ratio=harness / loop)
    print(f"\ntrain step: harness {harness:.3f} ms, plain loop {loop:.3f} ms, "
          f"ratio {harness / loop:.3f}")
    assert all(r["status"] == "ok" for r in rows)
