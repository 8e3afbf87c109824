"""Roofline bookkeeping: the least bytes a step moves, and the fractions derived from them."""
import pytest
import torch

from attnbench.measure import Step
from attnbench.roofline import min_bytes, roofline_columns


def test_min_bytes_counts_inputs_params_outputs_and_gradients():
    lin = torch.nn.Linear(4, 4)  # 20 params
    x = torch.randn(8, 4)
    fwd = Step.make(lin, (x,), "fwd", torch.Size([8, 4]), torch.Generator())
    assert min_bytes(fwd, (8, 4)) == (32 + 20 + 32) * 4
    bwd = Step.make(lin, (x,), "fwd_bwd", torch.Size([8, 4]), torch.Generator())
    # + read grad_out (32) + write dx (32), dW, db (20)
    assert min_bytes(bwd, (8, 4)) == (32 + 20 + 32 + 32 + 32 + 20) * 4


def test_roofline_fractions():
    q = torch.randn(1, 1, 1000, 250)  # 1 MB each in fp32
    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return q

    step = Step.make(Attn(), (q, q.clone(), q.clone()), "fwd", q.shape, torch.Generator())
    # 4 MB (q, k, v in, out) at 1 GB/s is 4 ms; 2 GFLOP at 1 TFLOP/s is 2 ms
    cols = roofline_columns({"copy_gbs": 1.0, "matmul_tflops": 1.0}, step, q.shape, time_ms=8.0,
                            flops=2e9)
    assert cols["min_bytes"] == 4 * 1_000_000
    assert cols["mem_floor_ms"] == pytest.approx(4.0)
    assert cols["mem_roofline_frac"] == pytest.approx(0.5)
    assert cols["flop_roofline_frac"] == pytest.approx(0.25)


@pytest.mark.gpu
def test_device_rates_are_plausible():
    from attnbench.roofline import copy_bandwidth_gbs, matmul_tflops

    dev = torch.device("cuda")
    assert 100 < copy_bandwidth_gbs(dev, mib=256) < 10_000
    assert 1 < matmul_tflops(dev, torch.float16, size=4096) < 5_000
