"""Linformer's Triton kernels against the torch path: projection, attention, the module's kernel choice.

Without CUDA the kernels run in Triton's CPU interpreter: TRITON_INTERPRET=1 has to be in the
environment when ``attnbench.methods.linformer.linformer_triton`` is first imported (Triton reads it when a
kernel is decorated), so it is set below, before anything imports that module. With CUDA the same
tests run the compiled kernels. Without Triton they skip.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available() and "attnbench.methods.linformer.linformer_triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

from conftest import cli_env, triton_device  # noqa: E402

from attnbench.kernels import triton_available  # noqa: E402
from attnbench.methods.linformer import LinformerAttention, LinformerParams  # noqa: E402
from attnbench.reference import error_metrics  # noqa: E402
from attnbench.registry import BuildContext, Unsupported, get_method  # noqa: E402

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed (pip install triton)")

# fp32 compares to float64 matmuls; fp16 to the torch path in fp16, which also rounds E·K to fp16
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.fixture(scope="module")
def dev() -> torch.device:
    """The device the kernels run on here: CUDA, or the CPU under Triton's interpreter."""
    return triton_device("linformer.linformer_triton", "_project_kernel")


def randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return error_metrics(out.cpu(), ref.cpu())["rel_err"]


# Shapes: (B, H, n, k, D). n = 500 and k = 40 are not multiples of the tiles (masked tails); the
# interpreter's tiles (32 rows, 32 columns, chunks of 128) give several n-splits and key tiles.
SHAPES = [(1, 2, 512, 64, 64), (2, 3, 500, 40, 32), (1, 2, 256, 64, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("proj", ["shared", "same", "per_head"])
def test_project_kv_matches_matmul(dev, dtype, shape, proj):
    from attnbench.methods.linformer.linformer_triton import project_kv

    b, h, n, k_, d = shape
    x1, x2 = randn(b, h, n, d, seed=1), randn(b, h, n, d, seed=2)
    lead = (h,) if proj == "per_head" else ()
    E = randn(*lead, k_, n, seed=3, scale=k_**-0.5)
    F = E if proj == "same" else randn(*lead, k_, n, seed=4, scale=k_**-0.5)
    cast = [t.to(dev, dtype) for t in (x1, x2, E, F)]
    if proj == "same":
        cast[3] = cast[2]  # E is F: the kernel loads each tile once
    kp, vp = project_kv(cast[0], cast[1], cast[2], cast[3])
    assert kp.dtype == vp.dtype == dtype and kp.shape == vp.shape == (b, h, k_, d)
    ref_E = E if proj == "per_head" else E[None, None]
    ref_F = F if proj == "per_head" else F[None, None]
    # the reference sees the same rounded inputs, in float64
    x1r, x2r = (t.to(dtype).double() for t in (x1, x2))
    assert rel(kp, ref_E.to(dtype).double() @ x1r) < TOL[dtype]
    assert rel(vp, ref_F.to(dtype).double() @ x2r) < TOL[dtype]


# the one-tile kernel (rows <= FEW_KEYS_MAX; PROGRAMS=2 makes each program walk several query tiles)
# and the online-softmax kernel (more rows, or a config naming BLOCK_KV)
ONE_TILE = dict(BLOCK_M=16, STAGES=1, PROGRAMS=2)
ONLINE = dict(BLOCK_M=32, BLOCK_KV=32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_q,rows,d", [(512, 64, 64), (500, 40, 32), (96, 256, 16), (50, 1, 16),
                                        (64, 300, 16)])
@pytest.mark.parametrize("config", [None, ONE_TILE, ONLINE], ids=["default", "one_tile", "online"])
def test_attention_matches_sdpa(dev, dtype, n_q, rows, d, config):
    from attnbench.methods.linformer.attention_triton import FEW_KEYS_MAX, attention

    if config is ONE_TILE and rows > FEW_KEYS_MAX:
        pytest.skip("more rows than the one-tile kernel takes")
    q = randn(2, 3, n_q, d, seed=5).to(dtype)
    kp, vp = randn(2, 3, rows, d, seed=6).to(dtype), randn(2, 3, rows, d, seed=7).to(dtype)
    out = attention(q.to(dev), kp.to(dev), vp.to(dev), config=config)
    assert out.dtype == dtype and out.shape == q.shape
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), kp.double(), vp.double())
    assert rel(out, ref) < TOL[dtype]


def test_attention_writes_in_the_layout_of_q(dev):
    """q stored (B, N, H, D), as a layer leaves it: the output has the same strides (no copy after)."""
    from attnbench.methods.linformer.attention_triton import attention

    q = randn(2, 100, 3, 32, seed=11).to(dev).transpose(1, 2)  # (B, H, N, D) view
    kp, vp = randn(2, 3, 48, 32, seed=12).to(dev), randn(2, 3, 48, 32, seed=13).to(dev)
    out = attention(q, kp, vp, config=ONE_TILE)
    assert out.stride() == q.stride()
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), kp.double(), vp.double())
    assert rel(out, ref) < TOL[torch.float32]


def test_attention_takes_fp32_projections_and_a_scale(dev):
    from attnbench.methods.linformer.attention_triton import attention

    q = randn(1, 2, 64, 32, seed=8).to(torch.float16)
    kp, vp = randn(1, 2, 32, 32, seed=9).float(), randn(1, 2, 32, 32, seed=10).float()
    out = attention(q.to(dev), kp.to(dev), vp.to(dev), scale=0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.double(), kp.half().double(), vp.half().double(), scale=0.5)
    assert out.dtype == torch.float16 and rel(out, ref) < TOL[torch.float16]


def build(n: int, dev, dtype, kernel: str, heads: int = 2, head_dim: int = 64, **params):
    ctx = BuildContext(n=n, heads=heads, head_dim=head_dim, dtype=dtype, device=dev, seed=11)
    return get_method("linformer").build(LinformerParams(kernel=kernel, **params), ctx)


def qkv(n: int, dev, dtype, heads: int = 2, head_dim: int = 64, seed: int = 12):
    return tuple(randn(2, heads, n, head_dim, seed=seed + i).to(dev, dtype) for i in range(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sharing", ["none", "headwise", "kv", "layerwise"])
@pytest.mark.parametrize("projection", ["linear", "random"])
def test_module_triton_matches_torch(dev, dtype, sharing, projection):
    n = 512
    fast = build(n, dev, dtype, "triton", k=64, sharing=sharing, projection=projection)
    ref = build(n, dev, dtype, "torch", k=64, sharing=sharing, projection=projection)
    q, k, v = qkv(n, dev, dtype)
    with torch.no_grad():
        out, want = fast(q, k, v), ref(q, k, v)
    assert fast.stats()["kernel"] == "triton" and "kernel_fallback" not in fast.stats()
    assert ref.stats()["kernel"] == "torch"
    assert rel(out, want) < TOL[dtype]


@pytest.mark.parametrize("batch", [1, 2])  # batch 1: one plain matrix product per projection
@pytest.mark.parametrize("sharing", ["none", "headwise", "kv"])
def test_module_triton_with_heads_side_by_side(dev, sharing, batch):
    """q, k, v stored (B, N, H, D): shared E/F project through one cuBLAS product over (N, H·D), per-head
    ones through the split-K kernel; either way the output equals the torch path's, in q's order."""
    n = 256
    fast = build(n, dev, torch.float32, "triton", heads=4, head_dim=32, k=48, sharing=sharing)
    ref = build(n, dev, torch.float32, "torch", heads=4, head_dim=32, k=48, sharing=sharing)
    packed = randn(batch, n, 3, 4, 32, seed=21).to(dev, torch.float32)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, D) views
    with torch.no_grad():
        out, want = fast(q, k, v), ref(q, k, v)
    assert fast.stats()["kernel"] == "triton"
    assert out.transpose(1, 2).is_contiguous()  # (B, N, H, D) order, as q: no copy before the layer's
    # output projection
    assert rel(out, want.double()) < TOL[torch.float32]


def test_module_short_input_slices_the_projection(dev):
    """m < n: the kernels read E[:, :m], a strided view, as the torch path does."""
    fast = build(512, dev, torch.float32, "triton", k=32)
    ref = build(512, dev, torch.float32, "torch", k=32)
    q, k, v = qkv(200, dev, torch.float32)
    with torch.no_grad():
        assert rel(fast(q, k, v), ref(q, k, v)) < 1e-5
    assert fast.stats()["kernel"] == "triton"


def test_unsupported_head_dim_falls_back_to_torch(dev):
    fast = build(256, dev, torch.float32, "triton", head_dim=48, k=32)
    ref = build(256, dev, torch.float32, "torch", head_dim=48, k=32)
    q, k, v = qkv(256, dev, torch.float32, head_dim=48)
    with torch.no_grad():
        assert torch.equal(fast(q, k, v), ref(q, k, v))
    stats = fast.stats()
    assert stats["kernel"] == "torch" and "head_dim=48" in stats["kernel_fallback"]


def test_gradients_fall_back_to_torch(dev):
    fast = build(256, dev, torch.float32, "triton", k=32)
    ref = build(256, dev, torch.float32, "torch", k=32)
    q, k, v = (t.requires_grad_() for t in qkv(256, dev, torch.float32))
    out = fast(q, k, v)
    assert fast.stats()["kernel"] == "torch"
    assert "forward-only" in fast.stats()["kernel_fallback"]
    assert torch.equal(out, ref(q, k, v))
    out.square().sum().backward()
    assert fast.E.grad is not None and q.grad is not None
    with torch.no_grad():  # the same module takes the kernels again once no gradient is needed
        fast(q, k, v)
    assert fast.stats()["kernel"] == "triton"


def test_frozen_projection_with_plain_inputs_needs_no_gradient(dev):
    """Grad mode on but nothing requires grad (random E, F are frozen): the kernels still run."""
    m = build(256, dev, torch.float32, "triton", k=32, projection="random")
    m(*qkv(256, dev, torch.float32))
    assert m.stats()["kernel"] == "triton"


# Kernel selection (no kernel runs)

def test_auto_is_torch_on_cpu():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for projection in ("linear", "random", "mean_pool", "conv"):
            m = build(256, torch.device("cpu"), dtype, "auto", k=32, projection=projection)
            assert m.kernel == "torch" and m.stats()["kernel"] == "torch"
    m = build(256, torch.device("cpu"), torch.float16, "auto", k=32)
    with torch.no_grad():
        m(*qkv(256, "cpu", torch.float16))
    assert m.stats()["kernel"] == "torch" and "kernel_fallback" not in m.stats()


@needs_triton
def test_triton_refuses_pooled_projections():
    ctx = BuildContext(n=256, heads=2, head_dim=64)
    spec = get_method("linformer")
    for projection in ("mean_pool", "max_pool", "conv"):
        p = LinformerParams(k=32, projection=projection, kernel="triton")
        assert "matrix projections" in spec.unsupported_reason(p, ctx)
        with pytest.raises(Unsupported, match="matrix projections"):
            LinformerAttention(p, ctx)


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ctx = BuildContext(n=256, heads=2, head_dim=64)
    why = get_method("linformer").unsupported_reason(LinformerParams(k=32, kernel="triton"), ctx)
    assert why is not None and ("CUDA device" in why or "triton not installed" in why)


NO_TRITON = """
import sys
sys.modules["triton"] = None  # from here on, import triton raises ImportError
import torch
from attnbench.kernels import triton_available
import attnbench.methods.linformer.linformer_triton as lt
from attnbench.methods.linformer import LinformerParams
from attnbench.registry import BuildContext, Unsupported, get_method
assert not triton_available() and lt.triton is None
ctx = BuildContext(n=128, heads=2, head_dim=64, dtype=torch.float16)
spec = get_method("linformer")
assert spec.build(LinformerParams(k=16), ctx).kernel == "torch"
try:
    spec.build(LinformerParams(k=16, kernel="triton"), ctx)
except Unsupported as exc:
    assert "triton not installed" in str(exc), exc
else:
    raise AssertionError("kernel='triton' built without triton")
print("ok")
"""


def test_without_triton_the_package_imports_and_auto_is_torch():
    env = cli_env()
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", NO_TRITON], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# CUDA: the shape the roofline target is about

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_triton
def test_cuda_triton_matches_torch_at_65536():
    dev = torch.device("cuda")
    n, heads = 65536, 12
    fast = build(n, dev, torch.float16, "triton", heads=heads, k=256)
    ref = build(n, dev, torch.float16, "auto", heads=heads, k=256)
    assert fast.kernel == "triton" and ref.kernel == "torch"  # auto = torch: measured faster
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, 64, device=dev, dtype=torch.float16, generator=g)
               for _ in range(3))
    with torch.no_grad():
        out, want = fast(q, k, v), ref(q, k, v)
    assert fast.stats()["kernel"] == "triton"
    assert torch.isfinite(out).all()
    assert rel(out.float(), want.float()) < 5e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_fwd_bwd_runs_torch_and_fwd_runs_triton(dtype):
    dev = torch.device("cuda")
    m = build(4096, dev, dtype, "triton", heads=4, k=128)
    q, k, v = (t.requires_grad_() for t in qkv(4096, dev, dtype, heads=4))
    m(q, k, v).float().square().sum().backward()
    assert m.stats()["kernel"] == "torch" and m.E.grad is not None
    with torch.no_grad():
        out = m(q, k, v)
    assert m.stats()["kernel"] == "triton" and torch.isfinite(out).all()


def test_per_head_projection_after_a_shared_one_of_the_same_shape(dev):
    """The autotuner caches a config per shape; one tuned for a shared E (heads side by side) must not
    serve per-head E of the same shape (found on an H100: rel_err 0.99 before the head strides were
    part of the key)."""
    from attnbench.methods.linformer.linformer_triton import project_kv

    b, h, n, k_, d = 1, 2, 256, 64, 16
    x1, x2 = (randn(b, h, n, d, seed=s).to(dev, torch.float16) for s in (20, 21))
    shared = randn(k_, n, seed=22, scale=k_**-0.5)
    per_head = randn(h, k_, n, seed=23, scale=k_**-0.5)
    for E in (shared, per_head, shared):
        Ed = E.to(dev, torch.float16)
        kp, vp = project_kv(x1, x2, Ed, Ed)
        ref = (E if E.dim() == 3 else E[None, None]).to(torch.float16).double()
        assert rel(kp, ref @ x1.double().cpu()) < TOL[torch.float16]
        assert rel(vp, ref @ x2.double().cpu()) < TOL[torch.float16]
