"""The harness's own overhead per cell on CPU (pytest-benchmark; not part of the pass/fail suite).

Run with ``pytest tests/perf --benchmark-only``. A trivial method at n = 16 makes the method's own
cost negligible, so what is measured is planning, building, input generation, the timed loop's
bookkeeping, the CPU memory profile and the error reference.
"""
import pytest
import torch

from attnbench.context import CellContext
from attnbench.dispatch import run_cell
from attnbench.measure import time_call
from attnbench.suite import expand, parse_suite

SUITE = {
    "name": "overhead",
    "sweep": {"n": [16], "batch": [1], "heads": [1], "head_dim": [8]},
    "timing": {"warmup": 1, "warmup_s": 0.0, "repeats": 3},
    "methods": {"sdpa": {}},
}


@pytest.fixture(scope="module")
def cell():
    suite = parse_suite(SUITE, "<overhead>")
    return CellContext(suite=suite, device=torch.device("cpu")), expand(suite)[0]


def test_overhead_per_cell(benchmark, cell):
    ctx, case = cell
    row = benchmark(run_cell, ctx, case)
    assert row["status"] == "ok"


def test_overhead_per_cell_without_error(benchmark, cell):
    ctx, case = cell
    no_err = CellContext(suite=parse_suite({**SUITE, "error": {"enabled": False}}, "<x>"),
                         device=ctx.device)
    row = benchmark(run_cell, no_err, case)
    assert row["status"] == "ok"


def test_timer_overhead_per_sample(benchmark):
    benchmark(time_call, lambda: None, torch.device("cpu"), warmup=0, repeats=100, warmup_s=0.0)
