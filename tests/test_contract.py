"""The method contract is checked where outputs are used: a method that writes into its inputs or
returns the wrong shape or dtype gets an ``error`` row saying so, and no other method's numbers move."""
import pytest
import torch

from attnbench import load_results, run_suite
from attnbench.contract import changed_inputs, fingerprint, output_violation
from conftest import PLUGINS


@pytest.fixture
def breakers():
    from attnbench.registry import REGISTRY, load_plugin_file

    if "t_mutate_q" not in REGISTRY:
        load_plugin_file(PLUGINS / "contract_breakers.py")


def test_in_place_mutation_is_an_error_row_and_poisons_nothing(tiny_suite, tmp_path, breakers):
    # the mutating method runs first on the same inputs; sdpa and naive must still be exact
    suite = tiny_suite("[methods.t_mutate_q]\n[methods.sdpa]\n[methods.naive]\n")
    outcome = run_suite(str(suite), "cpu", out=tmp_path, progress=False)
    df = load_results(outcome.run_dir)
    bad = df[df["method"] == "t_mutate_q"]
    assert set(bad["status"]) == {"error"}
    assert all("wrote into its input q" in r for r in bad["reason"])
    for name in ("sdpa", "naive"):
        rows = df[df["method"] == name]
        assert set(rows["status"]) == {"ok"}
        assert rows["rel_err"].max() < 1e-5, rows["rel_err"].tolist()
        assert rows["baseline_rel_err"].max() < 1e-5
    assert outcome.exit_code == 1


@pytest.mark.parametrize("kind,expect", [("one_row", "shape (1, 2, 1, 16) (expected (1, 2, 64, 16))"),
                                         ("scalar", "shape () (expected"),
                                         ("fp64", "dtype float64 (expected float32)"),
                                         ("fp16", "dtype float16 (expected float32)"),
                                         ("int64", "dtype int64 (expected float32)")])
def test_wrong_output_shape_or_dtype_is_an_error_row(tiny_suite, tmp_path, breakers, kind, expect):
    suite = tiny_suite(f'[methods.t_wrong_output]\nkind = ["{kind}"]\n')
    outcome = run_suite(str(suite), "cpu", out=tmp_path, progress=False)
    df = load_results(outcome.run_dir)
    assert set(df["status"]) == {"error"}
    assert all(expect in r for r in df[df["n"] == 64]["reason"]), df["reason"].tolist()
    assert "rel_err" not in df or df["rel_err"].isna().all()


def test_fingerprint_sees_any_changed_value_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(2, 3, 5, 4, generator=g) for _ in range(3)]
    before = fingerprint(ts)
    assert fingerprint([t.clone() for t in ts]) == before
    for i, edit in enumerate((lambda t: t[1, 2, 3, 0].add_(1e-6), lambda t: t.neg_(),
                              lambda t: t[0, 0, 0, 0].copy_(-t[0, 0, 0, 0]))):
        copy = [t.clone() for t in ts]
        edit(copy[i])
        assert changed_inputs("qkv", before, fingerprint(copy)) == ["qkv"[i]]
    swapped = [t.clone() for t in ts]
    a, b = swapped[2][0, 0, 0, 0].item(), swapped[2][0, 0, 0, 1].item()
    swapped[2][0, 0, 0, 0], swapped[2][0, 0, 0, 1] = b, a  # same values, other places
    assert changed_inputs("qkv", before, fingerprint(swapped)) == ["v"]


def test_output_violation_names_expected_and_found():
    out = torch.zeros(1, 2, 3, 4)
    assert output_violation(out, shape=(1, 2, 3, 4), dtype=torch.float32, device="cpu") is None
    assert "got tuple" in output_violation((out,), shape=(1, 2, 3, 4), dtype=torch.float32,
                                           device="cpu")
    why = output_violation(out.half(), shape=(1, 2, 3, 5), dtype=torch.float32, device="cpu")
    assert "shape (1, 2, 3, 4) (expected (1, 2, 3, 5))" in why and "dtype float16" in why
