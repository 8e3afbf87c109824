"""Reformer LSH attention: one-bucket limit, a brute-force check of the candidate sets and the
duplicate correction, error against n_hashes, causality, gradients, dtypes and memory growth."""
from __future__ import annotations

import pytest
import torch

from attnbench.measure import live_bytes, measure_memory
from attnbench.methods.lsh import LSHAttention, LSHParams, num_buckets, shared_keys
from attnbench.reference import error_metrics, is_causal, softmax_attention
from attnbench.registry import BuildContext, get_method

B, H, D = 2, 2, 16


def qkv(n: int, seed: int = 0, scale: float = 4.0, dtype=torch.float32, batch=B, heads=H, dim=D):
    """Queries scaled up so shared-QK attention is not uniform noise."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g) for _ in range(3))
    return (q * scale).to(dtype), k.to(dtype), v.to(dtype)


def build(n: int, causal: bool = False, seed: int = 0, dtype=torch.float32, heads=H, dim=D,
          **params) -> LSHAttention:
    spec, p = get_method("lsh"), LSHParams(**params)
    ctx = BuildContext(n=n, heads=heads, head_dim=dim, causal=causal, seed=seed, dtype=dtype)
    assert spec.unsupported_reason(p, ctx) is None
    return spec.build(p, ctx)


def rel_err(out, ref) -> float:
    return error_metrics(out, ref)["rel_err"]


def self_rule_mask(n: int, causal: bool) -> torch.Tensor:
    """All keys (causal: j <= i) but the query itself, which stays only where it is alone."""
    mask = torch.ones(n, n, dtype=torch.bool)
    if causal:
        mask = mask.tril()
    mask.fill_diagonal_(False)
    mask[~mask.any(-1), :] |= torch.eye(n, dtype=torch.bool)[~mask.any(-1)]
    return mask


# Exact references and limits

@pytest.mark.parametrize("causal", [False, True])
def test_exact_reference_is_shared_qk_with_self_rule(causal):
    n = 64
    q, k, v = qkv(n)
    m = build(n, causal, bucket_size=16)
    want = softmax_attention(q.double(), shared_keys(q.double()), v.double(),
                             mask=self_rule_mask(n, causal))
    assert rel_err(m.exact_reference(q.double(), k.double(), v.double()), want) < 1e-12


@pytest.mark.parametrize("n_hashes", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_one_bucket_is_exact_shared_qk_attention(causal, n_hashes):
    n = 128
    q, k, v = qkv(n, seed=1)
    m = build(n, causal, bucket_size=n, n_hashes=n_hashes)
    assert m.n_buckets == 1
    assert rel_err(m(q, k, v), m.exact_reference(q, k, v)) < 1e-5


def test_bucket_count_is_even():
    assert [num_buckets(n, 64) for n in (64, 128, 192, 256, 320)] == [1, 2, 4, 4, 6]


def brute_force(m: LSHAttention, q, v) -> torch.Tensor:
    """Softmax over the union of every round's candidates, enumerated one query at a time."""
    b, h, n, _ = q.shape
    c, causal = m.bucket_size, m.causal
    buckets = m.hash(shared_keys(q.float()))  # (B, H, R, N)
    key = shared_keys(q.double())
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            allowed = torch.zeros(n, n, dtype=torch.bool)
            for r in range(m.n_hashes):
                bk = buckets[bi, hi, r].tolist()
                order = sorted(range(n), key=lambda t: (bk[t], t))
                slot = {t: s for s, t in enumerate(order)}
                for i in range(n):
                    for j in range(n):
                        si, sj = slot[i], slot[j]
                        if causal:
                            ok = bk[i] == bk[j] and 0 <= si - sj <= c
                        else:
                            ci, cj, nc = si // c, sj // c, n // c
                            ok = cj == ci or (nc > 1 and cj == (ci - 1) % nc)
                        allowed[i, j] |= ok
            alone = allowed.clone()
            alone.fill_diagonal_(False)
            keep_self = ~alone.any(-1)
            mask = alone | (torch.eye(n, dtype=torch.bool) & keep_self[:, None])
            out[bi, hi] = softmax_attention(q[bi, hi].double(), key[bi, hi], v[bi, hi].double(),
                                            mask=mask)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,bucket_size,n_hashes", [(32, 8, 3), (48, 8, 2), (32, 16, 2)])
def test_matches_brute_force_union_of_rounds(n, bucket_size, n_hashes, causal):
    q, k, v = qkv(n, seed=2, batch=1)
    m = build(n, causal, seed=4, bucket_size=bucket_size, n_hashes=n_hashes)
    assert rel_err(m(q, k, v), brute_force(m, q, v)) < 1e-5


# Approximation quality and randomness

@pytest.mark.parametrize("causal", [False, True])
def test_error_falls_as_n_hashes_grows(causal):
    n, errs = 128, []
    for n_hashes in (1, 2, 4, 8):
        per_seed = []
        for seed in range(3):
            q, k, v = qkv(n, seed=seed)
            m = build(n, causal, seed=seed, bucket_size=16, n_hashes=n_hashes)
            per_seed.append(rel_err(m(q, k, v), m.exact_reference(q, k, v)))
        errs.append(sum(per_seed) / len(per_seed))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.6 * errs[0], errs


def test_rotations_are_fixed_per_seed():
    n = 128
    q, k, v = qkv(n, seed=3)
    a, b, c = (build(n, seed=s, bucket_size=16, n_hashes=2) for s in (7, 7, 8))
    assert torch.equal(a(q, k, v), b(q, k, v))
    assert not torch.equal(a(q, k, v), c(q, k, v))
    buckets = a.hash(shared_keys(q))
    assert buckets.min() >= 0 and buckets.max() < a.n_buckets == 8
    assert len(buckets.unique()) > 4  # hashing actually spreads tokens


def test_keys_are_ignored():
    n = 64
    q, k, v = qkv(n, seed=4)
    m = build(n, bucket_size=16, n_hashes=2)
    assert torch.equal(m(q, k, v), m(q, torch.randn_like(k), v))


# Causality, gradients, dtypes, memory

@pytest.mark.parametrize("bucket_size,n_hashes", [(16, 1), (16, 4), (8, 3), (128, 2)])
def test_causal_variant_is_causal(bucket_size, n_hashes):
    n = 128
    q, k, v = qkv(n, seed=5)
    assert is_causal(build(n, True, bucket_size=bucket_size, n_hashes=n_hashes), q, k, v)


def test_non_causal_variant_is_not_causal():
    n = 128
    q, k, v = qkv(n, seed=5)
    assert not is_causal(build(n, False, bucket_size=16, n_hashes=2), q, k, v)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(causal):
    n = 16
    q, k, v = qkv(n, seed=6, batch=1, heads=1, dim=4, dtype=torch.float64)
    m = build(n, causal, heads=1, dim=4, bucket_size=4, n_hashes=2)
    q.requires_grad_(), v.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, v: m(q, k, v), (q, v), eps=1e-6, atol=1e-5,
                                    fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_on_cpu(causal, dtype):
    n = 128
    q, k, v = qkv(n, seed=7, dtype=dtype)
    m = build(n, causal, dtype=dtype, bucket_size=16, n_hashes=2)
    q.requires_grad_()
    out = m(q, k, v)
    assert out.dtype == dtype and torch.isfinite(out).all()
    full = m(*(t.float() for t in (q, k, v)))
    assert rel_err(out, full) < 3e-2  # the hashes agree; only rounding differs
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("causal", [False, True])
def test_peak_memory_grows_subquadratically(causal):
    peaks = []
    for n in (512, 2048):
        m = build(n, causal, heads=2, dim=32, bucket_size=64, n_hashes=2)
        q, k, v = qkv(n, batch=1, heads=2, dim=32)
        with torch.no_grad():
            peaks.append(measure_memory(lambda: m(q, k, v), "cpu",
                                        live=live_bytes((q, k, v), (m,)))["peak_mem_mib"])
    assert peaks[1] / peaks[0] < 0.5 * (2048 / 512) ** 2, peaks


def test_constraint_is_declared():
    spec = get_method("lsh")
    ctx = BuildContext(n=100, heads=H, head_dim=D)
    assert "divisible by bucket_size=64" in spec.unsupported_reason(LSHParams(bucket_size=64), ctx)
    assert spec.unsupported_reason(LSHParams(bucket_size=25), ctx) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_matches_cpu(causal):
    n = 256
    q, k, v = qkv(n, seed=8)
    cpu = build(n, causal, bucket_size=32, n_hashes=4)
    ctx = BuildContext(n=n, heads=H, head_dim=D, causal=causal, device=torch.device("cuda"))
    gpu = get_method("lsh").build(LSHParams(bucket_size=32, n_hashes=4), ctx)
    out = gpu(*(t.cuda() for t in (q, k, v)))
    assert rel_err(out.cpu(), cpu(q, k, v)) < 1e-4
    for dtype in (torch.float16, torch.bfloat16):
        low = gpu(*(t.cuda().to(dtype) for t in (q, k, v)))
        assert low.dtype == dtype and torch.isfinite(low).all()


# dedup=False: Reformer's cheaper combination (duplicates count as often as they are found)

@pytest.mark.parametrize("causal", [False, True])
def test_without_dedup_one_round_and_one_bucket_are_unchanged(causal):
    n = 64
    q, k, v = qkv(n, seed=5)
    one = build(n, causal, bucket_size=8, n_hashes=1)
    one_nodedup = build(n, causal, bucket_size=8, n_hashes=1, dedup=False)
    torch.testing.assert_close(one_nodedup(q, k, v), one(q, k, v), rtol=0, atol=0)
    flat = build(n, causal, bucket_size=n, n_hashes=3, dedup=False)
    assert rel_err(flat(q, k, v), flat.exact_reference(q, k, v)) < 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_without_dedup_rounds_are_combined_differently_and_stay_causal(causal):
    n = 64
    q, k, v = qkv(n, seed=6)
    union = build(n, causal, bucket_size=8, n_hashes=3)
    plain = build(n, causal, bucket_size=8, n_hashes=3, dedup=False)
    a, b = union(q, k, v), plain(q, k, v)
    assert torch.isfinite(b).all() and rel_err(b, a) > 1e-3
    if causal:
        assert is_causal(plain, q, k, v)


# Kernels: the fused-chunk (sdpa) kernel against the torch kernel

def build_kernel(n, causal, kernel, *, seed=0, dtype=torch.float32, device="cpu", heads=H, dim=D,
                 **params) -> LSHAttention:
    ctx = BuildContext(n=n, heads=heads, head_dim=dim, causal=causal, seed=seed, dtype=dtype,
                       device=torch.device(device))
    return get_method("lsh").build(LSHParams(kernel=kernel, **params), ctx)


def test_kernel_auto_is_torch_on_cpu():
    m = build(64, bucket_size=16)
    assert m.kernel == "torch" and m.stats()["kernel"] == "torch"


def test_hash_is_argmax_of_rotations_and_their_negatives():
    m = build(256, bucket_size=16, n_hashes=3)
    key = shared_keys(qkv(256, seed=11)[0])
    rotated = torch.einsum("bhnd,rdk->bhrnk", key, m.rotations)
    assert torch.equal(m.hash(key), torch.cat([rotated, -rotated], -1).argmax(-1))


@pytest.mark.parametrize("kernel", ["sdpa"])
@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("n_hashes", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,bucket_size", [(128, 16), (64, 32), (96, 16), (64, 64)])
def test_kernels_match_torch_kernel_on_cpu(n, bucket_size, causal, n_hashes, dedup, kernel):
    # sdpa on CPU runs its bias + log-sum-exp logic on plain ops; CUDA swaps in the fused kernel
    q, k, v = qkv(n, seed=12)
    kw = dict(seed=3, bucket_size=bucket_size, n_hashes=n_hashes, dedup=dedup)
    fast, ref = build_kernel(n, causal, kernel, **kw), build_kernel(n, causal, "torch", **kw)
    with torch.no_grad():
        out, want = fast(q, k, v), ref(q, k, v)
    assert out.dtype == q.dtype and rel_err(out, want) < 1e-5
    if kernel == "sdpa":
        assert fast.stats()["ran"] == "sdpa"


def test_sdpa_kernel_takes_the_torch_kernel_when_gradients_are_needed():
    n = 64
    q, k, v = qkv(n, seed=17)
    m = build_kernel(n, False, "sdpa", bucket_size=16, n_hashes=2)
    qg = q.clone().requires_grad_()
    m(qg, k, v).sum().backward()
    assert m.stats()["ran"] == "torch" and torch.isfinite(qg.grad).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_sdpa_kernel_on_cuda_matches_torch_kernel(causal, dedup):
    n, dev = 1024, "cuda"
    kw = dict(seed=3, heads=4, dim=64, bucket_size=64, n_hashes=4, dedup=dedup)
    ref = build_kernel(n, causal, "torch", device=dev, **kw)
    q, k, v = (t.to(dev) for t in qkv(n, seed=15, heads=4, dim=64))
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        m = build_kernel(n, causal, "sdpa", dtype=dtype, device=dev, **kw)
        low = tuple(t.to(dtype) for t in (q, k, v))
        with torch.no_grad():
            out, want = m(*low), ref(*low)
        assert m.stats()["ran"] == "sdpa"
        assert out.dtype == dtype and rel_err(out.float(), want.float()) < tol, dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_sdpa_kernel_replays_in_a_cuda_graph():
    from attnbench.measure import time_cuda_graph

    n, dev = 1024, torch.device("cuda")
    m = build_kernel(n, False, "sdpa", dtype=torch.float16, device=dev, heads=4, dim=64,
                     bucket_size=64, n_hashes=4, dedup=False)
    q, k, v = (t.to(dev, torch.float16) for t in qkv(n, seed=16, heads=4, dim=64))
    with torch.no_grad():
        want = m(q, k, v)
        timing = time_cuda_graph(lambda: m(q, k, v), dev, warmup=2, repeats=3)
    assert m.kernel == "sdpa" and timing.mode == "cuda-graph" and timing.median > 0
    assert torch.isfinite(want).all()


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_kernel_matches_brute_force_union_of_rounds(causal):
    n = 48
    q, k, v = qkv(n, seed=2, batch=1)
    m = build_kernel(n, causal, "sdpa", seed=4, bucket_size=8, n_hashes=3)
    assert rel_err(m(q, k, v), brute_force(m, q, v)) < 1e-5
