"""Malformed suites are rejected before anything runs: file, key, bad value and what is allowed."""
import pytest

from attnbench.cli import main
from attnbench.suite import Case, expand, load_suite

GOOD = """
name = "ok"
baseline = "sdpa"
[sweep]
n = [64, 128]
heads = [2]
head_dim = [16]
[methods.sdpa]
[methods.naive]
"""

# (suite text, fragments the message must contain)
MALFORMED = [
    ("name = 'x'\n[sweep\nn=[1]", ["not valid TOML"]),
    (GOOD.replace('name = "ok"', ""), ["name", "required"]),
    (GOOD.replace('name = "ok"', 'name = "../../escape"'), ["name", "../../escape", "letters"]),
    (GOOD.replace("n = [64, 128]", "n = [64, -3]"), ["sweep.n", "-3", "integers >= 1"]),
    (GOOD.replace("n = [64, 128]", 'n = ["long"]'), ["sweep.n", "long", "integers"]),
    (GOOD.replace("n = [64, 128]", "n = []"), ["sweep.n", "non-empty"]),
    (GOOD.replace("heads = [2]", "heads = [2]\ndtype = ['fp8']"), ["sweep.dtype", "fp8",
                                                                  "fp32, fp16, bf16"]),
    (GOOD.replace("heads = [2]", "heads = [2]\nmode = ['train']"), ["sweep.mode", "train",
                                                                   "fwd, fwd_bwd"]),
    (GOOD.replace("heads = [2]", "heads = [2]\nseqlen = [3]"), ["sweep.seqlen", "unknown key",
                                                               "head_dim"]),
    (GOOD.replace("[methods.naive]", "[methods.linformr]"), ["methods.linformr", "Did you mean",
                                                             "linformer"]),
    (GOOD.replace("[methods.naive]", "[methods.sdpa2]\n"), ["methods.sdpa2", "Unknown method"]),
    (GOOD + "backend = ['warp']\n", ["methods.naive.backend", "unknown param", "(none)"]),
    (GOOD.replace("[methods.sdpa]", "[methods.sdpa]\nbackend = ['warp']"),
     ["methods.sdpa.backend", "warp", "auto, math, flash, efficient, cudnn"]),
    (GOOD.replace("[methods.sdpa]", "[methods.sdpa]\nbackend = 3"), ["methods.sdpa.backend", "3"]),
    (GOOD.replace('baseline = "sdpa"', 'baseline = "nope"'), ["baseline", "nope", "Unknown method"]),
    (GOOD + "[timing]\nrepeats = 0\n", ["timing.repeats", "0", "integer >= 1"]),
    (GOOD + "[timing]\nrepats = 3\n", ["timing.repats", "unknown key", "repeats"]),
    (GOOD + "[error]\nenabled = 'yes'\n", ["error.enabled", "yes", "true or false"]),
    (GOOD.replace("[sweep]", "sweep = 3\n[x]"), ["sweep"]),
    ('name = "m"\n[sweep]\nn = [8]\n', ["methods", "required"]),
    (GOOD + "[inputs.a]\nregime = 'poisson'\n", ["inputs.a.regime", "poisson", "gaussian"]),
    (GOOD + "[inputs.a]\nregime = 'gaussian'\nqk = 2\n", ["inputs.a.qk", "unknown param",
                                                          "qk_scale"]),
    (GOOD + "[inputs.a]\nregime = 'gaussian'\nstorage = 'nhd'\n", ["inputs.a.storage", "nhd",
                                                                "'bhnd', 'bnhd'"]),
    (GOOD.replace("heads = [2]", "heads = [2]\ncausal = ['no']"), ["sweep.causal", "no"]),
    ("title = 'x'\n" + GOOD, ["title", "unknown key"]),
    ('name = "e"\nmethods = { sdpa = {}, naive = [] }\n[sweep]\nn = [64]\n',
     ["methods.naive", "empty list"]),
    (GOOD.replace("[methods.naive]", "[methods.naive]\nsweep = { dtype = ['fp8'] }"),
     ["methods.naive.sweep.dtype", "fp8", "fp32, fp16, bf16"]),
    (GOOD.replace("[methods.naive]", "[methods.naive]\nsweep = { seqlen = [3] }"),
     ["methods.naive.sweep.seqlen", "unknown key"]),
    (GOOD.replace("[methods.naive]", "[methods.naive]\nsweep = 3"), ["methods.naive.sweep", "3",
                                                                     "table of sweep axes"]),
]


@pytest.mark.parametrize("text,fragments", MALFORMED, ids=[f"case{i}" for i in range(len(MALFORMED))])
def test_malformed_suite_exit_2_with_clear_message(text, fragments, tmp_path, capsys):
    suite = tmp_path / "bad.toml"
    suite.write_text(text)
    out = tmp_path / "out"
    before = suite.read_text()
    for argv in (["validate", str(suite)], ["run", str(suite), "--out", str(out), "--no-progress"],
                 ["run", str(suite), "--dry-run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert str(suite) in err.replace("\n", "") or "bad.toml" in err.replace("\n", "")
        flat = " ".join(err.split())
        for frag in fragments:
            assert frag in flat, (frag, flat)
    assert not out.exists(), "nothing may be written for a rejected suite"
    assert suite.read_text() == before


def test_good_suite_expands_in_run_order(tmp_path):
    p = tmp_path / "good.toml"
    p.write_text(GOOD)
    suite = load_suite(str(p))
    cases = expand(suite)
    assert [c.method for c in cases] == ["sdpa", "sdpa", "naive", "naive"]
    assert [c.n for c in cases] == [64, 128, 64, 128]
    assert len({c.cell_id for c in cases}) == 4


def test_lists_sweep_params_and_array_tables(tmp_path):
    p = tmp_path / "grid.toml"
    p.write_text(GOOD.replace("[methods.sdpa]", "[methods.sdpa]\nbackend = ['auto', 'math']")
                 .replace("[methods.naive]", "[[methods.naive]]\n[[methods.naive]]"))
    cases = expand(load_suite(str(p)))
    assert sum(c.method == "sdpa" for c in cases) == 4
    assert sum(c.method == "naive" for c in cases) == 4  # two tables, each its own grid


def test_per_device_axis_values(tmp_path):
    p = tmp_path / "dev.toml"
    p.write_text(GOOD.replace("heads = [2]", "heads = [2]\ndtype = {cpu = ['fp32'], cuda = ['fp16', "
                                             "'bf16']}"))
    suite = load_suite(str(p))
    assert {c.dtype for c in expand(suite, "cpu")} == {"fp32"}
    assert {c.dtype for c in expand(suite, "cuda")} == {"fp16", "bf16"}


def test_method_entry_overrides_sweep_axes(tmp_path):
    # a pair compared in another dtype (a peer that fails in fp16), without running everything twice
    p = tmp_path / "over.toml"
    p.write_text(GOOD.replace("[methods.naive]", "[methods.naive]\n"
                              "sweep = { dtype = { cuda = ['fp16', 'fp32'] }, n = [32] }"))
    suite = load_suite(str(p))
    cuda = expand(suite, "cuda")
    assert {(c.dtype, c.n) for c in cuda if c.method == "sdpa"} == {("fp32", 64), ("fp32", 128)}
    assert {(c.dtype, c.n) for c in cuda if c.method == "naive"} == {("fp16", 32), ("fp32", 32)}
    assert {(c.dtype, c.n) for c in expand(suite, "cpu") if c.method == "naive"} == {("fp32", 32)}


def test_unknown_builtin_suite_suggests(capsys):
    assert main(["validate", "quik"]) == 2
    assert "Did you mean: quick" in capsys.readouterr().err


def test_dry_run_shows_cells_and_constraints(capsys):
    assert main(["run", "quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cells" in out and "sdpa" in out


def test_case_identity_is_stable():
    c = Case(method="sdpa", params=(("backend", "auto"),), level="core", n=64, batch=1, heads=2,
             head_dim=16, dtype="fp32", mode="fwd", causal=False, batching="fixed",
             input=(("regime", "gaussian"),), seed=0)
    assert c.cell_id == Case(**{**c.__dict__}).cell_id
    assert c.family_key() == Case(**{**c.__dict__, "n": 128}).family_key()
