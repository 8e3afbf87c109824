"""FLOP and bandwidth accounting (issue 22): counts over the pairs a mask allows, achieved TB/s, the
roofline plot; and the sliding-window peers of `local` computing exactly what it computes."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

from attnbench.flops import (attention_flops, based_flops, causal_pairs, chunked_linear_flops,
                             dense_pairs, window_pairs)
from attnbench.methods.sparse import pattern_mask
from attnbench.methods.window import FlexWindow, SdpaWindow, WindowParams, band
from attnbench.plotstyle import NothingToPlot
from attnbench.registry import REGISTRY, BuildContext


def qkv(n, heads=2, d=16, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, d, generator=g) for _ in range(3)]


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_causal_is_half_of_dense_plus_the_diagonals_share(n):
    assert causal_pairs(n) / dense_pairs(n, n, False) == pytest.approx(0.5 + 1 / (2 * n), rel=1e-12)
    assert causal_pairs(n) == int(torch.ones(n, n).tril().sum())
    # more keys than queries (bottom-right causal): brute force
    m = n + 3
    assert causal_pairs(n, m) == int(torch.ones(n, m, dtype=torch.bool).tril(m - n).sum())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,w", [(1, 1), (7, 3), (64, 1), (64, 64), (50, 100)])
def test_window_pairs_count_the_band(n, w, causal):
    assert window_pairs(n, w, causal) == int(band(n, w, causal).sum())


@pytest.mark.parametrize("name", ["sdpa", "naive"])
def test_exact_flops_discount_causal(name):
    q, k, v = qkv(256)
    dense = REGISTRY.get(name).build(REGISTRY.get(name).params(),
                                     BuildContext(n=256, heads=2, head_dim=16)).flops(q, k, v)
    causal = REGISTRY.get(name).build(REGISTRY.get(name).params(),
                                      BuildContext(n=256, heads=2, head_dim=16, causal=True)).flops(q, k, v)
    assert dense == 4 * 2 * 2 * 256 * 256 * 16
    assert causal / dense == pytest.approx((256 + 1) / (2 * 256))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,params", [("local", {"window": 40}), ("strided", {"stride": 16}),
                                         ("fixed", {"block": 32, "c": 4}),
                                         ("bigbird", {"block": 32, "num_global": 32, "num_random": 1})])
def test_sparse_flops_are_density_times_dense(name, params, causal):
    n = 256
    spec = REGISTRY.get(name)
    ctx = BuildContext(n=n, heads=2, head_dim=16, causal=causal)
    p = spec.params(**params)
    q, k, v = qkv(n)
    density = float(pattern_mask(name, p, ctx).float().mean())
    assert spec.build(p, ctx).flops(q, k, v) == pytest.approx(density * attention_flops(2, 2, 16, n * n))
    if name == "local":
        assert SdpaWindow(WindowParams(40), ctx).flops(q, k, v) == spec.build(p, ctx).flops(q, k, v)


def test_recurrent_counts_grow_as_their_algorithms():
    assert chunked_linear_flops(1, 2, 8192, 64, 64) == pytest.approx(
        2 * chunked_linear_flops(1, 2, 4096, 64, 64))
    assert chunked_linear_flops(1, 2, 4096, 64, 64, delta=True) > chunked_linear_flops(1, 2, 4096, 64, 64)
    assert based_flops(1, 2, 2000, 16, 16) / based_flops(1, 2, 1000, 16, 16) == pytest.approx(4, rel=1e-2)


def test_roofline_columns_report_achieved_bandwidth():
    from attnbench.measure import Step
    from attnbench.roofline import roofline_columns

    q, k, v = qkv(64)
    m = REGISTRY.get("sdpa").build(REGISTRY.get("sdpa").params(), BuildContext(n=64, heads=2, head_dim=16))
    step = Step.make(m, (q, k, v), "fwd", q.shape, torch.Generator())
    cols = roofline_columns({"copy_gbs": 2000.0, "matmul_tflops": 500.0}, step, q.shape, 0.5,
                            m.flops(q, k, v))
    assert cols["tb_per_s"] == pytest.approx(cols["min_bytes"] / 0.5e-3 / 1e12)
    assert cols["mem_roofline_frac"] == pytest.approx(cols["tb_per_s"] / 2.0)


def roofline_frame() -> pd.DataFrame:
    rows = []
    for method, flops, mib, t in [("sdpa", 4e12, 1e9, 10.0), ("linear", 1e11, 2e9, 3.0)]:
        for mode in ("fwd", "fwd_bwd"):
            rows.append(dict(method=method, label=method, status="ok", mode=mode, n=4096, dtype="bf16",
                             level="core", batch=1, flops=flops, min_bytes=mib, time_ms=t,
                             tflops_per_s=flops / (t / 1e3) / 1e12, copy_gbs=4000.0,
                             matmul_tflops=700.0))
    return pd.DataFrame(rows)


def test_roofline_plot_draws_the_measured_roofs_and_every_cell():
    from attnbench.plot_roofline import plot_roofline

    figs = plot_roofline(roofline_frame(), {"suite": "t", "baseline": "sdpa"})
    (stem, fig), = figs.items()
    assert stem == "roofline"
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2  # forward and forward+backward
    roof = [ln for ln in axes[0].get_lines() if ln.get_gid() == "roof"][0]
    x, y = roof.get_data()
    assert max(y) == pytest.approx(700.0)  # the flat roof: measured matmul rate
    assert y[0] == pytest.approx(x[0] * 4.0)  # the slanted one: 4 TB/s copy bandwidth
    points = {ln.get_label(): ln.get_data() for ln in axes[0].get_lines() if ln.get_gid() != "roof"}
    assert points["sdpa"][0][0] == pytest.approx(4e12 / 1e9)  # FLOP per byte
    with pytest.raises(NothingToPlot, match="min_bytes"):
        plot_roofline(roofline_frame().drop(columns="min_bytes"), {})


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 5, 64, 300])
def test_window_peers_equal_local(window, causal):
    n = 200
    ctx = BuildContext(n=n, heads=2, head_dim=16, causal=causal)
    spec = REGISTRY.get("local")
    local = spec.build(spec.params(window=window, kernel="blocked"), ctx)
    q, k, v = qkv(n)
    want = local(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention on the CPU warns that it is slow
        flex = FlexWindow(WindowParams(window), ctx)(q, k, v)
    sdpa = SdpaWindow(WindowParams(window), ctx)
    assert (flex - want).abs().max() < 1e-5 and (sdpa(q, k, v) - want).abs().max() < 1e-5
    # gradients too, where the CPU has them (SDPA)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    g1 = torch.autograd.grad(sdpa(*leaves).square().sum(), leaves)
    leaves2 = [t.clone().requires_grad_() for t in (q, k, v)]
    g2 = torch.autograd.grad(local(*leaves2).square().sum(), leaves2)
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(g1, g2))
