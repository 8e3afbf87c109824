"""Accuracy columns: entropy limits, uniform attention's closed form, the truncated-SVD bound, caching,
and the columns in harness rows (core level only, per-dtype references, real inputs)."""
from __future__ import annotations

import math

import pytest
import torch

from attnbench import accuracy as acc
from attnbench import load_results, run_suite
from attnbench.inputs import make_qkv
from attnbench.reference import error_metrics, reference_attention
from attnbench.registry import BuildContext, get_method
from attnbench.spectrum import truncate

CPU = torch.device("cpu")


def gaussian(n=128, heads=2, head_dim=16, qk_scale=1.0, sample=0, seed=0):
    return make_qkv({"regime": "gaussian", "qk_scale": qk_scale, "sample": sample}, batch=1,
                    heads=heads, n=n, head_dim=head_dim, dtype=torch.float32, device=CPU, seed=seed)


def dense_entropy(q, k, causal):
    """Straightforward whole-matrix version to check the blockwise one against."""
    p = acc.softmax_probs(q, k, causal=causal)
    h = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(-1)  # (B, H, N)
    n = q.shape[-2]
    visible = torch.arange(1, n + 1, dtype=torch.float64) if causal else torch.full((n,), float(n), dtype=torch.float64)
    return float((h[..., 1:] / visible[1:].log()).mean() if causal else (h / visible.log()).mean())


@pytest.mark.parametrize("causal", [False, True])
def test_entropy_is_one_for_constant_scores(causal):
    q = torch.zeros(2, 3, 100, 8)  # every score 0: uniform over the visible keys
    k = torch.randn(2, 3, 100, 8)
    assert acc.attention_entropy(q, k, causal=causal, chunk=32) == pytest.approx(1.0, abs=1e-12)
    probs = lambda v: acc.softmax_probs(q, k, causal=causal) @ v  # noqa: E731
    assert acc.operator_entropy(probs, (2, 3, 100), causal=causal, chunk=30) == \
        pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_entropy_is_near_zero_for_one_hot_rows(causal):
    n = 32
    basis = 40.0 * torch.eye(n)[None, None]  # q_i = k_i = 40·e_i: score 400/√32 on the diagonal, 0 off
    ent = acc.attention_entropy(basis, basis, causal=causal, chunk=7)
    assert 0 <= ent < 1e-20


@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_entropy_matches_the_whole_matrix(causal):
    q, k, _ = gaussian(n=96, qk_scale=1.3)
    want = dense_entropy(q, k, causal)
    assert acc.attention_entropy(q, k, causal=causal, chunk=17) == pytest.approx(want, rel=1e-12)
    probs = lambda v: acc.softmax_probs(q, k, causal=causal) @ v  # noqa: E731
    assert acc.operator_entropy(probs, (1, 2, 96), causal=causal, chunk=40) == \
        pytest.approx(want, rel=1e-12)


def test_entropy_falls_monotonically_as_qk_scale_grows():
    scales = [0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
    ents = [acc.attention_entropy(*gaussian(n=256, qk_scale=s)[:2]) for s in scales]
    assert all(a > b for a, b in zip(ents, ents[1:]))
    assert ents[0] > 0.99 and ents[-1] < 0.6


@pytest.mark.parametrize("n", [16, 100])
def test_uniform_error_closed_form_on_identity_attention(n):
    """q_i = k_i = 40·e_i makes exact attention the identity, so the reference is V itself. With
    v_j = j (every channel), uniform attention returns (n−1)/2 everywhere: error
    √(Σ(j − (n−1)/2)² / Σj²) = √((n+1)/(2(2n−1))); causal, it returns the prefix mean j/2: error ½."""
    d = max(n, 8)
    basis = 40.0 * torch.eye(n, d)[None, None]  # (1, 1, N, D)
    v = torch.arange(n, dtype=torch.float32)[:, None].expand(n, 4)[None, None]  # (1, 1, N, 4)
    for causal, want in ((False, math.sqrt((n + 1) / (2 * (2 * n - 1)))), (True, 0.5)):
        ref = reference_attention(basis, basis, v, causal=causal)
        torch.testing.assert_close(ref, v.double())
        assert acc.uniform_rel_err(ref, v, causal=causal) == pytest.approx(want, rel=1e-12)


def test_uniform_error_is_zero_when_attention_is_uniform():
    q, k, v = gaussian(n=64)
    q = torch.zeros_like(q)
    for causal in (False, True):
        ref = reference_attention(q, k, v, causal=causal)
        assert acc.uniform_rel_err(ref, v, causal=causal) < 1e-14


@pytest.mark.parametrize("causal", [False, True])
def test_rank_tail_energies_match_an_explicit_truncated_svd(causal):
    q, k, v = gaussian(n=64, qk_scale=1.2)
    p = acc.softmax_probs(q, k, causal=causal)  # (1, 2, 64, 64)
    tails, total = acc.rank_tail_energies(p, v)
    pv = p @ v.double()
    for rank in (0, 1, 5, 16, 40, 63, 64):
        approx = truncate(p, rank) @ v.double() if rank else torch.zeros_like(pv)
        want = float(torch.linalg.vector_norm(pv - approx) / torch.linalg.vector_norm(pv))
        assert acc.svd_rel_err(tails, total, rank) == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert acc.svd_rel_err(tails, total, 64) < 1e-6


LOW_RANK = [("linformer", {"k": r, "projection": proj}) for r in (8, 16, 32)
            for proj in ("linear", "mean_pool")] + [("nystrom", {"num_landmarks": r})
                                                    for r in (8, 16, 32)]


@pytest.mark.parametrize("name, params", LOW_RANK)
def test_truncated_svd_is_below_every_low_rank_methods_error(name, params):
    """Eckart–Young, checked on P itself (V = I, so the method's output is its P̃) and on outputs
    with Gaussian V, over several seeds: no rank-k method beats P's truncated SVD at rank k."""
    n, h, d = 64, 2, 16
    spec = get_method(name)
    rank = acc.budget_rank(name, spec.params(**params), {}, d)
    for seed in range(3):
        q, k, v = gaussian(n=n, heads=h, head_dim=d, qk_scale=1.0, sample=seed)
        module = spec.build(spec.params(**params), BuildContext(n=n, heads=h, head_dim=d, seed=seed))
        with torch.no_grad():
            p_tilde = module(q, k, torch.eye(n).expand(1, h, n, n))  # (B, H, N, N)
            out = module(q, k, v)
        p = acc.softmax_probs(q, k)
        tails_p, total_p = acc.rank_tail_energies(p, torch.eye(n, dtype=torch.float64))
        assert acc.svd_rel_err(tails_p, total_p, rank) <= error_metrics(p_tilde, p)["rel_err"]
        tails, total = acc.rank_tail_energies(p, v)
        ref = reference_attention(q, k, v)
        assert acc.svd_rel_err(tails, total, rank) <= error_metrics(out, ref)["rel_err"]


def test_budget_rank_table():
    perf = get_method("performer").params
    assert acc.budget_rank("performer", perf(nb_features=64), {"nb_features_used": 64}, 32) == 64
    assert acc.budget_rank("performer", perf(nb_features=64, positive=False),
                           {"nb_features_used": 64}, 32) == 128
    assert acc.budget_rank("linear", get_method("linear").params(), {}, 32) == 32
    assert acc.budget_rank("linformer", get_method("linformer").params(k=48), {"k": 48}, 32) == 48
    assert acc.budget_rank("local", get_method("local").params(), {}, 32) is None


def run_rows(write_suite, tmp_path, methods: str, n="[64]", heads="[2]", head_dim="[16]",
             dtype='["fp32"]', level='["core"]'):
    """Run a small suite (sweep axes given as TOML values) and load its rows."""
    text = f"""
name = "acc"
baseline = "sdpa"
[sweep]
n = {n}
batch = [1]
heads = {heads}
head_dim = {head_dim}
dtype = {dtype}
level = {level}
[timing]
warmup = 0
warmup_s = 0.0
repeats = 1
""" + methods
    outcome = run_suite(str(write_suite(text)), "cpu", out=tmp_path / "out", progress=False)
    return load_results(outcome.run_dir)


def test_rows_carry_accuracy_columns_and_svd_runs_once_per_input_set(write_suite, tmp_path,
                                                                     monkeypatch):
    calls = []
    real_tails = acc.rank_tail_energies
    monkeypatch.setattr(acc, "rank_tail_energies", lambda p, v: calls.append(1) or real_tails(p, v))
    df = run_rows(write_suite, tmp_path, """
[inputs.g]
regime = "gaussian"
qk_scale = [0.5, 1.0]
[methods.sdpa]
[methods.linformer]
k = [8, 16, 32]
[methods.nystrom]
num_landmarks = [8, 16]
[methods.local]
window = [8]
""")
    assert (df.status == "ok").all()
    assert len(calls) == 2  # one eigendecomposition per input set, shared by five low-rank cells
    assert (df.err_vs_uniform == df.rel_err / df.uniform_rel_err).all()
    for scale, group in df.groupby("input.qk_scale"):
        assert group.entropy.nunique() == 1 and group.uniform_rel_err.nunique() == 1
    assert df[df.method == "local"].svd_rel_err.isna().all()
    assert df[df.method == "sdpa"].svd_rel_err.isna().all()
    low = df[df.method.isin(["linformer", "nystrom"])]
    assert low.svd_rel_err.notna().all() and (low.svd_rel_err <= low.rel_err).all()
    assert (low.svd_rank == low["budget_value"]).all()
    sharp = df[df["input.qk_scale"] == 1.0].entropy.iloc[0]
    flat = df[df["input.qk_scale"] == 0.5].entropy.iloc[0]
    assert flat > sharp
    lin = df[(df.method == "linformer")].sort_values("budget_value")
    for _, group in lin.groupby("input.qk_scale"):
        assert group.svd_rel_err.is_monotonic_decreasing  # a higher rank is never a worse bound


def test_own_reference_methods_get_entropy_of_their_own_attention(write_suite, tmp_path):
    """LSH approximates shared-QK attention; its entropy and uniform error describe that attention."""
    df = run_rows(write_suite, tmp_path, """
[inputs.g]
regime = "gaussian"
qk_scale = [2.0]
[methods.sdpa]
[methods.lsh]
bucket_size = [16]
n_hashes = [2]
""")
    sdpa, lsh = (df[df.method == m].iloc[0] for m in ("sdpa", "lsh"))
    # shared-QK scores q·k̂/√d are far flatter than q·k/√d at qk_scale 2 (keys have unit length)
    assert lsh.entropy > sdpa.entropy + 0.2
    assert lsh.uniform_rel_err != sdpa.uniform_rel_err
    assert lsh.err_vs_uniform == pytest.approx(lsh.rel_err / lsh.uniform_rel_err)


def test_reference_depends_on_the_cells_dtype_not_on_cell_order(write_suite, tmp_path):
    """bf16 cells first: the fp32 exact baseline must still be compared with the reference of its own
    (unrounded) inputs."""
    df = run_rows(write_suite, tmp_path, """
[inputs.g]
regime = "gaussian"
[methods.sdpa]
""", dtype='["bf16", "fp32"]')
    fp32 = df[df.dtype == "fp32"].iloc[0]
    assert fp32.rel_err < 1e-5 and fp32.baseline_rel_err < 1e-5
    bf16 = df[df.dtype == "bf16"].iloc[0]
    assert bf16.entropy != fp32.entropy  # each computed on the inputs that dtype saw


def test_accuracy_columns_are_core_level_only(write_suite, tmp_path):
    df = run_rows(write_suite, tmp_path, """
[methods.sdpa]
[methods.linformer]
k = [16]
""", level='["core", "layer"]')
    assert (df.status == "ok").all()
    core, layer = df[df.level == "core"], df[df.level == "layer"]
    assert core.entropy.notna().all() and core.uniform_rel_err.notna().all()
    assert layer.entropy.isna().all() and layer.uniform_rel_err.isna().all()
    assert layer.svd_rel_err.isna().all() and layer.rel_err.notna().all()


def test_real_regime_feeds_a_core_level_cell(write_suite, tmp_path):
    from attnbench import real

    if not real.extra_available():
        pytest.skip("needs the 'real' extra: pip install 'attnbench[real]'")
    df = run_rows(write_suite, tmp_path, """
[inputs.r]
regime = "real"
layer = [0, 3]
[methods.sdpa]
[methods.nystrom]
num_landmarks = [16]
""", n="[64, 1024]", heads="[12]", head_dim="[32]")
    ok, refused = df[df.n == 64], df[df.n == 1024]
    assert (ok.status == "ok").all() and len(ok) == 4
    assert set(ok["input.layer"]) == {0, 3} and (ok["input.regime"] == "real").all()
    assert ok.entropy.between(0, 1).all() and ok.svd_rel_err.notna().sum() == 2
    assert (refused.status == "unsupported").all()
    assert refused.reason.str.contains("n=1024 (allowed: 1..512)", regex=False).all()
