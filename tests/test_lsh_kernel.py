"""LSH attention's Triton kernels (attnbench.methods.lsh.lsh_triton) against the torch kernel and a brute force.

Without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 is set below, before
anything imports the kernel module); with CUDA the same tests run the compiled kernels. The Triton
hash rounds in the input precision, so the attention is compared at equal buckets: the torch kernel
is handed the Triton kernel's buckets. Without Triton the tests skip.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "attnbench.methods.lsh.lsh_triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

from conftest import triton_device  # noqa: E402
from test_lsh import brute_force  # noqa: E402

from attnbench.kernels import triton_available, triton_interpreting  # noqa: E402
from attnbench.methods.lsh import LSHAttention, LSHParams, shared_keys  # noqa: E402
from attnbench.reference import error_metrics, is_causal  # noqa: E402
from attnbench.registry import BuildContext, get_method  # noqa: E402

# against the torch kernel at equal buckets; low precision: both round the products to the dtype
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.fixture(scope="module")
def dev() -> torch.device:
    """CUDA, or the CPU under Triton's interpreter."""
    return triton_device("lsh.lsh_triton", "_chunk_kernel")


def dtypes(dev: torch.device):
    return [torch.float32] if dev.type == "cpu" else [torch.float32, torch.float16, torch.bfloat16]


def qkv(n, dev, *, seed=0, batch=2, heads=2, dim=16, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g) for _ in range(3))
    return (q * scale).to(dev), k.to(dev), v.to(dev)


def build(n, dev, causal=False, kernel="triton", *, dtype=torch.float32, heads=2, dim=16, seed=3,
          **params) -> LSHAttention:
    spec, p = get_method("lsh"), LSHParams(kernel=kernel, **params)
    ctx = BuildContext(n=n, heads=heads, head_dim=dim, causal=causal, seed=seed, dtype=dtype,
                       device=dev)
    assert spec.unsupported_reason(p, ctx) is None
    return spec.build(p, ctx)


def rel(out, ref) -> float:
    return error_metrics(out.double().cpu(), ref.double().cpu())["rel_err"]


def same_buckets(fast: LSHAttention, slow: LSHAttention, q: torch.Tensor) -> torch.Tensor:
    """The Triton hash's sort keys; ``slow`` (torch kernel) is made to use the same buckets."""
    from attnbench.methods.lsh.lsh_triton import hash_keys

    b, h, n, _ = q.shape
    if fast.n_buckets == 1:
        return None
    skey = hash_keys(q, fast.rotations)
    buckets = (skey // n).long().view(b, h, fast.n_hashes, n)
    slow.hash = lambda key: buckets
    return skey


def test_hash_keys_are_the_torch_hash_as_sort_keys(dev):
    from attnbench.methods.lsh.lsh_triton import hash_keys

    n = 256
    m = build(n, dev, bucket_size=16, n_hashes=3)  # 16 buckets: 8 rotations a round, one tile
    q, _, _ = qkv(n, dev, seed=1)
    skey = hash_keys(q, m.rotations)
    assert skey.dtype == torch.int32 and skey.shape == (4, 3, n)
    pos = torch.arange(n, device=dev)
    assert torch.equal(skey % n, pos.expand_as(skey).int())
    want = m.hash(shared_keys(q)).view(4, 3, n)  # fp32 einsum of the unit keys
    agree = (skey // n == want).float().mean().item()
    # the kernel hashes q, not q/|q|: on CUDA the different rounding may move a near-tie
    assert agree == 1.0 if dev.type == "cpu" else agree > 0.99, agree
    for dtype in dtypes(dev)[1:]:  # fp16/bf16 products: more near-ties move, most buckets stay
        low = (hash_keys(q.to(dtype), m.rotations) // n == want).float().mean().item()
        assert low > 0.9, (dtype, low)


def test_hash_keys_cover_many_bucket_tiles(dev):
    """n_buckets/2 = 160: two tiles of 128 rotations and a masked tail; the running argmax across
    tiles must give the same bucket as one argmax over the whole row."""
    from attnbench.methods.lsh.lsh_triton import hash_keys

    n, c = 1280, 4
    m = build(n, dev, bucket_size=c, n_hashes=2, heads=1)
    q, _, _ = qkv(n, dev, seed=2, batch=1, heads=1)
    assert m.rotations.shape[-1] == 160
    skey = hash_keys(q, m.rotations)
    want = m.hash(shared_keys(q)).view(1, 2, n)
    agree = (skey // n == want).float().mean().item()
    assert agree == 1.0 if dev.type == "cpu" else agree > 0.99, agree


@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,bucket_size,n_hashes", [
    (128, 16, 3),  # several chunks, several rounds
    (96, 24, 2),   # a bucket size that is not a power of two: padded tiles
    (64, 32, 4),   # two chunks: the previous chunk is the next one too
    (64, 64, 2),   # one bucket: no hash, one chunk, keys = own chunk only
    (64, 16, 1),   # one round: nothing to merge or count
])
def test_forward_matches_torch_kernel_at_equal_buckets(dev, n, bucket_size, n_hashes, causal, dedup):
    kw = dict(bucket_size=bucket_size, n_hashes=n_hashes, dedup=dedup)
    q, k, v = qkv(n, dev, seed=5)
    for dtype in dtypes(dev):
        fast = build(n, dev, causal, "triton", dtype=dtype, **kw)
        slow = build(n, dev, causal, "torch", dtype=dtype, **kw)
        low = tuple(t.to(dtype) for t in (q, k, v))
        same_buckets(fast, slow, low[0])
        fast.hash = None  # the Triton path hashes in its kernel, never through the torch hash
        with torch.no_grad():
            out, want = fast(*low), slow(*low)
        assert fast.stats()["ran"] == "triton", fast.stats()
        assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
        assert rel(out, want) < TOL[dtype], (dtype, rel(out, want))


@pytest.mark.parametrize("causal", [False, True])
def test_matches_brute_force_union_of_rounds(dev, causal):
    n = 32
    q, k, v = qkv(n, dev, seed=6, batch=1)
    fast = build(n, dev, causal, "triton", bucket_size=8, n_hashes=3)
    slow = build(n, dev, causal, "torch", bucket_size=8, n_hashes=3)
    same_buckets(fast, slow, q)
    with torch.no_grad():
        out = fast(q, k, v)
    assert rel(out, brute_force(slow, q.cpu(), v.cpu())) < 1e-5


@pytest.mark.parametrize("bucket_size,n_hashes", [(8, 2), (16, 4)])
def test_causal_triton_kernel_is_causal(dev, bucket_size, n_hashes):
    n = 64
    m = build(n, dev, True, "triton", bucket_size=bucket_size, n_hashes=n_hashes)
    q, k, v = qkv(n, dev, seed=7, batch=1)
    with torch.no_grad():
        assert is_causal(m, q, k, v)
    assert m.stats()["ran"] == "triton"


def test_strided_inputs(dev):
    """q and v as views of a (B, N, H, D) tensor, as a layer's projection produces them."""
    n = 64
    m = build(n, dev, bucket_size=16, n_hashes=2)
    ref = build(n, dev, kernel="torch", bucket_size=16, n_hashes=2)
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(2, n, 2, 2, 16, generator=g) * 4).to(dev)
    q, v = x[:, :, 0].transpose(1, 2), x[:, :, 1].transpose(1, 2)
    assert not q.is_contiguous()
    same_buckets(m, ref, q)
    with torch.no_grad():
        assert rel(m(q, q, v), ref(q, q, v)) < 1e-5


def test_gradients_take_the_torch_kernel(dev):
    n = 64
    m = build(n, dev, bucket_size=16, n_hashes=2)
    q, k, v = qkv(n, dev, seed=9)
    qg = q.clone().requires_grad_()
    m(qg, k, v).sum().backward()
    assert m.stats()["ran"] == "torch" and "forward-only" in m.stats()["fallback"]
    assert torch.isfinite(qg.grad).all()
    with torch.no_grad():
        m(q, k, v)
    assert m.stats()["ran"] == "triton" and "fallback" not in m.stats()


def test_float64_takes_the_torch_kernel(dev):
    m = build(64, dev, bucket_size=16, n_hashes=2)
    q, k, v = (t.double() for t in qkv(64, dev, seed=10))
    with torch.no_grad():
        out = m(q, k, v)
    assert out.dtype == torch.float64 and m.stats()["ran"] == "torch"
    assert "float64" in m.stats()["fallback"]


def test_constraints_name_what_the_triton_kernel_takes():
    spec = get_method("lsh")
    here = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = BuildContext(n=1024, heads=2, head_dim=64, seed=0, device=here)
    why = spec.unsupported_reason(LSHParams(kernel="triton", bucket_size=256), ctx)
    if not triton_available():
        assert "triton" in why
        return
    assert "bucket_size <= 128" in why
    cpu = BuildContext(n=1024, heads=2, head_dim=64, seed=0)
    if not triton_interpreting():
        assert "CUDA" in spec.unsupported_reason(LSHParams(kernel="triton"), cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernel_replays_in_a_cuda_graph():
    from attnbench.measure import time_cuda_graph

    n, dev = 1024, torch.device("cuda")
    m = build(n, dev, dtype=torch.float16, heads=4, dim=64, bucket_size=64, n_hashes=4)
    q, k, v = (t.half() for t in qkv(n, dev, seed=11, heads=4, dim=64))
    with torch.no_grad():
        want = m(q, k, v)
        timing = time_cuda_graph(lambda: m(q, k, v), dev, warmup=2, repeats=3)
        again = m(q, k, v)
    assert m.stats()["ran"] == "triton" and timing.mode == "cuda-graph" and timing.median > 0
    assert torch.isfinite(want).all() and torch.equal(want, again)


def test_auto_picks_triton_on_cuda_where_it_takes_the_shape():
    """The choice itself (no GPU needed): a CUDA context is only a description here."""
    from attnbench.methods.lsh import default_kernel

    cuda = dict(n=1024, heads=2, head_dim=64, seed=0, device=torch.device("cuda"))
    cpu = dict(cuda, device=torch.device("cpu"))
    assert default_kernel(LSHParams(), BuildContext(**cpu)) == "torch"
    want = "triton" if triton_available() else "sdpa"
    assert default_kernel(LSHParams(), BuildContext(**cuda)) == want
    assert default_kernel(LSHParams(bucket_size=256), BuildContext(**cuda)) == "sdpa"
    assert default_kernel(LSHParams(), BuildContext(**dict(cuda, head_dim=256))) == "sdpa"
