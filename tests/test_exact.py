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


def build_xformers_for_test():
    """The adapter's factory called directly: the registry would refuse CPU and a missing package."""
    from attnbench.methods.full import build_xformers
    from attnbench.registry import NoParams

    return build_xformers(NoParams(), BuildContext(n=40, heads=3, head_dim=8))


def _fake_xformers(monkeypatch, *, dispatch_works: bool, working: set[str]):
    """A stand-in for xformers.ops with the parts the adapter touches: ops that take inputs or say
    why not, and memory_efficient_attention that insists on (B, N, H, D) and an (FwOp, BwOp) pair."""
    import sys
    import types

    import torch.nn.functional as F

    fmha = types.ModuleType("xformers.ops.fmha")
    calls = []

    class Inputs:
        def __init__(self, query, key, value, attn_bias=None):
            self.query = query

    def make(name, with_bw):
        fw = type("FwOp", (), {"NAME": name + "F",
                               "not_supported_reasons": staticmethod(
                                   lambda inp: [] if name in working else [f"{name}: not built"])})
        mod = types.SimpleNamespace(FwOp=fw)
        if with_bw:
            mod.BwOp = type("BwOp", (), {})
        return mod

    fmha.Inputs = Inputs
    fmha.cutlass = make("cutlass", True)
    fmha.triton_splitk = make("triton_splitK", False)

    def mea(q, k, v, attn_bias=None, op=None):
        calls.append(op)
        if op is None:
            if not dispatch_works:
                raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")
        else:
            name = op[0].NAME[:-1]  # a bare class here would fail: "type 'FwOp' is not subscriptable"
            if name not in working:
                raise NotImplementedError(f"{name} unsupported")
        b, n, h, d = q.shape  # (B, N, H, D): attention runs over dim 1
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = mea
    ops.LowerTriangularMask = lambda: "causal"
    ops.fmha = fmha
    dispatch = types.ModuleType("xformers.ops.fmha.dispatch")
    dispatch._dispatch_fw = lambda inp, grad: fmha.cutlass.FwOp
    pkg = types.ModuleType("xformers")
    pkg.ops = ops
    for name, mod in (("xformers", pkg), ("xformers.ops", ops), ("xformers.ops.fmha", fmha),
                      ("xformers.ops.fmha.dispatch", dispatch)):
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


@pytest.mark.parametrize("dispatch_works,working,want", [
    (True, {"cutlass"}, "cutlassF"),           # dispatch runs: the op it picks is named
    (False, {"triton_splitK"}, "triton_splitKF"),  # a forward-only op, passed as (FwOp, None)
])
def test_xformers_adapter_picks_a_working_op_and_names_it(monkeypatch, dispatch_works, working, want):
    _fake_xformers(monkeypatch, dispatch_works=dispatch_works, working=working)
    m = build_xformers_for_test()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=g) for _ in range(3))
    assert m.stats()["xformers_op"] == want
    torch.testing.assert_close(m(q, k, v), reference_attention(q, k, v).float(), atol=1e-5, rtol=1e-5)


def test_xformers_adapter_without_a_working_op_quotes_xformers(monkeypatch):
    _fake_xformers(monkeypatch, dispatch_works=False, working=set())
    with pytest.raises(Unsupported) as exc:
        build_xformers_for_test()
    msg = str(exc.value)
    assert "No operator found" in msg and "cutlass: not built" in msg and "triton_splitK: not built" in msg
