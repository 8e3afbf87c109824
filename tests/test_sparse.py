"""Sparse patterns: definitions, kernel against the dense masked reference, exact limits, causality,
gradients, low precision, budget, memory growth, and the FlexAttention path (mask_mod on CPU, kernels on
CUDA)."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from attnbench.measure import live_bytes, measure_memory
from attnbench.methods.sparse import (BigBirdParams, FixedParams, LocalParams, StridedParams,
                                      build_pattern, flex_block_mask, pattern_mask)
from attnbench.reference import error_metrics, is_causal, reference_attention, softmax_attention
from attnbench.registry import BuildContext, get_method

B, H, D = 2, 2, 16

CASES = {
    "local": LocalParams(window=24),
    "strided": StridedParams(stride=16),
    "fixed": FixedParams(block=32, c=4),
    "bigbird": BigBirdParams(block=16, num_global=20, num_random=2),
}


def qkv(n: int, seed: int = 0, dtype=torch.float32, batch: int = B, heads: int = H, dim: int = D):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, dim, generator=g).to(dtype) for _ in range(3))


def ctx_for(n: int, causal: bool = False, seed: int = 0, **kw) -> BuildContext:
    return BuildContext(n=n, heads=kw.pop("heads", H), head_dim=kw.pop("head_dim", D), causal=causal,
                        seed=seed, **kw)


def build(name: str, p, ctx: BuildContext):
    spec = get_method(name)
    assert spec.unsupported_reason(p, ctx) is None
    return spec.build(p, ctx)


def masked_reference(name, p, ctx, q, k, v):
    mask = pattern_mask(name, p, ctx)
    return softmax_attention(q.double(), k.double(), v.double(), mask=mask)


def rows(mask: torch.Tensor, i: int) -> set[int]:
    return set(torch.nonzero(mask[i]).flatten().tolist())


# Pattern definitions, checked on small grids by hand

def test_local_pattern_rows():
    m = pattern_mask("local", LocalParams(window=3), ctx_for(16))
    assert rows(m, 0) == {0, 1, 2}
    assert rows(m, 7) == {5, 6, 7, 8, 9}
    mc = pattern_mask("local", LocalParams(window=3), ctx_for(16, causal=True))
    assert rows(mc, 7) == {5, 6, 7}


def test_strided_pattern_rows():
    m = pattern_mask("strided", StridedParams(stride=4), ctx_for(16))
    assert rows(m, 9) == {5, 6, 7, 8, 9, 10, 11, 12, 13} | {1}
    mc = pattern_mask("strided", StridedParams(stride=4), ctx_for(16, causal=True))
    assert rows(mc, 9) == {1, 5, 6, 7, 8, 9}
    assert rows(mc, 15) == {3, 7, 11, 12, 13, 14, 15}


def test_fixed_pattern_rows():
    m = pattern_mask("fixed", FixedParams(block=4, c=1), ctx_for(16))
    assert rows(m, 5) == {4, 5, 6, 7, 3, 11, 15}
    mc = pattern_mask("fixed", FixedParams(block=4, c=1), ctx_for(16, causal=True))
    assert rows(mc, 5) == {3, 4, 5}


def test_bigbird_pattern_rows_and_random_blocks():
    p = BigBirdParams(block=4, num_global=2, num_random=1)
    pat = build_pattern("bigbird", p, ctx_for(32, seed=5))
    m = pat.dense()
    assert rows(m, 0) == set(range(32)) and rows(m, 1) == set(range(32))  # global queries
    assert m[:, :2].all()  # global keys
    for qb in range(2, 8):
        (kb,) = pat.random_idx[qb].tolist()
        assert abs(kb - qb) > 1  # outside the window
        expect = {0, 1} | set(range(4 * (qb - 1), 4 * (qb + 2))) | set(range(4 * kb, 4 * kb + 4))
        assert rows(m, 4 * qb + 1) == expect & set(range(32))
    again = build_pattern("bigbird", p, ctx_for(32, seed=5)).random_idx
    other = build_pattern("bigbird", p, ctx_for(32, seed=6)).random_idx
    assert torch.equal(pat.random_idx, again) and not torch.equal(pat.random_idx, other)
    causal = build_pattern("bigbird", p, ctx_for(32, causal=True, seed=5))
    picked = causal.random_idx
    assert all(kb < qb - 1 for qb in range(8) for kb in picked[qb].tolist() if kb >= 0)


# The kernel against the dense masked reference built from the same pattern

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_dense_masked_reference(name, causal):
    n = 256
    ctx = ctx_for(n, causal, seed=3)
    m = build(name, CASES[name], ctx)
    q, k, v = qkv(n, seed=1)
    ref = masked_reference(name, CASES[name], ctx, q, k, v)
    assert error_metrics(m(q, k, v), ref)["rel_err"] < 1e-5
    assert m.stats()["density"] == pytest.approx(pattern_mask(name, CASES[name], ctx).float().mean())
    assert m.stats()["density"] < 0.6
    assert error_metrics(m(q, k, v), reference_attention(q, k, v, causal=causal))["rel_err"] > 1e-2


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,p,n", [
    ("local", LocalParams(window=7), 97),  # n prime: one-query tiles
    ("local", LocalParams(window=1), 64),
    ("strided", StridedParams(stride=1), 32),
    ("strided", StridedParams(stride=32), 32),
    ("fixed", FixedParams(block=8, c=8), 64),
    ("fixed", FixedParams(block=64, c=1), 64),
    ("bigbird", BigBirdParams(block=16, num_global=0, num_random=3), 128),
    ("bigbird", BigBirdParams(block=16, num_global=37, num_random=1), 128),
    ("bigbird", BigBirdParams(block=32, num_global=5, num_random=9), 128),
])
def test_kernel_matches_reference_at_edges(name, p, n, causal):
    ctx = ctx_for(n, causal, seed=2)
    q, k, v = qkv(n, seed=4)
    out = build(name, p, ctx)(q, k, v)
    assert error_metrics(out, masked_reference(name, p, ctx, q, k, v))["rel_err"] < 1e-5


# Exact limits

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [96, 500])
def test_local_window_at_least_n_is_exact(window, causal):
    n = 96
    q, k, v = qkv(n, seed=2)
    out = build("local", LocalParams(window=window), ctx_for(n, causal))(q, k, v)
    assert error_metrics(out, reference_attention(q, k, v, causal=causal))["rel_err"] < 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_all_global_is_exact(causal):
    n = 128
    q, k, v = qkv(n, seed=3)
    m = build("bigbird", BigBirdParams(block=16, num_global=n, num_random=1), ctx_for(n, causal))
    assert error_metrics(m(q, k, v), reference_attention(q, k, v, causal=causal))["rel_err"] < 1e-5
    assert m.stats()["density"] == pytest.approx(0.5 + 0.5 / n if causal else 1.0)


# Causality, gradients, dtypes, budget

@pytest.mark.parametrize("name", list(CASES))
def test_causal_variants_are_causal(name):
    n = 128
    q, k, v = qkv(n, seed=5)
    m = build(name, CASES[name], ctx_for(n, causal=True))
    assert is_causal(m, q, k, v)
    assert not is_causal(build(name, CASES[name], ctx_for(n, causal=False)), q, k, v)


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_dense_masked_reference(name):
    n = 128
    ctx = ctx_for(n, causal=name in ("fixed", "bigbird"), seed=1)
    q, k, v = (t.requires_grad_() for t in qkv(n, seed=6))
    g = torch.randn(B, H, n, D, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad((build(name, CASES[name], ctx)(q, k, v) * g).sum(), (q, k, v))
    mask = pattern_mask(name, CASES[name], ctx)
    ref = torch.autograd.grad((softmax_attention(q, k, v, mask=mask) * g).sum(), (q, k, v))
    for got, want in zip(grads, ref):
        assert error_metrics(got, want)["rel_err"] < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("name", list(CASES))
def test_low_precision_on_cpu(name, dtype, tol):
    n = 128
    ctx = ctx_for(n, causal=True, dtype=dtype)
    q, k, v = qkv(n, seed=8, dtype=dtype)
    q.requires_grad_()
    out = build(name, CASES[name], ctx)(q, k, v)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert error_metrics(out, masked_reference(name, CASES[name], ctx, q, k, v))["rel_err"] < tol
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("name,knob,values", [
    ("local", "window", [8, 32, 96]),
    ("bigbird", "num_random", [0, 2, 6]),
    ("fixed", "c", [1, 4, 16]),
])
def test_error_shrinks_as_budget_grows(name, knob, values):
    n = 256
    errs = []
    for value in values:
        p = dataclasses.replace(CASES[name], **{knob: value})
        per_seed = []
        for seed in range(3):
            q, k, v = qkv(n, seed=seed)
            q = q * 2.0  # sharper attention than unit-variance noise gives
            out = build(name, p, ctx_for(n, seed=seed))(q, k, v)
            per_seed.append(error_metrics(out, reference_attention(q, k, v))["rel_err"])
        errs.append(sum(per_seed) / len(per_seed))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_constraints_are_declared():
    assert "divisible by stride" in get_method("strided").unsupported_reason(
        StridedParams(stride=24), ctx_for(100))
    assert "divisible by block" in get_method("bigbird").unsupported_reason(
        BigBirdParams(block=64), ctx_for(100))
    assert "c=9" in get_method("fixed").unsupported_reason(FixedParams(block=8, c=9), ctx_for(64))
    assert get_method("local").unsupported_reason(LocalParams(window=5), ctx_for(101)) is None


# Memory grows less than quadratically (the harness's own measurement)

MEMORY_CASES = {  # the Sparse Transformer's l ≈ √n for strided and fixed
    "local": lambda n: LocalParams(window=64),
    "strided": lambda n: StridedParams(stride=32 if n <= 512 else 64),
    "fixed": lambda n: FixedParams(block=32 if n <= 512 else 64, c=8),
    "bigbird": lambda n: BigBirdParams(block=64, num_global=64, num_random=3),
}


@pytest.mark.parametrize("name", list(MEMORY_CASES))
def test_peak_memory_grows_subquadratically(name):
    peaks = []
    for n in (512, 2048):
        m = build(name, MEMORY_CASES[name](n), ctx_for(n, heads=2, head_dim=32))
        q, k, v = qkv(n, batch=1, heads=2, dim=32)
        with torch.no_grad():
            peaks.append(measure_memory(lambda: m(q, k, v), "cpu",
                                        live=live_bytes((q, k, v), (m,)))["peak_mem_mib"])
    assert peaks[1] / peaks[0] < 0.5 * (2048 / 512) ** 2, peaks


# FlexAttention: the mask_mod on CPU (eager), the compiled kernel on CUDA

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_flex_mask_mod_matches_pattern_on_cpu(name, causal):
    from torch.nn.attention.flex_attention import flex_attention

    n = 128
    ctx = ctx_for(n, causal, seed=3)
    q, k, v = qkv(n, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is unfused
        bm = flex_block_mask(build_pattern(name, CASES[name], ctx), torch.device("cpu"))
        out = flex_attention(q, k, v, block_mask=bm)
    assert error_metrics(out, masked_reference(name, CASES[name], ctx, q, k, v))["rel_err"] < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_flex_path_matches_dense_masked_reference_on_cuda(name, causal, dtype, tol):
    n, dev = 512, torch.device("cuda")
    ctx = ctx_for(n, causal, seed=3, head_dim=64, dtype=dtype, device=dev)
    m = build(name, CASES[name], ctx)
    stats = m.stats()
    assert stats["kernel"] == "flex" and stats["compiled"] and stats["compile_s"] > 0
    q, k, v = (t.to(dev) for t in qkv(n, seed=10, dtype=dtype, dim=64))
    cpu_ctx = ctx_for(n, causal, seed=3, head_dim=64)
    ref = masked_reference(name, CASES[name], cpu_ctx, q.cpu(), k.cpu(), v.cpu())
    assert error_metrics(m(q, k, v).cpu(), ref)["rel_err"] < tol
    blocked = build(name, dataclasses.replace(CASES[name], kernel="blocked"), ctx)
    assert error_metrics(blocked(q, k, v).cpu(), ref)["rel_err"] < tol
    q.requires_grad_()
    m(q, k, v).float().sum().backward()
    assert torch.isfinite(q.grad).all()
