"""Performer FAVOR+ and linear attention: unbiased kernel, error against m, ORF, positivity,
low-precision stability, chunked causal prefix sums, gradients, redraws, memory."""
from __future__ import annotations

import math

import pytest
import torch

from attnbench.methods.full import NaiveAttention
from attnbench.methods.performer import (LinearAttention, LinearParams, PerformerAttention,
                                         PerformerParams)
from attnbench.methods.performer.favor import favor_bidirectional, favor_constants
from attnbench.methods.performer.features import (draw_omega, favor_features, favor_positive_attention,
                                                  resolve_nb_features)
from attnbench.reference import error_metrics, is_causal, reference_attention
from attnbench.registry import BuildContext, get_method

D = 32


def qkv(n, seed=0, scale=1.0, batch=1, heads=2, d=D, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, d, generator=g) for _ in range(3))
    return (q * scale).to(dtype), (k * scale).to(dtype), v.to(dtype)


def performer(n, causal=False, seed=0, heads=2, d=D, dtype=torch.float32, **params):
    ctx = BuildContext(n=n, heads=heads, head_dim=d, causal=causal, seed=seed, dtype=dtype)
    return get_method("performer").build(PerformerParams(**params), ctx)


def linear(n, causal=False, **params):
    return get_method("linear").build(LinearParams(**params), BuildContext(n=n, heads=2, head_dim=D,
                                                                           causal=causal))


def rel_err(out, q, k, v, causal=False) -> float:
    return error_metrics(out, reference_attention(q, k, v, causal=causal))["rel_err"]


# The random-feature estimate itself

def scaled_pair(d):
    """Two already-scaled vectors of norm 0.6: small enough that 1000 draws pin the mean to ~2%."""
    u = torch.randn(2, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return tuple(0.6 * t / t.norm() for t in u)


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("orthogonal", [True, False])
def test_kernel_estimate_is_unbiased(positive, orthogonal):
    d, m, draws = 16, 16, 1000
    x, y = scaled_pair(d)
    target = math.exp(float(x @ y))  # exp(qᵀk/√d) for q = x·d^(1/4), k = y·d^(1/4)
    gen = torch.Generator().manual_seed(1)
    ws = torch.stack([draw_omega(m, d, orthogonal, gen) for _ in range(draws)])  # (draws, m, d)
    est = (favor_features(x, ws, positive) * favor_features(y, ws, positive)).sum(-1)  # (draws,)
    tol = 4 * float(est.std()) / math.sqrt(draws)  # four standard errors of the mean
    assert tol < 0.05 * target  # enough draws to see a 5% bias
    assert abs(float(est.mean()) - target) < tol


def test_dropping_the_norm_term_is_caught_by_the_unbiasedness_check():
    d, m, draws = 16, 16, 500
    x, y = scaled_pair(d)
    target = math.exp(float(x @ y))
    gen = torch.Generator().manual_seed(1)
    ws = torch.stack([draw_omega(m, d, True, gen) for _ in range(draws)])  # (draws, m, d)
    est = (torch.exp(x @ ws.transpose(-1, -2)) * torch.exp(y @ ws.transpose(-1, -2))).sum(-1) / m
    assert abs(float(est.mean()) - target) > 4 * float(est.std()) / math.sqrt(draws)


def test_orthogonal_draw_has_orthogonal_blocks_and_chi_lengths():
    d, m = 8, 20  # two full blocks and a truncated third
    w = draw_omega(m, d, True, torch.Generator().manual_seed(0))
    assert w.shape == (m, d)
    for start in (0, 8, 16):
        block = w[start:start + d]
        unit = block / block.norm(dim=1, keepdim=True)
        gram = unit @ unit.t()
        assert torch.allclose(gram, torch.eye(len(block), dtype=gram.dtype), atol=1e-10)
    lengths = torch.cat([draw_omega(64, d, True, torch.Generator().manual_seed(s)).norm(dim=1)
                         for s in range(20)])
    assert float((lengths ** 2).mean()) == pytest.approx(d, rel=0.05)  # E‖ω‖² = d for chi_d


def test_auto_nb_features_is_d_ln_d():
    assert resolve_nb_features(0, 64) == 266 and resolve_nb_features(0, 32) == 111
    assert resolve_nb_features(40, 64) == 40
    m = performer(64, d=32)
    assert m.omega.shape == (111, 32) and m.stats()["nb_features_used"] == 111


# Error against exact softmax attention

# With q, k ~ N(0, 1) and head_dim 32, softmax attention is sharp and FAVOR+'s variance (which grows
# with exp(‖q‖²+‖k‖²)) is larger than the signal: the error is worse than uniform attention and barely
# moves with m. Scaling q and k by 0.35..0.5 keeps attention informative and the estimator in range.
@pytest.mark.parametrize("causal", [False, True])
def test_error_falls_as_nb_features_grows(causal):
    n, seeds = 256, 6
    errs = []
    for m in (16, 64, 256):
        errs.append(sum(rel_err(performer(n, causal, seed=s, nb_features=m)(*qkv(n, 100 + s, 0.5)),
                                *qkv(n, 100 + s, 0.5), causal=causal) for s in range(seeds)) / seeds)
    assert errs[1] < 0.8 * errs[0] and errs[2] < 0.8 * errs[1], errs


def test_orthogonal_features_beat_iid_at_equal_m():
    n, m, seeds = 128, 32, 30
    q, k, v = qkv(n, seed=7, scale=0.35, heads=4)  # scaled for the reason given above
    ref = reference_attention(q, k, v)

    def mean_err(orthogonal):
        return sum(error_metrics(performer(n, seed=s, heads=4, nb_features=m,
                                           orthogonal=orthogonal)(q, k, v), ref)["rel_err"]
                   for s in range(seeds)) / seeds

    orth, iid = mean_err(True), mean_err(False)
    assert orth < 0.95 * iid, (orth, iid)


@pytest.mark.parametrize("causal", [False, True])
def test_positive_features_never_give_negative_weights(causal):
    n = 96
    q, k, _ = qkv(n, seed=3, scale=2.0)  # large norms: where trigonometric features go negative
    a = performer(n, causal, nb_features=16).attention_matrix(q.double(), k.double())
    assert (a >= 0).all()
    assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1], dtype=a.dtype))
    trig = performer(n, causal, nb_features=16, positive=False).attention_matrix(q.double(), k.double())
    assert (trig < 0).any()  # the contrast the paper draws; shows the check can fail


# Exact identities of the implementation

@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 16, 48, 500])
def test_forward_equals_implied_attention_matrix(positive, causal, chunk_size):
    n = 100  # 48 does not divide it: the last chunk is padded
    q, k, v = qkv(n, seed=2, scale=0.7)
    ramp = torch.linspace(0.2, 2.5, n)[:, None]  # growing key norms: the running max moves a lot
    q, k, v = q.double(), (k * ramp).double(), v.double()
    m = performer(n, causal, nb_features=24, positive=positive, chunk_size=chunk_size)
    want = m.attention_matrix(q, k) @ v  # (B, H, N, D), the n×n weights materialised
    assert error_metrics(m(q, k, v), want)["rel_err"] < 1e-10
    if positive:  # trigonometric denominators cancel and amplify fp32 rounding; positive ones do not
        assert error_metrics(m(q.float(), k.float(), v.float()), want)["rel_err"] < 1e-5


@pytest.mark.parametrize("d,nb_features", [(32, 24), (64, 266), (48, 100), (5, 7)])
def test_bidirectional_form_equals_the_reference_form(d, nb_features):
    """The matmul-folded form (favor_bidirectional) and the logsumexp form it replaced compute the same
    thing; widths that are not multiples of 8 exercise the padding."""
    n = 300
    q, k, v = (t.double() for t in qkv(n, seed=8, scale=0.8, heads=3, d=d))
    k = k * torch.linspace(0.2, 2.5, n, dtype=torch.float64)[:, None]
    m = performer(n, d=d, heads=3, nb_features=nb_features)
    want = favor_positive_attention(*m.exponents(q, k), v)
    assert error_metrics(favor_bidirectional(q, k, v, favor_constants(m.omega, q.dtype)),
                         want)["rel_err"] < 1e-12
    assert error_metrics(m(q, k, v), want)["rel_err"] < 1e-12


@pytest.mark.parametrize("d", [64, 5])
def test_calls_without_autograd_match_the_concatenating_path_and_keep_no_state(d):
    """Calls without autograd write the key maxima and log denominators into a matrix the module keeps
    (two concatenations fewer); they must give what the concatenating path (taken when gradients are
    needed) gives, for shapes that alternate, and a call on non-finite inputs must not leak into the
    next call through the kept matrix."""
    from attnbench.methods.performer.favor import _work

    n = 96
    m = performer(n, d=d, heads=3, nb_features=40)
    shapes = [qkv(n, seed=s, scale=0.8, batch=b, heads=3, d=d) for s, b in ((1, 1), (2, 2), (3, 1))]
    for q, k, v in shapes:
        with torch.no_grad():
            fast = m(q.double(), k.double(), v.double())
        q2, k2, v2 = (t.double().requires_grad_() for t in (q, k, v))
        slow = m(q2, k2, v2).detach()
        assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-12)
    consts = m.constants(torch.float64)
    assert {(1, 3), (2, 3)} <= set(consts.work)  # one kept matrix per (batch, heads)
    q, k, v = (t.double() for t in shapes[0])
    with torch.no_grad():
        want = m(q, k, v)
        bad = k.clone()
        bad[0, 1, 5, 0] = float("nan")
        assert torch.isnan(m(q, bad, v)).any()
        assert torch.isnan(_work(consts, 1, 3, d)[0]).any()  # the kept rows took the NaN
        again = m(q, k, v)
    assert torch.isfinite(again).all() and torch.equal(again, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bidirectional_low_precision_no_worse_than_the_reference_form(dtype):
    n, d = 1024, 64
    q, k, v = qkv(n, seed=9, scale=0.6, heads=2, d=d)
    m = performer(n, d=d, heads=2, nb_features=256)
    want = favor_positive_attention(*m.exponents(q.double(), k.double()), v.double())
    low = [t.to(dtype) for t in (q, k, v)]
    new = m(*low)
    old = favor_positive_attention(*m.exponents(*low[:2]), low[2])
    assert new.dtype == dtype and torch.isfinite(new).all()
    err_new, err_old = (error_metrics(o, want)["rel_err"] for o in (new, old))
    assert err_new < 1.1 * err_old + 1e-4, (err_new, err_old)


def test_fp16_state_stays_in_range_when_every_key_weighs_one():
    """All keys equal: every key feature is 1, so each state column sums n·v; with n = 32768 and
    |v| = 1000 that is 3·10⁷, far past fp16's 65504, but n·max|v| < 2^30 as the docstring requires."""
    n, d = 32768, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, n, d, generator=g)
    k = torch.randn(1, 1, 1, d, generator=g).expand(1, 1, n, d)
    v = torch.randn(1, 1, n, d, generator=g).clamp(-3, 3) * 333
    m = performer(n, d=d, heads=1, nb_features=32, dtype=torch.float16)
    inputs = [t.half().requires_grad_() for t in (q, k, v)]
    out = m(*inputs)
    assert torch.isfinite(out).all()
    want = v.mean(-2, keepdim=True).expand_as(v)  # equal keys: uniform attention
    assert error_metrics(out, want)["rel_err"] < 1e-2
    grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
    assert all(torch.isfinite(t).all() for t in grads)
    assert error_metrics(grads[2], torch.ones_like(v))["rel_err"] < 1e-2  # uniform: ∂Σ_i out_i/∂v_j = 1


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_bidirectional_low_precision_gradients_close_to_float64(dtype, tol):
    """The state's backward divides by the column sums before its matmuls: through the separate
    steps autograd would scale the gradient by 1/α = 2^14 first and overflow fp16 (it did)."""
    n, d = 1024, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, d, generator=g) * s for s in (0.5, 0.5, 1.0))
    grad_out = torch.randn(2, 4, n, d, generator=g)
    m = performer(n, d=d, heads=4)
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(favor_positive_attention(*m.exponents(*exact[:2]), exact[2]), exact,
                               grad_out.double())
    low = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(m(*low), low, grad_out.to(dtype))
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and error_metrics(a, b)["rel_err"] < tol


@pytest.mark.slow
def test_compile_knob_matches_eager_and_is_declared():
    spec = get_method("performer")
    ctx = BuildContext(n=128, heads=2, head_dim=16, batch=1)
    compiled = spec.build(spec.params(nb_features=32, compile=True), ctx)
    eager = spec.build(spec.params(nb_features=32), ctx)
    stats = compiled.stats()
    assert stats["compiled"] and stats["compile_s"] > 0 and stats["nb_features_used"] == 32
    inputs = [t.requires_grad_() for t in qkv(128, seed=12, d=16)]
    a, b = compiled(*inputs), eager(*inputs)
    assert error_metrics(a, b)["rel_err"] < 1e-5
    for x, y in zip(torch.autograd.grad(a.sum(), inputs), torch.autograd.grad(b.sum(), inputs)):
        assert error_metrics(x, y)["rel_err"] < 1e-5
    causal = BuildContext(n=128, heads=2, head_dim=16, causal=True)
    assert spec.unsupported_reason(spec.params(compile=True), causal) is not None
    assert spec.unsupported_reason(spec.params(compile=True, positive=False), ctx) is not None
    assert spec.unsupported_reason(spec.params(compile=True), ctx) is None


def test_redraw_reaches_the_bidirectional_constants():
    n = 64
    q, k, v = (t.double() for t in qkv(n, seed=10))
    m = performer(n, nb_features=16)
    before = m(q, k, v)
    m.redraw()
    after = m(q, k, v)
    assert not torch.allclose(before, after)
    assert error_metrics(after, m.attention_matrix(q, k) @ v)["rel_err"] < 1e-10


def test_bidirectional_gradients_match_the_reference_form():
    n = 200
    inputs = [t.double().requires_grad_() for t in qkv(n, seed=11, scale=0.8)]
    m = performer(n, nb_features=48)
    grad_out = torch.randn(1, 2, n, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    new = torch.autograd.grad(m(*inputs), inputs, grad_out)
    old = torch.autograd.grad(favor_positive_attention(*m.exponents(*inputs[:2]), inputs[2]), inputs,
                              grad_out)
    for a, b in zip(new, old):
        assert error_metrics(a, b)["rel_err"] < 1e-10


@pytest.mark.parametrize("causal", [False, True])
def test_linear_matches_its_definition(causal):
    n = 90
    q, k, v = qkv(n, seed=4)
    qf, kf = (torch.nn.functional.elu(x.double()) + 1 for x in (q, k))
    scores = qf @ kf.transpose(-1, -2)  # (B, H, N, N)
    if causal:
        scores = scores.tril()
    want = (scores / scores.sum(-1, keepdim=True)) @ v.double()
    assert error_metrics(linear(n, causal, chunk_size=32)(q, k, v), want)["rel_err"] < 1e-5


@pytest.mark.parametrize("name,params", [("performer", {}), ("performer", {"positive": False}),
                                         ("linear", {})])
@pytest.mark.parametrize("chunk_size", [16, 128])
def test_causal_variants_are_causal(name, params, chunk_size):
    n = 100
    q, k, v = qkv(n, seed=5, scale=0.8)
    ctx = BuildContext(n=n, heads=2, head_dim=D, causal=True)
    spec = get_method(name)
    m = spec.build(spec.params(**params, chunk_size=chunk_size), ctx)
    assert is_causal(m, q, k, v)


def test_bidirectional_is_not_causal():
    q, k, v = qkv(64, seed=5)
    assert not is_causal(performer(64), q, k, v) and not is_causal(linear(64), q, k, v)


@pytest.mark.parametrize("name,params", [("performer", {"chunk_size": 4}),
                                         ("performer", {"chunk_size": 4, "positive": False}),
                                         ("linear", {"chunk_size": 4})])
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_finite_differences(name, params, causal):
    spec = get_method(name)
    ctx = BuildContext(n=10, heads=1, head_dim=4, causal=causal, dtype=torch.float64)
    m = spec.build(spec.params(**params), ctx)
    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(1, 1, 10, 4, generator=g, dtype=torch.float64).requires_grad_()
                   for _ in range(3))
    assert torch.autograd.gradcheck(m, inputs, fast_mode=True)


# Low precision

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["performer", "linear"])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_stays_finite_at_n8192(dtype, name, causal):
    """Rows of q and k have norms up to 3√d (three times a standard normal row's): random directions
    with norms uniform in [0, 3√d], plus 64 keys and queries lying on rows of ω (norm ≈ 2.4√d), where
    the unstabilised FAVOR+ exponent ωᵀx − ‖x‖²/2 peaks at ‖ω‖²/2 ≈ d/2 and overflows fp16."""
    n, d = 8192, 32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 1, n, d, generator=g)
    radius = torch.rand(2, 1, 1, n, 1, generator=g) * 3 * math.sqrt(d)
    q, k = (x[i] / x[i].norm(dim=-1, keepdim=True) * radius[i] for i in range(2))
    v = x[2]
    omega = performer(n, d=d, heads=1).omega[:64]  # the ω every default build of this cell draws
    aligned = omega * d ** 0.25  # scaled inputs x·d^(-1/4) = ω
    aligned = aligned * (3 * math.sqrt(d) / aligned.norm(dim=-1, keepdim=True)).clamp(max=1.0)
    q[..., ::128, :], k[..., ::128, :] = aligned, aligned
    assert not torch.isfinite(favor_features((k * d ** -0.25).half(), omega.half())).all()

    spec = get_method(name)
    low = spec.build(spec.params(), BuildContext(n=n, heads=1, head_dim=d, causal=causal, dtype=dtype))
    full = spec.build(spec.params(), BuildContext(n=n, heads=1, head_dim=d, causal=causal))
    out = low(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 0.05 if dtype == torch.float16 else 0.1
    err = error_metrics(out, full(q, k, v))["rel_err"]
    assert err < tol, err  # same ω: only rounding differs


# Training-time redraws and reproducibility

def test_features_are_fixed_by_seed_and_redrawn_only_in_training():
    assert torch.equal(performer(32, seed=3).omega, performer(32, seed=3).omega)
    assert not torch.equal(performer(32, seed=3).omega, performer(32, seed=4).omega)
    q, k, v = qkv(32)
    fixed = performer(32, seed=3)
    first = fixed.omega.clone()
    for _ in range(5):
        fixed(q, k, v)
    assert torch.equal(fixed.omega, first)  # redraw_interval = 0: never
    m = performer(32, seed=3, redraw_interval=2)
    seen = []
    for _ in range(5):
        m(q, k, v)
        seen.append(m.omega.clone())
    assert torch.equal(seen[0], first) and torch.equal(seen[1], first)
    assert not torch.equal(seen[2], first) and torch.equal(seen[2], seen[3])
    assert not torch.equal(seen[4], seen[3])
    m.eval()
    frozen = m.omega.clone()
    for _ in range(4):
        m(q, k, v)
    assert torch.equal(m.omega, frozen)


def test_invalid_knobs_are_declared_unsupported():
    spec = get_method("performer")
    ctx = BuildContext(n=64, heads=1, head_dim=D)
    assert spec.unsupported_reason(PerformerParams(nb_features=-1), ctx) is not None
    assert spec.unsupported_reason(PerformerParams(chunk_size=0), ctx) is not None
    assert spec.unsupported_reason(PerformerParams(), ctx) is None


# Cost

def test_extra_memory_grows_linearly_in_n():
    from attnbench.measure import measure_memory

    def extra(n, module):
        q, k, v = qkv(n, heads=4)
        with torch.no_grad():
            return measure_memory(lambda: module(q, k, v), "cpu")["extra_mem_mib"]

    def growth(make):
        return extra(2048, make(2048)) / extra(512, make(512))

    assert growth(lambda n: NaiveAttention(True)) > 12  # n×n scores: 16× for 4× n, and it is seen
    for causal in (False, True):
        ctx = lambda n: BuildContext(n=n, heads=4, head_dim=D, causal=causal)  # noqa: E731
        assert growth(lambda n: PerformerAttention(PerformerParams(nb_features=64), ctx(n))) < 6
        assert growth(lambda n: LinearAttention(LinearParams(), ctx(n))) < 6


def test_flops_are_linear_in_n():
    for causal in (False, True):
        m = performer(64, causal, nb_features=32)
        assert m.flops(*qkv(1024)) == pytest.approx(2 * m.flops(*qkv(512)))


# GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,params", [("performer", {}), ("linear", {})])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_low_precision_close_to_float64(dtype, name, params, causal):
    dev, n, d = torch.device("cuda"), 1024, 64
    spec = get_method(name)
    gpu = spec.build(spec.params(**params), BuildContext(n=n, heads=4, head_dim=d, causal=causal,
                                                        dtype=dtype, device=dev))
    ref = spec.build(spec.params(**params), BuildContext(n=n, heads=4, head_dim=d, causal=causal,
                                                        dtype=torch.float64))
    q, k, v = qkv(n, seed=0, scale=0.5, batch=2, heads=4, d=d)
    qd, kd, vd = (t.to(dev, dtype).requires_grad_() for t in (q, k, v))
    out = gpu(qd, kd, vd)
    out.float().square().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in (qd, kd, vd))
    tol = 2e-2 if dtype == torch.float16 else 5e-2
    want = ref(q.double(), k.double(), v.double())  # same seed, same ω, in float64 on the CPU
    assert error_metrics(out.cpu(), want)["rel_err"] < tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_cuda_graph_capture_matches_eager(mode):
    """The bidirectional form makes no host-to-device copies per call, so it can be captured."""
    from attnbench.measure import Step

    dev, n, d = torch.device("cuda"), 1024, 64
    m = performer(n, d=d, heads=4, dtype=torch.float16).to(dev)
    q, k, v = (t.to(dev, torch.float16) for t in qkv(n, seed=0, scale=0.5, heads=4, d=d))
    step = Step.make(m, (q, k, v), mode, (1, 4, n, d), torch.Generator().manual_seed(1))
    eager = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    pairs = zip(eager, captured) if mode == "fwd_bwd" else [(eager, captured)]
    for a, b in pairs:
        assert a is not None and torch.allclose(a.float(), b.float(), atol=1e-3, rtol=1e-2)
