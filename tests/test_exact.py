"""Exact methods against a float64 reference; every registered method for shape, dtype, finiteness."""
import pytest
import torch

from attnbench.dtypes import DTYPES
from attnbench.reference import error_metrics, is_causal, reference_attention
from attnbench.registry import REGISTRY, BuildContext, Unsupported

EXACT = [s.name for s in REGISTRY.specs() if s.exact]
ALL = REGISTRY.names()


def build(name, n, heads=2, head_dim=16, causal=False, dtype=torch.float32, **params):
    spec = REGISTRY.get(name)
    ctx = BuildContext(n=n, heads=heads, head_dim=head_dim, causal=causal, dtype=dtype)
    why = spec.unsupported_reason(spec.params(**params), ctx)
    if why:
        pytest.skip(why)
    return spec.build(spec.params(**params), ctx)


def qkv(n, heads=2, head_dim=16, batch=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, head_dim, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,params", [("naive", {}), ("sdpa", {"backend": "auto"}),
                                         ("sdpa", {"backend": "math"}), ("xformers", {})])
def test_exact_methods_match_float64_reference(name, params, causal):
    q, k, v = qkv(200)
    m = build(name, 200, causal=causal, **params)
    err = error_metrics(m(q, k, v), reference_attention(q, k, v, causal=causal))
    assert err["rel_err"] < 1e-5 and err["cosine"] > 1 - 1e-9


def test_reference_is_chunk_independent_and_agrees_with_naive_float64():
    q, k, v = [t.double() for t in qkv(130)]
    a = reference_attention(q, k, v, causal=True, chunk=7)
    b = reference_attention(q, k, v, causal=True, chunk=1000)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    naive = build("naive", 130, causal=True, dtype=torch.float64)
    torch.testing.assert_close(naive(q, k, v), a, rtol=1e-10, atol=1e-10)


def test_exact_causal_passes_causality_check_and_bidirectional_fails():
    q, k, v = qkv(64)
    assert is_causal(build("sdpa", 64, causal=True), q, k, v)
    assert not is_causal(build("sdpa", 64, causal=False), q, k, v)


def test_sdpa_forced_gpu_backend_is_unsupported_on_cpu_with_reason():
    spec = REGISTRY.get("sdpa")
    with pytest.raises(Unsupported, match="needs CUDA"):
        spec.build(spec.params(backend="flash"), BuildContext(n=8, heads=1, head_dim=8))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ALL)
def test_every_registered_method_keeps_shape_dtype_and_is_finite(name, dtype):
    """Default params at a size every method accepts; a method that declares the case unsupported
    is skipped with its reason (never silently passed)."""
    spec = REGISTRY.get(name)
    n = 512
    q, k, v = qkv(n, heads=2, head_dim=32, batch=1, dtype=DTYPES[dtype])
    ctx = BuildContext(n=n, heads=2, head_dim=32, dtype=DTYPES[dtype])
    p = spec.params()
    if (why := spec.unsupported_reason(p, ctx, dtype_name=dtype, level="core")) is not None:
        pytest.skip(why)
    out = spec.build(p, ctx)(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "math", "flash", "efficient", "cudnn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sdpa_backends_on_gpu(backend, dtype):
    spec = REGISTRY.get("sdpa")
    dev = torch.device("cuda")
    ctx = BuildContext(n=512, heads=4, head_dim=64, dtype=dtype, device=dev, causal=True)
    try:
        m = spec.build(spec.params(backend=backend), ctx)
    except Unsupported as exc:
        assert backend != "auto" and str(exc)
        return
    q, k, v = [t.to(dev) for t in qkv(512, heads=4, head_dim=64, dtype=dtype)]
    err = error_metrics(m(q, k, v), reference_attention(q, k, v, causal=True))
    assert err["rel_err"] < 1e-2
