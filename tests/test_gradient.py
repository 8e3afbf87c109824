"""Gradient error of fwd_bwd cells (issue 22): float64 reference gradients, the columns rows carry, an
exact method at rounding level and an approximation well above it, and operators that approximate
nothing measured against themselves."""
from __future__ import annotations

import pytest
import torch

from attnbench.gradient import input_gradients, relative_errors, softmax_gradients
from attnbench.reference import reference_attention
from attnbench.registry import REGISTRY, BuildContext, register_method

SUITE = """
name = "grads"
baseline = "sdpa"
[sweep]
n = [96]
batch = [1]
heads = [2]
head_dim = [16]
mode = ["fwd", "fwd_bwd"]
causal = [true]
level = [{levels}]
[timing]
warmup = 1
warmup_s = 0.0
repeats = 2
"""


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_softmax_gradients_equal_autograd_of_the_reference(causal):
    q, k, v, go = (rand(2, 2, 30, 8, seed=s) for s in range(4))
    ours = softmax_gradients(q, k, v, go, causal, chunk=7)
    direct = input_gradients(lambda *t: reference_attention(*t, causal=causal), [q, k, v], go)
    for a, b in zip(ours, direct):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_relative_errors_per_input_and_overall():
    refs = [rand(4, 5, seed=s) for s in range(3)]
    assert relative_errors(refs, refs, "qkv") == {"dq_rel_err": 0.0, "dk_rel_err": 0.0,
                                                  "dv_rel_err": 0.0, "grad_rel_err": 0.0}
    grads = [refs[0] * 1.01, refs[1], refs[2]]
    row = relative_errors(grads, refs, "qkv")
    assert row["dq_rel_err"] == pytest.approx(0.01) and row["dk_rel_err"] == 0.0
    assert 0 < row["grad_rel_err"] < row["dq_rel_err"]


def run_rows(write_suite, tmp_path, methods: str, levels: str = '"core"'):
    from attnbench.cli import main
    from attnbench.store import load_results

    suite = write_suite(SUITE.format(levels=levels) + methods)
    assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress", "--no-table"]) == 0
    return load_results(next(tmp_path.glob("grads/*")))


def test_exact_gradients_are_at_rounding_level_and_an_approximation_well_above(write_suite, tmp_path):
    df = run_rows(write_suite, tmp_path, "[methods.sdpa]\n[methods.naive]\n[methods.local]\n"
                  "window = [8]\n", levels='"core", "layer"')
    assert (df["status"] == "ok").all(), df[["method", "reason"]]
    bwd, fwd = df[df["mode"] == "fwd_bwd"], df[df["mode"] == "fwd"]
    assert fwd["grad_rel_err"].isna().all()  # forward cells measure no gradients
    core, layer = bwd[bwd["level"] == "core"].set_index("method"), bwd[bwd["level"] == "layer"]
    for name in ("sdpa", "naive"):
        assert core.loc[name, "grad_rel_err"] < 1e-5  # fp32 rounding
        for col in ("dq_rel_err", "dk_rel_err", "dv_rel_err"):
            assert core.loc[name, col] < 1e-5
    assert core.loc["local", "grad_rel_err"] > 0.1  # a window of 8 out of 96: far from exact
    assert core.loc["local", "grad_rel_err"] > 1e4 * core.loc["local", "baseline_grad_rel_err"]
    assert core["baseline_grad_rel_err"].max() < 1e-5
    assert layer["dx_rel_err"].notna().all() and layer["dq_rel_err"].isna().all()
    assert (layer["grad_rel_err"] == layer["dx_rel_err"]).all()
    lay = layer.set_index("method")
    assert lay.loc["sdpa", "grad_rel_err"] < 1e-5 < 1e-1 < lay.loc["local", "grad_rel_err"]


@pytest.fixture(scope="module")
def own_reference_method():
    """A CPU operator that approximates nothing: GLA through the recurrent wrapper, its kernel a
    step-by-step fp32 recurrence standing in for fla's."""
    from attnbench.methods.recurrent import OWN, GlaOp, RecurrentCore, causal_only

    def kernel(q, k, v, g, scale):
        b, n, h, dk = q.shape
        state = q.new_zeros(b, h, dk, v.shape[-1])
        out = []
        for t in range(n):
            decay = g[:, t, :, :, None].to(q.dtype).exp()  # the gates are drawn in fp32
            state = state * decay + k[:, t, :, :, None] * v[:, t, :, None, :]
            out.append((q[:, t, :, :, None] * scale * state).sum(-2))
        return torch.stack(out, 1), None

    if "t_gla_cpu" not in REGISTRY:
        @register_method("t_gla_cpu", family="recurrent", exact=False, approximates=None,
                         constraints=(causal_only,), limit=OWN)
        def build(p, ctx: BuildContext):
            return RecurrentCore(GlaOp(), ctx, kernel=kernel)
    return "t_gla_cpu"


def test_an_operator_in_its_own_right_is_measured_against_itself(write_suite, tmp_path,
                                                                 own_reference_method):
    df = run_rows(write_suite, tmp_path, f"[methods.sdpa]\n[methods.{own_reference_method}]\n")
    mine = df[df["method"] == own_reference_method].set_index("mode")
    assert (mine["status"] == "ok").all(), mine["reason"]
    assert mine["rel_err"].isna().all()  # no misleading error against softmax attention
    assert (mine["ref_rel_err"] < 1e-5).all()  # fp32 against its own float64 form
    assert mine["error_vs"].str.contains("not an approximation of softmax").all()
    assert mine["baseline_rel_err"].isna().all()
    assert mine.loc["fwd_bwd", "grad_rel_err"] < 1e-4
    assert mine.loc["fwd_bwd", "dk_rel_err"] < 1e-4
    assert pd_isna(mine.loc["fwd_bwd", "baseline_grad_rel_err"])


def pd_isna(value) -> bool:
    return value != value or value is None


def test_a_causal_only_operator_passes_the_conformance_kit(own_reference_method):
    """`attnbench check` builds a causal-only method causal throughout (it refuses the rest)."""
    from attnbench.conformance import check_method

    report = check_method(REGISTRY.get(own_reference_method), "cpu", dtypes=["fp32"])
    rows = {r.check: (r.status, r.detail) for r in report.rows}
    assert report.ok, [(c, s, d) for c, (s, d) in rows.items() if s != "pass"]
    assert rows["limit"][0] == "pass" and "non-causal" not in rows["limit"][1]
    assert "exact_reference" in rows["limit"][1]
    assert rows["causal"][0] == "pass" and rows["backward"][0] == "pass"
