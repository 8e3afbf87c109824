"""The recurrent family (issue 22): our float64 reference forms against step-by-step recurrences, the
wrappers' layout and gate handling against independent stand-ins (no fla needed) and, where fla-core
imports, against fla's own naive references; registration, refusals and the rows they make on CPU."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from attnbench import flaops
from attnbench import recurrences as R
from attnbench.methods.recurrent import (BasedOp, DeltaOp, GatedDeltaOp, GlaOp, LinearOp, NsaOp,
                                         RecurrentCore, RetentionOp, heads_first)
from attnbench.reference import reference_attention
from attnbench.registry import REGISTRY, BuildContext, Unsupported

FLA = importlib.util.find_spec("fla") is not None and importlib.util.find_spec("einops") is not None
needs_fla = pytest.mark.skipif(not FLA, reason="fla-core not installed (pip install 'attnbench[fla]')")
RECURRENT = ["gla", "deltanet", "gated_deltanet", "retnet", "based", "fla_linear", "nsa",
             "gla_layer", "deltanet_layer", "gated_deltanet_layer", "nsa_layer"]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- our own step-by-step recurrences, in fla's (B, N, H, D) layout: the definitions ---

def step_gla(q, k, v, gk, scale):
    b, n, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    out = []
    for t in range(n):
        state = state * gk[:, t, :, :, None].exp() + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append((q[:, t, :, :, None] * scale * state).sum(-2))
    return torch.stack(out, 1)


def step_delta(q, k, v, beta, g, scale):
    b, n, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    out = []
    for t in range(n):
        state = state * g[:, t, :, None, None].exp()
        u = beta[:, t, :, None] * (v[:, t] - (k[:, t, :, :, None] * state).sum(-2))
        state = state + k[:, t, :, :, None] * u[:, :, None, :]
        out.append((q[:, t, :, :, None] * scale * state).sum(-2))
    return torch.stack(out, 1)


@pytest.mark.parametrize("chunk", [7, 64])
def test_gated_linear_matches_its_recurrence(chunk):
    q, k, v = (rand(2, 3, 50, 8, seed=s) for s in range(3))
    gk = F.logsigmoid(rand(2, 3, 50, 8, seed=3)) / 4
    ours = R.gated_linear(q, k, v, gk, 0.3, chunk=chunk)
    step = heads_first(step_gla(*map(heads_first, (q, k, v, gk)), 0.3))
    assert torch.allclose(ours, step, rtol=0, atol=1e-12)
    # a scalar decay per head and position is the same with the decay broadcast over channels
    g = gk[..., 0]
    assert torch.allclose(R.gated_linear(q, k, v, g, 0.3, chunk=chunk),
                          R.gated_linear(q, k, v, g[..., None].expand_as(q), 0.3), atol=1e-12)


@pytest.mark.parametrize("gated", [False, True])
def test_delta_rule_matches_its_recurrence(gated):
    q, k, v = (rand(2, 2, 45, 8, seed=s) for s in range(3))
    k = R.l2norm(k)
    beta = torch.sigmoid(rand(2, 2, 45, seed=4))
    g = F.logsigmoid(rand(2, 2, 45, seed=5)) / 4 if gated else None
    ours = R.delta_rule(q, k, v, beta, g, 0.5, chunk=16)
    step = heads_first(step_delta(*map(heads_first, (q, k, v, beta,
                                                     torch.zeros_like(beta) if g is None else g)), 0.5))
    assert torch.allclose(ours, step, rtol=0, atol=1e-12)
    assert not torch.allclose(R.delta_rule(q, k, v, beta * 0.5, g, 0.5), ours, atol=1e-3)  # β matters


def test_normalized_linear_is_our_linear_attention():
    """fla_linear's reference is our `linear` in float64: the same math, so the pair compares kernels."""
    q, k, v = (rand(1, 2, 70, 8, seed=s) for s in range(3))
    linear = REGISTRY.get("linear").build(REGISTRY.get("linear").params(),
                                          BuildContext(n=70, heads=2, head_dim=8, causal=True,
                                                       dtype=torch.float64))
    ours = LinearOp().reference(q, k, v)
    assert torch.allclose(linear(q, k, v), ours, atol=1e-12)


def test_based_matches_its_materialised_definition():
    q, k, v = (rand(1, 2, 40, 8, seed=s) for s in range(3))
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    phi = (1 + s + s * s / 2).tril()
    direct = phi @ v / (phi.sum(-1, keepdim=True) + 1e-6)
    assert torch.allclose(R.based(q, k, v, 1 / math.sqrt(8), chunk=9), direct, atol=1e-12)


def test_nsa_reduces_to_softmax_and_to_its_compressed_branch():
    b, hq, hk, n, d, bs = 1, 4, 1, 48, 8, 8
    q, k, v = rand(b, hq, n, d, seed=0), rand(b, hk, n, d, seed=1), rand(b, hk, n, d, seed=2)
    one, zero = torch.ones(b, hq, n, dtype=torch.float64), torch.zeros(b, hq, n, dtype=torch.float64)
    scale = 1 / math.sqrt(d)
    # selecting every block: causal softmax attention over the group's key/value head
    full = R.nsa(q, k, v, zero, one, bs, n // bs, scale, chunk=13)
    exact = reference_attention(q, k.expand(b, hq, n, d), v.expand(b, hq, n, d), causal=True)
    assert torch.allclose(full, exact, atol=1e-12)
    # too few blocks: no longer exact
    assert (R.nsa(q, k, v, zero, one, bs, 2, scale) - exact).abs().max() > 1e-3
    # the compressed branch alone: softmax over the complete mean-pooled blocks before each query
    cmp = R.nsa(q, k, v, one, zero, bs, 2, scale)
    kc, vc = R.mean_pool(k, bs), R.mean_pool(v, bs)
    t = torch.arange(n)[:, None]
    seen = (torch.arange(n // bs) + 1) * bs - 1 <= t
    p = torch.softmax((q @ kc.transpose(-1, -2) * scale).masked_fill(~seen, float("-inf")), -1)
    assert torch.allclose(cmp, p.nan_to_num(0.0) @ vc, atol=1e-12)


# --- the wrappers: layout and gates, with stand-ins for fla's kernels ---

def stand_in(kind):
    """Functions with fla's signatures, computed by the step recurrences above (fla layout)."""
    if kind == "gla":
        return lambda q, k, v, g, scale: (step_gla(q, k, v, g.double(), scale), None)

    def delta(q, k, v, beta, scale, use_qk_l2norm_in_kernel, g=None):
        assert use_qk_l2norm_in_kernel
        g = torch.zeros_like(beta) if g is None else g.double()
        return step_delta(R.l2norm(q), R.l2norm(k), v, beta, g, scale), None
    return delta


@pytest.mark.parametrize("op,kind", [(GlaOp(), "gla"), (DeltaOp(), "delta"), (GatedDeltaOp(), "delta")])
def test_wrapper_layout_and_gates_match_the_reference_path(op, kind):
    ctx = BuildContext(n=40, heads=3, head_dim=8, causal=True, seed=5)
    core = RecurrentCore(op, ctx, kernel=stand_in(kind))
    q, k, v = (rand(2, 3, 40, 8, seed=s) for s in range(3))  # (B, H, N, D)
    out = core(q, k, v)
    assert out.shape == q.shape
    assert torch.allclose(out, core.exact_reference(q, k, v), atol=1e-12)
    # the gates reach the kernel: other gates give another output
    core._gates = {key: {name: t * 0.5 for name, t in g.items()} for key, g in core._gates.items()}
    assert not torch.allclose(core(q, k, v), out, atol=1e-6)


def test_gates_are_seeded_and_follow_their_documented_laws():
    ctx = BuildContext(n=64, heads=4, head_dim=16, causal=True, seed=3)
    a = RecurrentCore(GlaOp(), ctx).gates(8, 256, 4, 16, torch.float32, "cpu")["gk"]
    b = RecurrentCore(GlaOp(), ctx).gates(8, 256, 4, 16, torch.float32, "cpu")["gk"]
    c = RecurrentCore(GlaOp(), BuildContext(n=64, heads=4, head_dim=16, seed=4)).gates(
        8, 256, 4, 16, torch.float32, "cpu")["gk"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 256, 4, 16) and (a < 0).all()
    expected = float(F.logsigmoid(torch.randn(10**6, generator=torch.Generator().manual_seed(0))).mean()) / 16
    assert float(a.mean()) == pytest.approx(expected, rel=0.02)  # logsigmoid(z)/16, z ~ N(0, 1)
    d = RecurrentCore(GatedDeltaOp(), ctx).gates(8, 256, 4, 16, torch.bfloat16, "cpu")
    assert d["beta"].dtype == torch.bfloat16 and d["beta"].shape == (8, 256, 4)
    assert 0 < float(d["beta"].min()) and float(d["beta"].max()) < 1
    assert float(d["beta"].float().mean()) == pytest.approx(0.5, abs=0.01)
    assert d["g"].dtype == torch.float32 and (d["g"] < 0).all()


def test_nsa_core_reads_the_first_key_value_head_of_each_group():
    ctx = BuildContext(n=32, heads=4, head_dim=8, causal=True)
    core = RecurrentCore(NsaOp(group=2, block_size=8, block_counts=2), ctx)
    q, k, v = (rand(1, 4, 32, 8, seed=s) for s in range(3))
    base = core.exact_reference(q, k, v)
    k2 = k.clone()
    k2[:, 1] += rand(1, 32, 8, seed=9)  # second head of the first group: unused
    assert torch.equal(core.exact_reference(q, k2, v), base)
    k2[:, 0] += rand(1, 32, 8, seed=9)  # the group's first head: used
    assert not torch.allclose(core.exact_reference(q, k2, v), base)


# --- fla's refusals, availability and the rows ---

FLA_GUARD = ("Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs produces incorrect results for gated "
             "chunk_bwd_dqkwg (see #640). Please upgrade Triton to >= 3.7.1 or install tilelang: "
             "`pip install tilelang`")


def test_a_refused_backward_is_unsupported_in_fla_words():
    def refusing():
        x = torch.ones(2, requires_grad=True)

        class Guard(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t):
                return t * 2

            @staticmethod
            def backward(ctx, g):
                raise RuntimeError(FLA_GUARD)
        return Guard.apply(x)

    status, why = flaops.backward_probe(refusing)
    assert status == "refused" and "produces incorrect results" in why
    assert flaops.backward_probe(lambda: torch.ones(2, requires_grad=True) * 2) == ("ok", None)
    status, why = flaops.backward_probe(lambda: torch.ones(2) * 2)  # no grad: a failure, not a refusal
    assert status == "failed" and "RuntimeError" in why

    ctx = BuildContext(n=16, heads=2, head_dim=8, causal=True)
    core = RecurrentCore(GatedDeltaOp(), ctx, kernel=stand_in("delta"))
    core.backward_status = ("refused", FLA_GUARD)
    q, k, v = (rand(1, 2, 16, 8, seed=s) for s in range(3))
    core(q, k, v)  # forward alone still runs
    with pytest.raises(Unsupported, match="fla refuses the backward of gated_deltanet here: Triton"):
        core(q.requires_grad_(), k, v)


def test_gate_check_fails_loudly_and_passes_rounding():
    ref = rand(1, 64, 2, 8)
    assert flaops.check_gate("gla", ref.float(), ref, torch.float32) < 1e-6
    with pytest.raises(flaops.GateFailed, match="gla: fla's kernel disagrees"):
        flaops.check_gate("gla", ref * 1.1, ref, torch.bfloat16)
    with pytest.raises(flaops.GateFailed):
        flaops.check_gate("gla", ref * float("nan"), ref, torch.bfloat16)


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_methods_are_declared_as_what_they_are(name):
    spec = REGISTRY.get(name)
    assert spec.family == "recurrent" and spec.approximates is None and not spec.exact
    assert spec.devices == ("cuda",) and "fla" in spec.requires
    assert spec.install_hint == "pip install 'attnbench[fla]'"
    ctx = BuildContext(n=256, heads=16, head_dim=64, causal=False)
    why = spec.unsupported_reason(spec.params(), ctx)
    assert why is not None  # fla missing, the CPU, or non-causal: never runs here
    cuda = BuildContext(n=256, heads=16, head_dim=64, causal=False, device=torch.device("cuda"))
    if spec.unavailable_reason() is None:
        assert "causal by construction" in spec.unsupported_reason(spec.params(), cuda)
        cuda = BuildContext(n=256, heads=16, head_dim=64, causal=True, device=torch.device("cuda"))
        assert spec.unsupported_reason(spec.params(), cuda) is None
    else:
        assert spec.unavailable_reason().endswith("not installed (pip install 'attnbench[fla]')")


def test_nsa_shape_rules():
    spec = REGISTRY.get("nsa")
    rule = spec.constraints[1]
    assert "multiple of group=16" in rule(spec.params(), BuildContext(n=256, heads=12, head_dim=64))
    assert rule(spec.params(), BuildContext(n=256, heads=32, head_dim=64)) is None


CAUSAL_SUITE = """
name = "tiny"
baseline = "sdpa"
[sweep]
n = [64]
batch = [1]
heads = [2]
head_dim = [16]
mode = ["fwd", "fwd_bwd"]
causal = [true]
[timing]
warmup = 1
warmup_s = 0.0
repeats = 2
"""


def test_cpu_rows_say_why_and_list_shows_availability(write_suite, tmp_path, capsys):
    from attnbench.cli import main
    from attnbench.store import load_results

    assert main(["list", "methods"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "gla" in out and "fla_linear" in out and "nsa_layer" in out
    assert ("runs on cuda only" in out) or ("fla, einops, triton not installed" in out)
    suite = write_suite(CAUSAL_SUITE + "[methods.sdpa]\n[methods.gla]\n[methods.retnet]\n")
    assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress", "--no-table"]) == 0
    df = load_results(next(tmp_path.glob("tiny/*")))
    rec = df[df["method"].isin(["gla", "retnet"])]
    assert (rec["status"] == "unsupported").all()
    assert rec["reason"].str.contains("runs on cuda|not installed").all()


# --- against fla's own naive references (pure torch), where fla-core imports ---

OPS = [GlaOp(), DeltaOp(), GatedDeltaOp(), RetentionOp(), BasedOp(), LinearOp(),
       NsaOp(group=16, block_size=16, block_counts=3)]


@needs_fla
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_wrapper_reference_matches_fla_naive(op):
    """Our layout, our gates, fla's naive reference in fp32 vs our float64 reference form: the same
    numbers up to fp32 rounding. A transposed gate or a missed normalisation would not be."""
    import warnings

    heads = 16 if isinstance(op, NsaOp) else 3
    ctx = BuildContext(n=80, heads=heads, head_dim=16, causal=True, seed=2)
    core = RecurrentCore(op, ctx)
    q, k, v = (rand(2, heads, 80, 16, seed=s) for s in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = core.naive(flaops.load(op.naive_path), q, k, v)
    ours = core.exact_reference(q, k, v)
    assert flaops.rel_err(naive, ours) < 2e-5, op.name


# --- the factories' build steps and the layers, with fla's functions stood in for ---

def fake_load(kernels):
    """flaops.load that hands out stand-ins: a kernel by its path, fla's naive forms as our steps
    (in fla's conventions: q, k arrive normalised; delta_rule_recurrence takes (B, H, N, D))."""
    def load(path):
        if path in kernels:
            return kernels[path]
        scale = lambda q: q.shape[-1] ** -0.5  # noqa: E731
        if "gla" in path:
            return lambda q, k, v, gk: (step_gla(q, k, v, gk, scale(q)), None)
        if path.endswith("delta_rule_recurrence"):
            return lambda q, k, v, beta: (heads_first(step_delta(
                *map(heads_first, (q, k, v, beta)), torch.zeros_like(heads_first(beta)),
                scale(q))), None)
        return lambda q, k, v, beta, g: (step_delta(q, k, v, beta, g, scale(q)), None)
    return load


def test_factory_gates_probes_and_warms_before_anything_is_timed(monkeypatch):
    from attnbench.methods import recurrent

    monkeypatch.setattr(flaops, "load", fake_load({GlaOp.kernel_path: stand_in("gla")}))
    ctx = BuildContext(n=48, heads=2, head_dim=8, causal=True, dtype=torch.float64, batch=2)
    core = recurrent.build_core(GlaOp(), ctx)
    stats = core.stats()
    assert stats["fla_gate_rel_err"] < 1e-6 and stats["fla_backward"] == "ok"
    assert stats["autotune"].startswith("at build: forward and backward")
    assert core._gates and next(iter(core._gates))[:2] == (2, 48)  # warmed at the cell's shape

    def wrong(q, k, v, g, scale):  # a kernel off by 10%: the gate stops it
        return step_gla(q, k, v, g.double(), scale) * 1.1, None
    monkeypatch.setattr(flaops, "load", fake_load({GlaOp.kernel_path: wrong}))
    with pytest.raises(flaops.GateFailed, match="rel_err 0.1"):
        recurrent.build_core(GlaOp(), ctx)


def test_factory_records_fla_refusing_the_backward(monkeypatch):
    from attnbench.methods import recurrent

    class Refuse(torch.autograd.Function):
        @staticmethod
        def forward(c, t):
            return t.clone()

        @staticmethod
        def backward(c, g):
            raise RuntimeError(FLA_GUARD)

    def kernel(q, k, v, beta, scale, use_qk_l2norm_in_kernel, g=None):
        return Refuse.apply(stand_in("delta")(q, k, v, beta, scale, True, g)[0]), None

    monkeypatch.setattr(flaops, "load", fake_load({GatedDeltaOp.kernel_path: kernel}))
    ctx = BuildContext(n=32, heads=2, head_dim=8, causal=True, dtype=torch.float64)
    core = recurrent.build_core(GatedDeltaOp(), ctx)
    assert core.stats()["fla_backward"].startswith("refused: Triton >= 3.4.0")
    assert "forward at the cell's shape" in core.stats()["autotune"]
    q = rand(1, 2, 32, 8).requires_grad_()
    with pytest.raises(Unsupported, match="produces incorrect results"):
        core(q, q, q)


@pytest.mark.parametrize("op", [GlaOp(), DeltaOp(), GatedDeltaOp()], ids=lambda o: o.name)
def test_layer_projections_and_gates_match_the_layer_reference(monkeypatch, op):
    from attnbench.methods.recurrent import layers as recurrent_layers

    kernels = {GlaOp.kernel_path: stand_in("gla"), DeltaOp.kernel_path: stand_in("delta"),
               GatedDeltaOp.kernel_path: stand_in("delta")}
    monkeypatch.setattr(flaops, "load", fake_load(kernels))
    ctx = BuildContext(n=24, heads=2, head_dim=8, causal=True, dtype=torch.float64, seed=1)
    layer = recurrent_layers.build_layer(op, ctx)
    x = rand(2, 24, 16, seed=7)
    out = layer(x)
    assert out.shape == x.shape
    assert torch.allclose(out, layer.exact_reference(x), atol=1e-10)
    # the gates come from x: the same x through another layer seed gives another output
    other = recurrent_layers.build_layer(op, BuildContext(n=24, heads=2, head_dim=8, causal=True,
                                                          dtype=torch.float64, seed=2))
    assert not torch.allclose(other(x), out, atol=1e-6)
    assert layer.stats()["fla_backward"] == "ok"


def test_linear_runs_fla_chunked_kernel_from_4k_on_cuda_and_says_so(monkeypatch):
    """Issue 22, same math best kernel: causal `linear` hands its own features to fla's
    chunk_linear_attn from n = 4096 on CUDA; the output is the same attention, rows name the kernel."""
    import importlib.util as iu

    from attnbench.methods import performer

    real_find_spec = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: object() if name == "fla" else
                        real_find_spec(name, *a))

    def chunk_linear_attn(q, k, v, normalize):  # fla's signature and layout
        assert normalize and q.is_contiguous()
        return heads_first(R.normalized_linear(*map(heads_first, (q, k, v)))), None

    monkeypatch.setattr(flaops, "load", lambda path: chunk_linear_attn)
    p = performer.LinearParams()
    cuda = torch.device("cuda")
    fla = performer.LinearAttention(p, BuildContext(n=4096, heads=2, head_dim=8, causal=True,
                                                    device=cuda))
    assert fla.fla is chunk_linear_attn and fla.stats()["kernel"].startswith("fla chunk_linear_attn")
    for ctx in (BuildContext(n=2048, heads=2, head_dim=8, causal=True, device=cuda),
                BuildContext(n=4096, heads=2, head_dim=8, causal=False, device=cuda),
                BuildContext(n=4096, heads=2, head_dim=8, causal=True)):
        assert performer.LinearAttention(p, ctx).fla is None
    ours = performer.LinearAttention(p, BuildContext(n=64, heads=2, head_dim=8, causal=True))
    assert ours.stats() == {"kernel": "torch chunked"}
    q, k, v = (rand(1, 2, 64, 8, seed=s) for s in range(3))
    assert torch.allclose(fla(q, k, v), ours(q, k, v), atol=1e-10)


@pytest.mark.parametrize("method", ["gla", "gla_layer"])
def test_a_train_model_warms_fla_kernels_in_the_dtype_training_calls_them_with(monkeypatch, method):
    """A train cell builds its model in fp32 and trains it under bf16 autocast; Triton's autotune key
    holds the dtypes, so a warm-up in fp32 would tune kernels training never calls and leave the bf16
    ones to be tuned inside the first training step. The gate, the backward probe and the warm-up at
    the cell's shape must all call fla's kernel with what training gives it: bf16 q, k, v."""
    from attnbench.train.model import build_model, method_modules

    calls = []

    def kernel(q, k, v, g, scale):  # fla's chunk_gla signature, recording what it is called with
        calls.append((tuple(q.shape), q.dtype, k.dtype, v.dtype))
        out = step_gla(q.double(), k.double(), v.double(), g.double(), scale)
        return out.to(q.dtype), None

    monkeypatch.setattr(flaops, "load", fake_load({GlaOp.kernel_path: kernel}))
    spec = REGISTRY.get(method)
    n, batch, heads, d_model = 32, 2, 2, 16

    def build(amp):
        calls.clear()
        model = build_model(spec, spec.params(), vocab=16, outputs=16, n=n, d_model=d_model,
                            heads=heads, layers=1, ffn_dim=32, pooled=False, pad=None,
                            device=torch.device("cpu"), seed=0, batch=batch, causal=True, amp=amp)
        return model, list(calls)

    model, seen = build(torch.bfloat16)
    at_cell = [c for c in seen if c[0][0] == batch and c[0][1] == n]
    assert at_cell, seen  # warmed at the cell's shape (B, N, H, D)
    assert all(dt == torch.bfloat16 for c in seen for dt in c[1:]), seen
    assert "under bfloat16 autocast" in method_modules(model)[0].stats()["autotune"]
    # training runs under the autocast: the kernel sees the dtypes the warm-up tuned
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 16, (batch, n)))
    assert {c[1] for c in calls} == {torch.bfloat16}
    # without autocast (fp32 training) everything stays fp32
    _, seen = build(None)
    assert all(dt == torch.float32 for c in seen for dt in c[1:]), seen
