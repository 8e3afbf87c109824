"""The measurement core: samples, statistics, CPU and CUDA memory, fwd and fwd+bwd steps."""
import pytest
import torch

from attnbench.measure import MIB, Step, Timing, live_bytes, measure_memory, time_call


def test_timing_statistics():
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == 3.0 and t.min == 1.0
    assert t.iqr == pytest.approx(4.0 - 2.0)
    assert Timing((5.0,)).iqr == 0.0


def test_time_call_warms_up_and_keeps_samples():
    calls = []
    t = time_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=7, warmup_s=0.0)
    assert len(t.samples_ms) == 7 and len(calls) == 9
    assert all(s >= 0 for s in t.samples_ms)


def test_time_call_stops_early_on_budget_but_keeps_min_repeats():
    import time

    t = time_call(lambda: time.sleep(0.02), torch.device("cpu"), warmup=0, repeats=100,
                  max_time_s=0.05, min_repeats=3, warmup_s=0.0)
    assert 3 <= len(t.samples_ms) < 10


def test_cpu_memory_sees_the_intermediate_peak():
    n = 512

    def f():
        a = torch.ones(n, n)          # 1 MiB
        b = torch.ones(n, n) * 2      # +1 MiB (+1 MiB temporary for ones)
        return (a + b).sum()

    mem = measure_memory(f, "cpu", live=3 * MIB)
    assert 2.0 <= mem["extra_mem_mib"] <= 4.5
    assert mem["peak_mem_mib"] == pytest.approx(mem["extra_mem_mib"] + 3.0)


def test_cpu_memory_scales_quadratically_for_materialised_scores():
    def scores(n):
        q = torch.randn(1, 1, n, 16)
        return lambda: torch.softmax(q @ q.transpose(-1, -2), -1)

    small = measure_memory(scores(256), "cpu")["extra_mem_mib"]
    large = measure_memory(scores(1024), "cpu")["extra_mem_mib"]
    assert large / small == pytest.approx(16, rel=0.25)


def test_live_bytes_counts_shared_storage_once():
    t = torch.zeros(256)
    m = torch.nn.Linear(4, 4)
    assert live_bytes([t, t[:10]], [m]) == 256 * 4 + (16 + 4) * 4


def test_fwd_bwd_step_returns_gradients_without_accumulating():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    step = Step.make(lin, (x,), "fwd_bwd", torch.Size([2, 8]), torch.Generator().manual_seed(0))
    g1 = step()
    g2 = step()
    assert len(g1) == 3  # input, weight, bias
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert lin.weight.grad is None


@pytest.mark.gpu
def test_cuda_memory_and_events():
    dev = torch.device("cuda")
    x = torch.randn(1024, 1024, device=dev)
    mem = measure_memory(lambda: x @ x, dev)
    assert mem["extra_mem_mib"] == pytest.approx(4.0, rel=0.1)
    assert mem["peak_mem_mib"] >= 8.0 and mem["reserved_mem_mib"] >= mem["peak_mem_mib"]
    t = time_call(lambda: x @ x, dev, warmup=2, repeats=5)
    assert len(t.samples_ms) == 5 and t.median > 0


@pytest.mark.parametrize("left, baseline, collect, want", [
    (100, 100, False, 0),  # nothing left behind: no collector pass (it costs a third of a second)
    (164, 100, False, 1),  # more allocated than before the cell: collect
    (100, None, False, 0),  # no baseline given: only after failures
    (100, 100, True, 1),  # after a failure: always
])
def test_free_memory_collects_when_cuda_keeps_more_than_before(monkeypatch, left, baseline, collect,
                                                               want):
    """The CUDA-only decision, with the CUDA calls stubbed: a full gc pass runs when the allocator
    still holds more than it did before the cell (a reference cycle keeps a module's tensors alive)."""
    import gc

    from attnbench import measure

    passes = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: left)
    monkeypatch.setattr(gc, "collect", lambda *a: passes.append(1) or 0)
    measure.free_memory(torch.device("cuda", 0), collect=collect, baseline=baseline)
    assert len(passes) == want
