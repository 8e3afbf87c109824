"""Nyströmformer's Triton pseudo-inverse (attnbench.methods.nystrom.nystrom_triton) against the torch iteration,
and the method's kernel choice and fused landmark-query attention.

Without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 is set below, before
anything imports the kernel module); with CUDA the same tests run the compiled kernels. Without
Triton the kernel tests skip.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "attnbench.methods.nystrom.nystrom_triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

from conftest import triton_device  # noqa: E402

from attnbench.kernels import triton_available, triton_interpreting  # noqa: E402
from attnbench.methods.nystrom import attention as nystrom_module  # noqa: E402
from attnbench.methods.nystrom import NystromParams, iterative_pinv  # noqa: E402
from attnbench.reference import error_metrics  # noqa: E402
from attnbench.registry import BuildContext, get_method  # noqa: E402


@pytest.fixture(scope="module")
def dev() -> torch.device:
    """CUDA, or the CPU under Triton's interpreter."""
    return triton_device("nystrom.nystrom_triton", "_product_kernel")


def landmark_kernel(m, dev, batch=2, heads=3, d=16, seed=0):
    """A softmax landmark matrix like the method's: row-stochastic, (batch, heads, m, m), fp32."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, heads, m, d, generator=g) for _ in range(2))
    return torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1).to(dev)


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("m, config", [(64, None), (48, dict(BLOCK=32, BLOCK_K=16)),
                                       (32, dict(BLOCK=16, BLOCK_K=16))])
def test_triton_pinv_matches_the_torch_iteration(dev, m, config):
    """Same iteration, fp32 products: equal to the float64 torch iteration to fp32 rounding, also
    where m is not a multiple of the tile (48 with 32-tiles: masked tails, and the mirrored tiles)."""
    from attnbench.methods.nystrom.nystrom_triton import iterative_pinv as triton_pinv

    a = landmark_kernel(m, dev)
    want = iterative_pinv(a.double().cpu(), 6)
    got = triton_pinv(a, 6, config)
    assert got.shape == a.shape and got.dtype == torch.float32
    assert rel(got.cpu(), want) < 5e-6
    assert rel(iterative_pinv(a.cpu(), 6), want) < 5e-6  # the torch fp32 path, for scale
    # zero steps is the starting point Z₀ = Aᵀ/(‖A‖₁‖A‖∞), per matrix
    z0 = triton_pinv(a, 0, config).cpu()
    a64 = a.double().cpu()
    norms = a64.abs().sum(-2).amax(-1) * a64.abs().sum(-1).amax(-1)
    assert rel(z0, a64.transpose(-1, -2) / norms[..., None, None]) < 1e-6


@pytest.mark.parametrize("m, elements", [(48, 16 * 64), (64, 8 * 64), (32, 32 * 32)])
def test_triton_start_reduces_norms_over_row_blocks(dev, m, elements, monkeypatch):
    """Z₀ = Aᵀ/(‖A‖₁‖A‖∞) when the norms come from several row blocks' parts: 3 blocks of 16 rows
    (padded to 4, one empty), 8 of 8, and one block. Rows of very different sums, so a block that
    dropped out or a max taken over the wrong axis changes the answer."""
    from attnbench.methods.nystrom import nystrom_triton

    monkeypatch.setattr(nystrom_triton, "START_ELEMENTS", elements)
    g = torch.Generator().manual_seed(m)
    a = (torch.rand(2, 3, m, m, generator=g) * torch.linspace(0.1, 5.0, m)[:, None]).to(dev)
    a[0, 1, m - 1] *= 40  # the largest row sum in the last block
    a[1, 2, :, 0] *= 90  # the largest column sum in one column, across every block
    got = nystrom_triton.iterative_pinv(a, 0).cpu()
    a64 = a.double().cpu()
    norms = a64.abs().sum(-2).amax(-1) * a64.abs().sum(-1).amax(-1)
    assert rel(got, a64.transpose(-1, -2) / norms[..., None, None]) < 1e-6


def test_triton_pinv_intermediate_products_are_symmetric(dev):
    """The kernels compute half of AZ and its polynomials and mirror it: that is exact only because
    A·Z_k is symmetric for every step of this iteration. Check the fact the shortcut rests on, with the
    torch iteration in float64 (no mirroring there)."""
    a = landmark_kernel(32, torch.device("cpu"), seed=3).double()
    for steps in range(4):
        az = a @ iterative_pinv(a, steps)
        assert (az - az.transpose(-1, -2)).abs().max() < 1e-9 * az.abs().max()


def test_method_triton_kernel_matches_torch_kernel(dev):
    n, m = 128, 32
    ctx = BuildContext(n=n, heads=2, head_dim=16, seed=0, device=dev)
    spec = get_method("nystrom")
    # direct calls (graph_pinv off): this test is about which kernel each call takes
    tri = spec.build(NystromParams(num_landmarks=m, kernel="triton", graph_pinv=False), ctx)
    ref = spec.build(NystromParams(num_landmarks=m, kernel="torch", graph_pinv=False), ctx)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g).to(dev) for _ in range(3))
    with torch.no_grad():
        got, want = tri(q, k, v), ref(q, k, v)
    assert tri.stats()["ran"] == "triton" and ref.stats()["ran"] == "torch"
    assert error_metrics(got, want)["rel_err"] < 1e-5
    # a call that needs gradients takes the torch path and says why
    q.requires_grad_(True)
    out = tri(q, k, v)
    assert tri.stats()["ran"] == "torch" and "gradients" in tri.stats()["fallback"]
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # auto leaves few matrices (here batch·heads = 4) to torch, whose launches cost less CPU
    tri.auto = True
    with torch.no_grad():
        tri(q, k, v)
    assert tri.stats()["ran"] == "torch" and "auto" in tri.stats()["fallback"]


def test_auto_takes_triton_for_few_matrices_while_capturing(dev, monkeypatch):
    """Below FUSED_MIN_MATRICES, auto runs torch in eager calls (cheaper launches) but Triton in a
    call being captured into a CUDA graph, whose launches cost CPU only once; both give the same
    pseudo-inverse to fp32 rounding."""
    n, m = 128, 32
    ctx = BuildContext(n=n, heads=2, head_dim=16, seed=0, device=dev)
    mod = get_method("nystrom").build(NystromParams(num_landmarks=m, kernel="triton",
                                                    graph_pinv=False), ctx)
    mod.auto = True  # as kernel="auto" builds it on CUDA
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g).to(dev) for _ in range(3))
    with torch.no_grad():
        eager = mod(q, k, v)
        assert mod.stats()["ran"] == "torch" and "auto" in mod.stats()["fallback"]
        monkeypatch.setattr(nystrom_module, "capturing", lambda x: True)
        captured = mod(q, k, v)
    assert mod.stats()["ran"] == "triton" and "fallback" not in mod.stats()
    assert error_metrics(captured, eager)["rel_err"] < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_module_replays_triton_in_a_cuda_graph():
    """Built with auto at batch·heads 8, the module has its Triton kernels compiled before any
    capture; a captured call runs them, and the replay equals an eager call."""
    from attnbench.measure import time_cuda_graph

    dev = torch.device("cuda")
    ctx = BuildContext(n=1024, heads=8, head_dim=64, seed=0, device=dev, batch=1)
    mod = get_method("nystrom").build(NystromParams(num_landmarks=256, graph_pinv=False), ctx)
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 8, 1024, 64, generator=g).to(dev) for _ in range(3))
    out = torch.empty(1, 8, 1024, 64, device=dev)
    with torch.no_grad():
        eager = mod(q, k, v)
        assert mod.stats()["ran"] == "torch"

        def step():
            out.copy_(mod(q, k, v))

        time_cuda_graph(step, dev, warmup=2, repeats=3)
    assert mod.stats()["ran"] == "triton"
    assert error_metrics(out, eager)["rel_err"] < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_eager_calls_replay_the_pinv_graph_with_fresh_inputs():
    """graph_pinv: an eager call replays the iteration captured on the first call. A second call on
    other inputs gets its own answer (the static input is refilled), the first call's output is not
    overwritten (the result is cloned out), it equals the iteration run directly, and a caller's own
    capture of the module (which cannot nest another) runs the iteration inside it."""
    from attnbench.measure import time_cuda_graph

    dev = torch.device("cuda")
    ctx = BuildContext(n=1024, heads=8, head_dim=64, seed=0, device=dev, batch=1)
    spec = get_method("nystrom")
    graphed = spec.build(NystromParams(num_landmarks=256), ctx)
    direct = spec.build(NystromParams(num_landmarks=256, graph_pinv=False, kernel="triton"), ctx)
    g = torch.Generator().manual_seed(5)
    first, second = ([torch.randn(1, 8, 1024, 64, generator=g).to(dev) * s for _ in range(3)]
                     for s in (1.0, 3.0))
    with torch.no_grad():
        a = graphed(*first)
        assert graphed.stats()["pinv_graph"] is True and graphed.stats()["ran"] == "triton"
        a_copy = a.clone()
        b = graphed(*second)
        assert torch.equal(a, a_copy)
        assert error_metrics(a, direct(*first))["rel_err"] < 1e-5
        assert error_metrics(b, direct(*second))["rel_err"] < 1e-5
        assert len(graphed._pinv_graphs) == 1
        out = torch.empty_like(a)

        def step():
            out.copy_(graphed(*second))

        time_cuda_graph(step, dev, warmup=2, repeats=3)
        assert "pinv_graph" not in graphed.stats()
    assert error_metrics(out, b)["rel_err"] < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_landmark_queries_equal_the_explicit_products(dtype):
    """softmax(Q̃Kᵀ)V as one SDPA call (CUDA, large inputs) or two products: the same output. On the
    CPU the module never fuses unless told to (fused_min); float64 always stays explicit."""
    n, m = 256, 32
    ctx = BuildContext(n=n, heads=2, head_dim=16, seed=0, dtype=dtype)
    mod = get_method("nystrom").build(NystromParams(num_landmarks=m, kernel="torch"), ctx)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g, dtype=dtype) for _ in range(3))
    assert mod.fused_min is None
    explicit = mod(q, k, v)
    assert mod.stats()["right"] == "explicit"
    mod.fused_min = 0
    fused = mod(q, k, v)
    assert mod.stats()["right"] == ("explicit" if dtype == torch.float64 else "sdpa")
    assert error_metrics(fused, explicit)["rel_err"] < (1e-5 if dtype == torch.float32 else 1e-12)


def test_triton_kernel_knob_is_checked_before_building():
    spec = get_method("nystrom")
    cpu = BuildContext(n=256, heads=2, head_dim=16, seed=0)
    why = spec.unsupported_reason(NystromParams(kernel="triton"), cpu)
    if not triton_available():
        assert "triton" in why
        return
    if not triton_interpreting():
        assert "CUDA" in why
    assert "iterative" in spec.unsupported_reason(NystromParams(kernel="triton", pinv="exact"), cpu)
    # auto takes torch on the CPU
    mod = spec.build(NystromParams(num_landmarks=32), cpu)
    assert mod.stats()["kernel"] == "torch"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_pinv_replays_in_a_cuda_graph():
    from attnbench.methods.nystrom.nystrom_triton import iterative_pinv as triton_pinv
    from attnbench.measure import time_cuda_graph

    a = landmark_kernel(256, torch.device("cuda"), batch=4, heads=8)
    want = triton_pinv(a, 6)
    timing = time_cuda_graph(lambda: triton_pinv(a, 6), torch.device("cuda"), warmup=2, repeats=3)
    assert timing.median > 0
    assert rel(triton_pinv(a, 6), want) == 0.0
