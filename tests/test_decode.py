"""Decoding (issue 23): every built-in decode method steps like its causal forward (fp32, tight
tolerance), a method that leaks the future or drops a cache entry fails that check, decode and
prefill cells run through the suite and their rows carry time per token and state bytes (constant
for a recurrent state, linear in n for a KV cache), and suites validate the new keys."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnbench.consistency import DECODE_TOL, decode_consistency
from attnbench.conformance import check_method
from attnbench.decode import Decoder
from attnbench.decode_state import KVCache, RingCache, tensor_bytes
from attnbench.errors import SuiteError
from attnbench.levels import build_level
from attnbench.registry import REGISTRY, NoParams, Registry, register_method
from attnbench.runner import run_suite
from attnbench.store import load_results
from attnbench.suite import Case, Suite, expand

# small, non-trivial params: windows and buckets smaller than the sequence
PARAMS = {"naive": {}, "sdpa": {}, "flex": {}, "local": {"window": 8}, "linear": {"chunk_size": 16},
          "performer": {"chunk_size": 16}, "lsh": {"bucket_size": 8, "n_hashes": 3}}
N = {"flex": 24}  # FlexAttention's eager CPU path takes ~80 ms a step: fewer steps


def test_every_builtin_decode_method_is_checked_here():
    declared = {s.name for s in REGISTRY.specs() if s.decode and s.origin.startswith("attnbench.")}
    assert declared == set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_stepping_gives_the_causal_forward(name):
    spec = REGISTRY.get(name)
    result = decode_consistency(spec, spec.params(**PARAMS[name]), n=N.get(name, 64))
    assert result.ok, result.detail()
    assert result.tol == DECODE_TOL[torch.float32] and result.rel_err < 1e-5


@pytest.mark.parametrize("name,params,dtype", [
    ("lsh", {"bucket_size": 8, "n_hashes": 3, "dedup": False}, torch.float32),
    ("lsh", {"bucket_size": 8, "n_hashes": 1}, torch.float32),
    ("lsh", {"bucket_size": 64, "n_hashes": 2}, torch.float32),  # one bucket: every past key
    ("performer", {"positive": False, "chunk_size": 16}, torch.float64),
    ("performer", {"chunk_size": 16}, torch.float64),
    ("local", {"window": 100}, torch.float32),  # wider than the sequence
])
def test_stepping_variants(name, params, dtype):
    spec = REGISTRY.get(name)
    result = decode_consistency(spec, spec.params(**params), n=64, dtype=dtype)
    assert result.ok, result.detail()


def test_a_long_prefix_is_folded_in_chunks(monkeypatch):
    """The recurrent states fold a long prefix a chunk at a time; chunk edges must not show."""
    import attnbench.methods.performer.state as perf

    monkeypatch.setattr(perf, "PREFIX_CHUNK", 5)
    for name in ("linear", "performer"):
        spec = REGISTRY.get(name)
        result = decode_consistency(spec, spec.params(chunk_size=16), n=48, prefixes=(37,))
        assert result.ok, (name, result.detail())


# mutations: a step that drops a cache entry, a forward that sees the future

def _register(name, module_cls, reg):
    @register_method(name, family="exact", exact=True, params=NoParams, decode=True, registry=reg)
    def build(p, ctx):
        return module_cls(ctx.causal)

    return build.spec


class Honest(nn.Module):
    def __init__(self, causal):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)

    def init_state(self, q, k, v, capacity=None):
        return KVCache(k, v, capacity)

    def step(self, q_t, k_t, v_t, state):
        state.append(k_t, v_t)
        return F.scaled_dot_product_attention(q_t, state.keys(), state.values()), state


class DropsOldest(Honest):
    """Forgets the first token of the cache once it holds more than four."""

    def step(self, q_t, k_t, v_t, state):
        state.append(k_t, v_t)
        start = 1 if state.length > 4 else 0
        return F.scaled_dot_product_attention(q_t, state.keys()[:, :, start:],
                                              state.values()[:, :, start:]), state


class SkipsNewest(Honest):
    """Attends before it writes the new token: the query misses itself."""

    def step(self, q_t, k_t, v_t, state):
        out = F.scaled_dot_product_attention(q_t, state.keys(), state.values())
        state.append(k_t, v_t)
        return out, state


class LeaksForward(Honest):
    """The causal forward lets each query see one token ahead."""

    def forward(self, q, k, v):
        n = q.shape[-2]
        allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@pytest.mark.parametrize("cls", [DropsOldest, SkipsNewest, LeaksForward])
def test_mutations_fail_the_consistency_check(cls):
    reg = Registry()
    assert decode_consistency(_register("honest", Honest, reg), n=32).ok
    result = decode_consistency(_register("mutant", cls, reg), n=32)
    assert not result.ok and result.rel_err > 100 * result.tol, result.detail()


def test_check_fails_a_plugin_whose_step_drops_a_cache_entry():
    reg = Registry()
    report = check_method(_register("t_drops", DropsOldest, reg), dtypes=["fp32"])
    row = report.row("decode")
    assert row.status == "fail" and "max rel error" in row.detail
    assert check_method(_register("t_honest", Honest, reg), dtypes=["fp32"]).row("decode").status \
        == "pass"
    # a method without the hooks is skipped with its reason, bidirectional ones say why
    assert "not causal" in REGISTRY.get("linformer").decode_reason()
    assert "whole past" in REGISTRY.get("bigbird").decode_reason()


# layer level: the layer's projections around the step

@pytest.mark.parametrize("name", ["sdpa", "linear", "local"])
def test_layer_level_steps_give_the_causal_layer(name):
    spec = REGISTRY.get(name)
    n, b, h, d = 40, 2, 2, 8
    layer = build_level(spec, spec.params(**PARAMS[name]), "layer", n=n, heads=h, head_dim=d,
                        layers=1, ffn_dim=0, dtype=torch.float32, device=torch.device("cpu"),
                        causal=True, seed=3)
    x = torch.randn(b, n, h * d, generator=torch.Generator().manual_seed(1))
    dec = Decoder(layer, "layer")
    with torch.no_grad():
        full = layer(x)
        state = dec.init((x[:, :10],), capacity=n)
        outs = []
        for t in range(10, n):
            out, state = dec.step((x[:, t:t + 1],), state)
            outs.append(out)
    stepped = torch.cat(outs, dim=1)
    assert (stepped - full[:, 10:]).abs().max() <= 2e-5 * full.abs().max()


# state objects

def test_caches_hold_what_they_should():
    k = torch.arange(2 * 1 * 5 * 3, dtype=torch.float32).view(2, 1, 5, 3)
    cache = KVCache(k, -k, capacity=7)
    assert cache.k.shape[2] == 7 and torch.equal(cache.keys(), k)
    cache.append(k[:, :, :1] + 100, k[:, :, :1])
    assert cache.length == 6 and torch.equal(cache.keys()[:, :, 5], k[:, :, 0] + 100)
    for _ in range(2):  # past the capacity it doubles
        cache.append(k[:, :, :1], k[:, :, :1])
    assert cache.length == 8 and cache.k.shape[2] == 14
    ring = RingCache(k, k, window=3)  # tokens 2, 3, 4 in slots 2, 0, 1
    assert torch.equal(ring.k[:, :, [2, 0, 1]], k[:, :, 2:]) and int(ring.count) == 5
    ring.append(k[:, :, :1] + 50, k[:, :, :1])  # token 5 -> slot 2, replacing token 2
    assert torch.equal(ring.k[:, :, 2], k[:, :, 0] + 50) and bool(ring.valid().all())
    assert tensor_bytes({"a": cache, "b": [cache.k]}) == 2 * cache.k.untyped_storage().nbytes()


# cells through the runner

DECODE_SUITE = {
    "name": "dec", "baseline": "sdpa",
    "sweep": {"n": [64, 128, 256], "batch": [2], "heads": [2], "head_dim": [16],
              "mode": ["decode"], "level": ["core", "layer", "model"]},
    "decode": {"steps": 3, "warmup": 1},
    "model": {"layers": 2, "ffn_dim": 32},
    "methods": {"sdpa": {}, "linear": {}, "local": {"window": [32]}, "linformer": {"k": [16]},
                "bigbird": {"block": [16], "num_global": [16]}},
}


@pytest.fixture(scope="module")
def decode_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dec")
    run_suite(Suite.from_dict(DECODE_SUITE), "cpu", out=out, progress=False)
    return load_results(next(out.glob("dec/*")))


def test_decode_rows_carry_time_per_token_and_state(decode_run):
    df = decode_run
    ok = df[df["status"] == "ok"]
    assert set(ok["method"]) == {"sdpa", "linear", "local"} and set(ok["level"]) == {"core", "layer"}
    assert (ok["time_per_token_ms"] > 0).all() and (ok["causal"] == True).all()  # noqa: E712
    assert ok["tokens_per_s"].round(6).equals((2 * 1e3 / ok["time_per_token_ms"]).round(6))
    assert (ok["state_bytes_per_seq"] * 2 == ok["state_bytes"]).all()
    assert (ok["state_tokens"] == ok["n"] + 1 + 3 + 1).all()  # warm-up, timed steps, memory step
    for level in ("core", "layer"):
        per = {m: ok[(ok["method"] == m) & (ok["level"] == level)].set_index("n")
               for m in ("sdpa", "linear", "local")}
        # a recurrent state and a window do not grow with n ...
        assert per["linear"]["state_bytes"].nunique() == 1
        assert per["local"]["state_bytes"].nunique() == 1
        # ... a KV cache grows linearly: 2 (k and v) x heads x head_dim x 4 bytes per token held
        sdpa = per["sdpa"]
        per_token = sdpa["state_bytes_per_seq"] / sdpa["state_tokens"]
        assert (per_token == 2 * 2 * 16 * 4).all()
        assert sdpa.at[256, "state_bytes"] > 3 * sdpa.at[64, "state_bytes"]
        assert per["linear"]["state_bytes_per_seq"].iloc[0] == 2 * 16 * 17 * 4  # H x D x (D+1) fp32


def test_decode_rows_that_cannot_run_say_why(decode_run):
    df = decode_run
    reason = {(r.method, r.level): r.reason for r in df[df["status"] == "unsupported"].itertuples()}
    assert "no causal variant" in reason[("linformer", "core")]
    assert "whole past" in reason[("bigbird", "core")]
    assert "core and layer level" in reason[("sdpa", "model")]


def test_prefill_is_the_causal_forward(tmp_path):
    suite = {"name": "pre", "sweep": {"n": [64], "heads": [2], "head_dim": [8], "mode": ["prefill"],
                                      "causal": [False, True]},
             "timing": {"repeats": 2, "warmup": 1, "warmup_s": 0.0},
             "methods": {"sdpa": {}, "linear": {}}}
    cases = expand(Suite.from_dict(suite))
    assert len(cases) == 2 and all(c.causal and c.mode == "prefill" for c in cases)  # listed once
    run_suite(Suite.from_dict(suite), "cpu", out=tmp_path, progress=False)
    df = load_results(next(tmp_path.glob("pre/*")))
    assert set(df["status"]) == {"ok"} and set(df["mode"]) == {"prefill"}
    assert df.set_index("method").at["sdpa", "rel_err"] < 1e-6  # against causal float64 attention


# suites: new keys validated, old cell ids unchanged

def _suite(**over):
    base = {"name": "s", "sweep": {"n": [64, 128]}, "methods": {"sdpa": {}}}
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return Suite.from_dict(base)


@pytest.mark.parametrize("over,words", [
    ({"decode": {"steps": 0}}, "decode.steps = 0: expected an integer from 1"),
    ({"decode": {"warmup": -1}}, "decode.warmup = -1: expected an integer from 0"),
    ({"decode": {"tokens": 3}}, "unknown key"),
    ({"sweep": {"mode": ["decoding"]}}, "allowed: fwd, fwd_bwd, prefill, decode"),
    ({"sweep": {"total_tokens": [192]}}, "not a whole multiple of n = 128"),
    ({"sweep": {"total_tokens": [256], "batch": [2]}}, "give batch or total_tokens, not both"),
    ({"sweep": {"total_tokens": [256], "batching": ["capacity"]}}, "use one or the other"),
    ({"inputs": {"docs": {"regime": "gaussian", "lengths": "zipf:3"}}}, "inputs.docs.lengths"),
    ({"inputs": {"docs": {"regime": "gaussian", "lengths": "uniform:9-3"}}}, "needs A <= B"),
])
def test_bad_decode_keys_are_named(over, words):
    with pytest.raises(SuiteError, match=words.replace("(", r"\(")):
        _suite(**over)


def test_old_cell_ids_do_not_change():
    case = expand(_suite())[0]
    old = dataclasses.asdict(case)
    old.pop("total_tokens")
    old.pop("train")  # fields added later stay out of the id at their defaults
    old["params"], old["input"] = case.params_dict, case.input_dict
    blob = json.dumps(old, sort_keys=True, default=str)
    assert case.cell_id == hashlib.sha1(blob.encode()).hexdigest()[:16]
    assert "total_tokens" not in case.identity()
    assert Case.from_identity(case.identity()) == case


def test_total_tokens_sets_the_batch_and_keeps_one_family():
    cases = expand(_suite(sweep={"n": [64, 128, 256], "total_tokens": [512]}))
    assert [(c.n, c.batch) for c in cases] == [(64, 8), (128, 4), (256, 2)]
    assert len({c.family_key() for c in cases}) == 1 and all(c.total_tokens == 512 for c in cases)
    assert all(Case.from_identity(c.identity()) == c for c in cases)
    assert math.isclose(sum(c.n * c.batch for c in cases) / 3, 512)
