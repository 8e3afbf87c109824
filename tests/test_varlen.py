"""Packed documents (issue 23): lengths specs draw what they say, a document-masked batch equals the
per-document runs for every method that packs, a method that cannot pack says so in its row, and a
packed cell runs end to end against its per-document reference."""
from __future__ import annotations

import pytest
import torch

from attnbench.registry import REGISTRY, BuildContext
from attnbench.runner import run_suite
from attnbench.store import load_results
from attnbench.suite import Suite, expand
from attnbench.varlen import Documents, document_reference, draw_lengths, parse_lengths


def test_lengths_specs_fill_n_as_documented():
    assert draw_lengths("fixed:100", 256) == (100, 100, 56)
    for spec in ("uniform:10-40", "longtail:16"):
        lens = draw_lengths(spec, 1000, seed=3)
        assert sum(lens) == 1000 and min(lens) >= 1
        assert lens == draw_lengths(spec, 1000, seed=3) != draw_lengths(spec, 1000, seed=4)
    assert all(10 <= x <= 40 for x in draw_lengths("uniform:10-40", 1000)[:-1])
    tail = draw_lengths("longtail:16", 100_000)[:-1]
    median = sorted(tail)[len(tail) // 2]
    assert 12 <= median <= 20 and max(tail) > 5 * 16  # median M, a long tail
    for bad in ("fixed:0", "uniform:5", "zipf:2", 7):
        with pytest.raises(ValueError):
            parse_lengths(bad)


def test_documents_offsets_and_mask():
    docs = Documents((3, 1, 2))
    assert docs.bounds() == [(0, 3), (3, 4), (4, 6)]
    assert docs.cu_seqlens(batch=2).tolist() == [0, 3, 4, 6, 9, 10, 12]
    m = docs.mask(causal=True)
    assert m[2, 0] and not m[0, 2] and not m[3, 2] and m[5, 4] and int(m.sum()) == 6 + 1 + 3


def qkv(n, seed=0, b=2, h=2, d=16):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g) for _ in range(3))


# every built-in method that packs, with params whose patterns are not trivial at these lengths
PACKERS = [("sdpa", {}), ("naive", {}), ("flex", {}), ("local", {"window": 8}),
           ("strided", {"stride": 8})]


def test_every_builtin_that_packs_is_checked_here():
    declared = {s.name for s in REGISTRY.specs() if s.varlen and s.origin.startswith("attnbench.")}
    assert declared == {name for name, _ in PACKERS}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name,params", PACKERS)
def test_a_packed_batch_equals_the_per_document_runs(name, params, causal):
    spec = REGISTRY.get(name)
    p = spec.params(**params)
    lengths = (24, 8, 32, 16, 48) if name == "strided" else (21, 3, 40, 9, 55)  # strided: n % l == 0
    docs = Documents(lengths)
    n = docs.n

    def build(length, method=spec, p=p):
        return method.build(p, BuildContext(n=length, heads=2, head_dim=16, causal=causal))

    q, k, v = qkv(n)
    sdpa = REGISTRY.get("sdpa")
    with torch.no_grad():
        module = build(n)
        packed = module.pack(docs)(q, k, v)
        # exact methods all run a document alone as sdpa does (FlexAttention's eager CPU path is slow)
        alone = torch.cat([(build(b - a, sdpa, sdpa.params()) if spec.exact else build(b - a))(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b]) for a, b in docs.bounds()], dim=2)
        whole = module(q, k, v)
    assert (packed - alone).abs().max() <= 1e-5 * alone.abs().max()
    assert (whole - alone).abs().max() > 1e-2  # packing changed something: the test can fail
    if name in ("sdpa", "naive", "flex"):  # exact: the per-document float64 reference
        ref = document_reference(q, k, v, docs, causal)
        assert (packed.double() - ref).abs().max() <= 1e-5


def test_packed_cells_run_and_unpackable_methods_say_why(tmp_path):
    suite = Suite.from_dict({
        "name": "vl", "sweep": {"n": [128, 256], "total_tokens": [512], "heads": [2],
                                "head_dim": [16], "mode": ["prefill"]},
        "timing": {"repeats": 2, "warmup": 1, "warmup_s": 0.0},
        "inputs": {"docs": {"regime": "gaussian", "lengths": "uniform:8-64"}},
        "methods": {"sdpa": {}, "local": {"window": [16]}, "linear": {}}})
    cases = expand(suite)
    assert {c.input_dict.get("lengths") for c in cases} == {"uniform:8-64"}
    assert {(c.n, c.batch) for c in cases} == {(128, 4), (256, 2)}
    run_suite(suite, "cpu", out=tmp_path, progress=False)
    df = load_results(next(tmp_path.glob("vl/*")))
    packed = df[df["input.lengths"].notna()]
    ok = packed[packed["status"] == "ok"].set_index("method")
    assert set(ok.index) == {"sdpa", "local"}
    assert (ok["rel_err"] < 1e-5).loc["sdpa"].all()  # against the per-document reference
    assert (ok["documents"] > 2).all() and set(ok["varlen_kernel"]) == {"dense-mask", "blocked"}
    reasons = packed[packed["status"] == "unsupported"].set_index("method")["reason"]
    assert set(reasons.index) == {"linear"} and reasons.str.contains("packed documents").all()
    assert "entropy" not in ok or ok["entropy"].isna().all()  # unpacked statistics are left out


def test_varlen_kernel_on_cuda_matches_documents():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    spec = REGISTRY.get("sdpa")
    docs = Documents((100, 28, 128))
    m = spec.build(spec.params(), BuildContext(n=256, heads=2, head_dim=64, causal=True,
                                               dtype=torch.bfloat16, device=torch.device("cuda")))
    packed = m.pack(docs)
    q, k, v = (t.cuda().bfloat16() for t in qkv(256, d=64))
    ref = document_reference(q, k, v, docs, causal=True)
    assert (packed(q, k, v).double() - ref).abs().max() < 3e-2
    assert packed.stats()["varlen_kernel"] in ("varlen_attn", "dense-mask")
