"""Linformer: exact limits, sharing counts, gradients, causality, short inputs, error against k."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from attnbench.methods.full import NaiveAttention
from attnbench.methods.linformer import LinformerAttention, LinformerParams, projection_matrices
from attnbench.reference import error_metrics, is_causal, reference_attention, softmax_attention
from attnbench.registry import BuildContext, SharedScope, Unsupported, get_method

B, H, D = 2, 3, 16


def qkv(n: int, seed: int = 0, scale: float = 1.0, heads: int = H, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, heads, n, D, generator=g) for _ in range(3))
    return (q * scale).to(dtype), (k * scale).to(dtype), v.to(dtype)


def direct(n: int, **params) -> LinformerAttention:
    """Built without the registry's k < n constraint, for the k = n identity limits."""
    return LinformerAttention(LinformerParams(**params), BuildContext(n=n, heads=H, head_dim=D))


def rel_err(out, q, k, v) -> float:
    return error_metrics(out, reference_attention(q, k, v))["rel_err"]


# Exact limiting cases

@pytest.mark.parametrize("sharing", ["none", "headwise", "kv", "layerwise"])
def test_linear_identity_projection_is_exact(sharing):
    n = 64
    m = direct(n, k=n, projection="linear", sharing=sharing)
    with torch.no_grad():
        for proj in {id(m.E): m.E, id(m.F): m.F}.values():
            proj.copy_(torch.eye(n).expand_as(proj))
    q, k, v = qkv(n)
    assert rel_err(m(q, k, v), q, k, v) < 1e-5


@pytest.mark.parametrize("projection", ["mean_pool", "max_pool", "conv"])
def test_window_one_projection_is_exact(projection):
    n = 96
    m = direct(n, k=n, projection=projection)
    if projection == "conv":
        with torch.no_grad():
            m.E.fill_(1.0)  # the identity kernel, stated rather than relying on the mean-pool init
            m.F.fill_(1.0)
    q, k, v = qkv(n, seed=1)
    assert rel_err(m(q, k, v), q, k, v) < 1e-5


def test_linear_projection_is_not_exact_by_accident():
    n = 64
    q, k, v = qkv(n)
    assert rel_err(direct(n, k=n, projection="linear")(q, k, v), q, k, v) > 0.1


def test_conv_equals_linear_with_block_diagonal_projection():
    """The tied depthwise conv is the linear method with E = I_k ⊗ cᵀ, per head."""
    n, k_ = 64, 16
    w = n // k_
    conv = direct(n, k=k_, projection="conv", sharing="none")
    lin = direct(n, k=k_, projection="linear", sharing="none")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for c, e in ((conv.E, lin.E), (conv.F, lin.F)):
            c.copy_(torch.randn(c.shape, generator=g))
            e.copy_(torch.stack([torch.kron(torch.eye(k_), c[h][None, :]) for h in range(H)]))
    q, k, v = qkv(n, seed=2)
    assert error_metrics(conv(q, k, v), lin(q, k, v))["rel_err"] < 1e-5


def test_pooling_matches_windowed_reference():
    n, k_ = 64, 8
    q, k, v = qkv(n, seed=3)
    for projection, reduce in (("mean_pool", torch.mean), ("max_pool", torch.amax)):
        m = direct(n, k=k_, projection=projection)
        kp = reduce(k.unflatten(-2, (k_, n // k_)), dim=-2)  # (B, H, k, D)
        vp = reduce(v.unflatten(-2, (k_, n // k_)), dim=-2)
        assert error_metrics(m(q, k, v), softmax_attention(q, kp, vp))["rel_err"] < 1e-5


# Sharing through the registry

def build_stack(params: LinformerParams, n=64, heads=12, layers=12) -> list[nn.Module]:
    spec = get_method("linformer")
    scope = SharedScope()
    return [spec.build(params, BuildContext(n=n, heads=heads, head_dim=8, layer=i, num_layers=layers,
                                            scope=scope)) for i in range(layers)]


@pytest.mark.parametrize("projection", ["linear", "random", "conv"])
@pytest.mark.parametrize("sharing,expected", [("none", 288), ("headwise", 24), ("kv", 12),
                                              ("layerwise", 1)])
def test_distinct_projection_counts(projection, sharing, expected):
    mods = build_stack(LinformerParams(k=16, projection=projection, sharing=sharing))
    assert len(projection_matrices(*mods)) == expected
    assert sum(m.stats()["proj_matrices"] for m in mods) == {"layerwise": 12}.get(sharing, expected)


def test_sharing_uses_the_same_parameter_objects():
    none = build_stack(LinformerParams(k=16, sharing="none"))
    head = build_stack(LinformerParams(k=16, sharing="headwise"))
    kv = build_stack(LinformerParams(k=16, sharing="kv"))
    lay = build_stack(LinformerParams(k=16, sharing="layerwise"))
    assert none[0].E.shape == (12, 16, 64) and head[0].E.shape == (16, 64)
    assert head[0].E is not head[0].F and not torch.equal(head[0].E, head[0].F)
    assert not torch.equal(head[0].E, head[1].E)  # per-layer matrices differ, seeded by layer
    assert all(m.E is m.F for m in kv) and kv[0].E is not kv[1].E
    assert all(m.E is lay[0].E and m.F is lay[0].E for m in lay)
    assert len({m.E.untyped_storage().data_ptr() for m in lay}) == 1
    model = nn.ModuleList(lay)
    assert len(list(model.parameters())) == 1  # PyTorch dedups the shared Parameter
    model.to(torch.float64)  # conversion must not split the shared matrix into copies
    assert all(m.E is lay[0].E and m.E.dtype == torch.float64 for m in lay)
    assert len(projection_matrices(model)) == 1


def test_pooling_has_no_projection_parameters():
    mods = build_stack(LinformerParams(k=16, projection="mean_pool", sharing="none"))
    assert projection_matrices(*mods) == [] and list(nn.ModuleList(mods).parameters()) == []


def test_projection_is_reproducible_from_the_seed():
    ctx = BuildContext(n=64, heads=H, head_dim=D, seed=7)
    a = LinformerAttention(LinformerParams(k=16, projection="random"), ctx)
    b = LinformerAttention(LinformerParams(k=16, projection="random"), ctx)
    c = LinformerAttention(LinformerParams(k=16, projection="random"), dataclasses.replace(ctx, seed=8))
    assert torch.equal(a.E, b.E) and not torch.equal(a.E, c.E)
    assert abs(float(a.E.var()) - 1 / 16) < 0.01  # entries N(0, 1/k)


# k schedule and constraints

def test_k_schedule_sets_each_layer():
    schedule = (32, 32, 16, 16, 8, 8)
    mods = build_stack(LinformerParams(k_schedule=schedule, projection="linear"), layers=6)
    assert [m.k for m in mods] == list(schedule)
    assert [m.E.shape[-2] for m in mods] == list(schedule)
    q, k, v = qkv(64, heads=12)
    assert all(m(q, k, v).shape == q.shape for m in mods)


def test_k_schedule_errors():
    spec = get_method("linformer")
    ctx = BuildContext(n=64, heads=2, head_dim=8, layer=0, num_layers=4)
    wrong_len = LinformerParams(k_schedule=(16, 8))
    assert "num_layers=4" in spec.unsupported_reason(wrong_len, ctx)
    with pytest.raises(Unsupported, match="k_schedule has 2 entries"):
        spec.build(wrong_len, ctx)
    mixed = LinformerParams(k_schedule=(16, 16, 8, 8), sharing="layerwise")
    with pytest.raises(Unsupported, match="layerwise"):
        spec.build(mixed, ctx)
    uniform = LinformerParams(k_schedule=(16,) * 4, sharing="layerwise")
    assert spec.unsupported_reason(uniform, ctx) is None


def test_constraints_name_the_numbers():
    spec = get_method("linformer")
    ctx = BuildContext(n=64, heads=2, head_dim=8)
    why = spec.unsupported_reason(LinformerParams(k=64), ctx)
    assert "k=64" in why and "n=64" in why
    assert "k=96" in spec.unsupported_reason(LinformerParams(k=96), ctx)
    why = spec.unsupported_reason(LinformerParams(k=24, projection="mean_pool"), ctx)
    assert "n=64" in why and "k=24" in why
    assert spec.unsupported_reason(LinformerParams(k=24, projection="linear"), ctx) is None
    assert "causal" in spec.unsupported_reason(LinformerParams(k=16), dataclasses.replace(ctx, causal=True))
    with pytest.raises(Unsupported, match="k=64"):
        spec.build(LinformerParams(k=64), ctx)
    assert spec.budget == "k" and spec.family == "low_rank" and not spec.causal


# Gradients

@pytest.mark.parametrize("projection,freeze,trained", [
    ("linear", False, True), ("linear", True, False), ("conv", False, True), ("conv", True, False),
    ("random", False, False), ("random", True, False)])
@pytest.mark.parametrize("sharing", ["none", "headwise"])
def test_gradients_reach_learned_projections_only(projection, freeze, trained, sharing):
    m = direct(64, k=16, projection=projection, freeze=freeze, sharing=sharing)
    q, k, v = (t.requires_grad_() for t in qkv(64))
    m(q, k, v).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))
    for proj in (m.E, m.F):
        assert proj.requires_grad is trained
        if trained:
            assert proj.grad is not None and proj.grad.abs().sum() > 0
        else:
            assert proj.grad is None


@pytest.mark.parametrize("projection", ["mean_pool", "max_pool"])
def test_pooling_backward(projection):
    m = direct(64, k=16, projection=projection)
    q, k, v = (t.requires_grad_() for t in qkv(64))
    m(q, k, v).sum().backward()
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (q, k, v))


# Causality

def test_linformer_is_not_causal_even_when_flagged():
    n = 64
    q, k, v = qkv(n, seed=4)
    forced = LinformerAttention(LinformerParams(k=16, projection="random"),
                                BuildContext(n=n, heads=H, head_dim=D), causal=True)
    assert forced.causal
    assert not is_causal(forced, q, k, v)
    assert is_causal(NaiveAttention(causal=True), q, k, v)


# Shorter and longer inputs

def test_shorter_input_slices_the_projection():
    n, short = 64, 40
    m = direct(n, k=16, projection="linear", sharing="none")
    q, k, v = qkv(short, seed=5)
    kp = m.E[:, :, :short] @ k  # (B, H, k, D)
    vp = m.F[:, :, :short] @ v
    assert error_metrics(m(q, k, v), softmax_attention(q, kp, vp))["rel_err"] < 1e-5


def test_shorter_input_with_pooling_keeps_the_window():
    n, short, k_ = 64, 42, 16  # window 4: ten full windows and one of two positions
    m = direct(n, k=k_, projection="mean_pool")
    q, k, v = qkv(short, seed=6)
    kp = torch.cat([k[..., :40, :].unflatten(-2, (10, 4)).mean(-2), k[..., 40:, :].mean(-2, True)], -2)
    vp = torch.cat([v[..., :40, :].unflatten(-2, (10, 4)).mean(-2), v[..., 40:, :].mean(-2, True)], -2)
    assert error_metrics(m(q, k, v), softmax_attention(q, kp, vp))["rel_err"] < 1e-5
    identity = direct(n, k=n, projection="max_pool")
    assert rel_err(identity(q, k, v), q, k, v) < 1e-5


def test_longer_input_raises():
    m = direct(64, k=16)
    q, k, v = qkv(80)
    with pytest.raises(ValueError, match="at most n=64"):
        m(q, k, v)


# Approximation error against the budget

@pytest.mark.parametrize("projection", ["random", "mean_pool"])
def test_error_falls_as_k_grows(projection):
    # Logits scaled down to keep attention smooth: sharp attention is dominated by a few keys, and any
    # projection that mixes positions blurs them about equally for every k < n, which hides the trend
    # under seed noise; smooth attention is the low-rank regime the paper's argument is about.
    n, scale, budgets, seeds = 256, 0.3, (8, 32, 128), range(4)
    mean_err = []
    for k_ in budgets:
        errs = []
        for seed in seeds:
            q, k, v = qkv(n, seed=100 + seed, scale=scale)
            ctx = BuildContext(n=n, heads=H, head_dim=D, seed=seed)
            m = get_method("linformer").build(LinformerParams(k=k_, projection=projection), ctx)
            with torch.no_grad():
                errs.append(rel_err(m(q, k, v), q, k, v))
        mean_err.append(sum(errs) / len(errs))
    assert mean_err[0] > mean_err[1] > mean_err[2]
    assert mean_err[2] < 0.8 * mean_err[0]


# Dtypes and hooks

@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("projection", ["linear", "mean_pool", "conv"])
def test_low_precision_matches_fp32(dtype, tol, projection):
    n = 64
    ctx = BuildContext(n=n, heads=H, head_dim=D)
    p = LinformerParams(k=16, projection=projection)
    m32 = get_method("linformer").build(p, ctx)
    mlow = get_method("linformer").build(p, dataclasses.replace(ctx, dtype=dtype))
    q, k, v = qkv(n, seed=7)
    out = mlow(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and out.shape == q.shape
    assert error_metrics(out, m32(q, k, v))["rel_err"] < tol


def test_flops_grow_linearly_in_n():
    def flops(n):
        m = direct(n, k=32, projection="linear")
        return m.flops(*qkv(n))

    assert flops(512) == pytest.approx(2 * flops(256))
    q, k, v = qkv(256)
    assert direct(256, k=32, projection="mean_pool").flops(q, k, v) < flops(256)



@pytest.mark.parametrize("projection", ["linear", "mean_pool"])
def test_extra_memory_grows_linearly_in_n(projection):
    from attnbench.measure import measure_memory

    def extra(n, module):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 4, n, 32, generator=g) for _ in range(3))
        with torch.no_grad():
            return measure_memory(lambda: module(q, k, v), "cpu")["extra_mem_mib"]

    def linformer(n):
        return LinformerAttention(LinformerParams(k=32, projection=projection),
                                  BuildContext(n=n, heads=4, head_dim=32))

    lin_growth = extra(2048, linformer(2048)) / extra(512, linformer(512))
    naive_growth = extra(2048, NaiveAttention(False)) / extra(512, NaiveAttention(False))
    assert naive_growth > 12  # the n×n scores: 16× for 4× n, so the measurement sees growth
    assert lin_growth < 6  # (n, k) scores and (k, D) projections: 4× for 4× n



@pytest.mark.parametrize("projection,sharing", [("linear", "headwise"), ("linear", "none"),
                                                ("conv", "headwise"), ("conv", "none")])
def test_projection_copies_neither_inputs_nor_projection(projection, sharing):
    """The projection's forward allocates about its (B, H, k, D) output, not a copy of K or of E."""
    from attnbench.measure import measure_memory

    b, h, n, k_, d = 4, 8, 2048, 64, 32
    m = LinformerAttention(LinformerParams(k=k_, projection=projection, sharing=sharing),
                           BuildContext(n=n, heads=h, head_dim=d))
    x = torch.randn(b, h, n, d)
    with torch.no_grad():
        extra = measure_memory(lambda: m._project(x, m.E), "cpu")["extra_mem_mib"]
    out_mib = b * h * k_ * d * 4 / 2**20  # 0.25 MiB; a copy of x is 8 MiB, of E per batch 16 MiB
    assert extra <= 3 * out_mib


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("projection", ["linear", "random", "mean_pool", "max_pool", "conv"])
def test_cuda_forward_backward(dtype, projection):
    dev = torch.device("cuda")
    n = 512
    ctx = BuildContext(n=n, heads=4, head_dim=64, dtype=dtype, device=dev)
    m = get_method("linformer").build(LinformerParams(k=64, projection=projection), ctx)
    m_cpu = get_method("linformer").build(LinformerParams(k=64, projection=projection),
                                          BuildContext(n=n, heads=4, head_dim=64))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 64, generator=g) for _ in range(3))
    qd, kd, vd = (t.to(dev, dtype).requires_grad_() for t in (q, k, v))
    out = m(qd, kd, vd)
    out.float().square().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in (qd, kd, vd))
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert error_metrics(out.cpu(), m_cpu(q, k, v))["rel_err"] < tol  # same seed, same projection


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_identity_limit_and_layerwise_sharing():
    dev = torch.device("cuda")
    n = 256
    m = LinformerAttention(LinformerParams(k=n, projection="mean_pool"),
                           BuildContext(n=n, heads=4, head_dim=64, device=dev))
    q, k, v = (torch.randn(2, 4, n, 64, device=dev) for _ in range(3))
    assert rel_err(m(q, k, v), q, k, v) < 1e-5
    mods = nn.ModuleList(build_stack(LinformerParams(k=16, sharing="layerwise"))).to(dev)
    assert all(layer.E is mods[0].E and layer.E.is_cuda for layer in mods)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sharing", ["headwise", "none"])
def test_cuda_projection_copies_neither_inputs_nor_projection(sharing):
    from attnbench.measure import measure_memory

    dev = torch.device("cuda")
    b, h, n, k_, d = 8, 12, 4096, 256, 64
    m = LinformerAttention(LinformerParams(k=k_, sharing=sharing),
                           BuildContext(n=n, heads=h, head_dim=d, dtype=torch.float16, device=dev))
    x = torch.randn(b, h, n, d, device=dev, dtype=torch.float16)
    with torch.no_grad():
        m._project(x, m.E)  # cuBLAS workspace and handles come from the first call
        extra = measure_memory(lambda: m._project(x, m.E), dev)["extra_mem_mib"]
    x_mib = x.numel() * 2 / 2**20  # 48 MiB; the output is 3 MiB, a per-batch copy of E 192 MiB
    assert extra < 0.25 * x_mib


def _aten_ops(fn) -> list[str]:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


@pytest.mark.parametrize("layout", ["merged", "heads_major"])
@pytest.mark.parametrize("batch", [1, 3])
def test_trainable_projection_copies_nothing(layout, batch):
    """A trainable E (requires_grad, even under no_grad) makes ``torch.matmul`` fold the batch of a
    broadcast product into one mm that copies the input and the result (55% of the layer's GPU time on
    an H100 at n = 1024, B = 8). The projection must run as products alone, for K stored as a layer
    leaves it ((B, N, H, D) memory) and as (B, H, N, D)."""
    ctx = BuildContext(n=128, heads=4, head_dim=16, seed=0)
    mod = get_method("linformer").build(LinformerParams(k=32, sharing="headwise"), ctx)
    assert mod.E.requires_grad
    packed = torch.randn(batch, 128, 3, 4, 16)
    k = packed.permute(2, 0, 3, 1, 4)[1]  # (B, H, N, D) view of (B, N, H, D) memory
    if layout == "heads_major":
        k = k.contiguous()
    with torch.no_grad():
        ops = _aten_ops(lambda: mod._project(k, mod.E))
        want = torch.stack([mod.E @ kb for kb in k.unbind(0)])  # per batch: (k, N) @ (H, N, D)
        got = mod._project(k, mod.E)
    assert not {"aten::copy_", "aten::clone", "aten::contiguous"} & set(ops), ops
    assert any(op in ("aten::mm", "aten::bmm") for op in ops)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    # the folding is real: the plain broadcast product of the same operands does copy
    flat = k.transpose(1, 2).reshape(batch, 128, 64) if layout == "merged" else None
    if flat is not None and batch > 1:
        with torch.no_grad():
            assert "aten::copy_" in _aten_ops(lambda: mod.E[None] @ flat)


@pytest.mark.parametrize("sharing", ["none", "headwise", "kv", "layerwise"])
@pytest.mark.parametrize("m", [128, 100])
def test_heads_stored_side_by_side_project_in_one_product_with_the_same_result(sharing, m):
    """q, k, v as (B, N, H, D) memory (a layer's projection): a shared E multiplies all heads at once
    through a (B, m, H·D) view; values and gradients equal the per-head product's."""
    from attnbench.methods.linformer.layout import merged_heads

    ctx = BuildContext(n=128, heads=4, head_dim=16, seed=0, dtype=torch.float64)
    mod = get_method("linformer").build(LinformerParams(k=32, sharing=sharing), ctx)
    g = torch.Generator().manual_seed(5)
    packed = torch.randn(2, m, 3, 4, 16, generator=g, dtype=torch.float64, requires_grad=True)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, m, D) views
    flat = merged_heads(k)
    assert flat is not None and flat.data_ptr() == k.data_ptr() and flat.shape == (2, m, 64)
    assert merged_heads(k.contiguous()) is None
    out = mod(q, k, v)
    grad_view, = torch.autograd.grad(out.square().sum(), packed)
    p2 = packed.detach().clone().requires_grad_()
    q2, k2, v2 = (t.contiguous() for t in p2.permute(2, 0, 3, 1, 4).unbind(0))
    want = mod(q2, k2, v2)
    grad_copy, = torch.autograd.grad(want.square().sum(), p2)
    assert torch.allclose(out, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(grad_view, grad_copy, rtol=1e-10, atol=1e-12)
