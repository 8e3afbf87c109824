"""The conformance kit (`attnbench check`): every built-in method passes it, and each way of breaking
the contract (tests/plugins/nonconforming.py) fails it on the row that names that part."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from rich.console import Console

from attnbench import conformance
from attnbench.cli import main
from attnbench.conformance import Report, Row, check_method, report_table, summary_table
from attnbench.registry import (REGISTRY, BuildContext, Limit, NoParams, Registry, RegistryError,
                                register_method)

from conftest import PLUGINS

BUILTIN = sorted(s.name for s in REGISTRY.specs() if s.origin.startswith("attnbench.methods."))
# Findings about community code, not about the kit (tests/test_peers.py): peers' fp16/bf16 outcomes on
# CPU are recorded there rather than asserted (nystrom-attention raises a dtype error, performer-pytorch
# gives NaN in fp16), and two peers claim a causal variant whose outputs move with future tokens.
LOW_PRECISION = {"output fp16", "finite fp16", "output bf16", "finite bf16"}
LEAKS = {"peer_performer", "peer_reformer"}


def failed(report: Report) -> set[str]:
    return {r.check for r in report.rows if r.status == "fail"}


@pytest.fixture(scope="module")
def bad_plugin():
    """Register the non-conforming test methods (once per process)."""
    from attnbench.registry import load_plugin_file

    if "t_leaky" not in REGISTRY:
        load_plugin_file(PLUGINS / "nonconforming.py")
    return PLUGINS / "nonconforming.py"


# Every built-in method conforms

@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_method_passes_check_on_cpu(name):
    spec = REGISTRY.get(name)
    report = check_method(spec, "cpu")
    if (why := spec.unavailable_reason()) is not None or "cpu" not in spec.devices:
        assert [(r.check, r.status) for r in report.rows] == [("available", "skip")] and report.ok
        pytest.skip(why or f"{name} runs on {'/'.join(spec.devices)} only")
    if name.startswith("peer_"):
        assert failed(report) <= LOW_PRECISION | ({"causal"} if name in LEAKS else set()), report.rows
        assert ("causal" in failed(report)) == (name in LEAKS)
    else:
        assert not failed(report), [(r.check, r.detail) for r in report.rows if r.status == "fail"]
    checks = {r.check: r.status for r in report.rows}
    # the core rows ran (not skipped) for every available built-in method
    for check in ("build", "output fp32", "finite fp32", "inputs", "deterministic", "backward"):
        assert checks[check] == "pass", (check, report.rows)
    # every built-in declares a real limit (or its own reference); random features the convergence
    assert checks["limit"] == "pass" or (spec.limit.params is None and checks["converges"] == "pass")
    assert checks["causal"] == ("skip" if not spec.causal else "fail" if name in LEAKS else "pass")


def test_every_builtin_approximation_declares_its_limit():
    for spec in REGISTRY.specs():
        if spec.origin.startswith("attnbench.methods.") and not spec.exact:
            limit = spec.limit_case()
            assert limit is not None and (limit.params is not None or limit.converges), spec.name
            ctx = BuildContext(n=256, heads=2, head_dim=32)
            values = limit.params_for(ctx) or {}
            assert set(values) <= set(spec.param_fields()), spec.name  # names real knobs


# Each broken contract fails its row, and only that row

@pytest.mark.parametrize("name,row,words", [
    ("t_wrong_limit", "limit", "k=127: rel_err"),
    ("t_no_limit", "limit", "no limiting case declared"),
    ("t_leaky", "causal", "claims causal"),
    ("t_mutates_q", "inputs", "wrote into its input q"),
    ("t_random", "deterministic", "a second build with the same seed"),
    ("t_nan_grad", "backward", "gradient of q"),
    ("t_backwards_budget", "converges", "must fall as the budget grows"),
])
def test_broken_method_fails_the_right_row(bad_plugin, name, row, words):
    report = check_method(REGISTRY.get(name))
    assert failed(report) == {row}, report.rows
    assert words in report.row(row).detail
    assert not report.ok


def test_wrong_shape_fails_the_output_rows_and_stops(bad_plugin):
    report = check_method(REGISTRY.get("t_bad_shape"))
    assert failed(report) == {"output fp32", "output fp16", "output bf16"}
    assert "shape (2, 2, 127, 32) (expected (2, 2, 128, 32))" in report.row("output fp32").detail
    assert report.rows[-1].check == "the rest" and report.rows[-1].status == "skip"


def test_dtype_selection_and_limit_tolerance_are_respected(bad_plugin):
    report = check_method(REGISTRY.get("t_bad_shape"), dtypes=["bf16"])
    assert failed(report) == {"output bf16"}
    # a limit declared loose enough passes: tol is the declared one in float64
    spec = dataclasses.replace(REGISTRY.get("t_wrong_limit"),
                               limit=Limit(params=lambda ctx: {"k": ctx.n - 1}, tol=0.5))
    assert check_method(spec).row("limit").status == "pass"


def test_unavailable_and_other_device_methods_are_skipped_not_failed():
    reg = Registry()

    @register_method("t_needs_pkg", family="other", exact=True, requires=("no_such_module_xyz",),
                     install_hint="pip install no-such", registry=reg)
    def build_needs(p, ctx):
        raise AssertionError("never built")

    @register_method("t_cuda_only", family="other", exact=True, devices=("cuda",), registry=reg)
    def build_cuda(p, ctx):
        raise AssertionError("never built")

    @register_method("t_fp32_only", family="other", exact=True, dtypes=("fp32",), registry=reg)
    def build_fp32(p, ctx):
        raise AssertionError("never built")

    for spec, dtypes, words in ((build_needs.spec, None, "no_such_module_xyz not installed"),
                                (build_cuda.spec, None, "runs on cuda, not cpu"),
                                (build_fp32.spec, ["bf16"], "declares dtypes fp32, none of bf16")):
        report = check_method(spec, "cpu", dtypes)
        assert report.ok and [r.status for r in report.rows] == ["skip"]
        assert words in report.rows[0].detail


def test_defaults_rejected_at_every_n_fail_the_build_row():
    @dataclass_params
    class Big:
        k: int = 4096

    reg = Registry()

    @register_method("t_big", family="other", exact=True, params=Big, registry=reg,
                     constraints=(lambda p, ctx: None if p.k < ctx.n else f"k={p.k} >= n",))
    def build_big(p, ctx):
        raise AssertionError("never built")

    report = check_method(build_big.spec)
    assert failed(report) == {"build"} and "k=4096 >= n" in report.row("build").detail


def dataclass_params(cls):
    return dataclasses.dataclass(frozen=True)(cls)


def test_registry_validates_the_limit_declaration():
    reg = Registry()
    with pytest.raises(RegistryError, match=r"limit names unknown params \['window'\]"):
        register_method("t_typo", family="other", exact=False, limit={"window": 8},
                        registry=reg)(lambda p, ctx: None)
    with pytest.raises(RegistryError, match="limit must be a dict"):
        register_method("t_bad", family="other", exact=False, limit=3, registry=reg)(lambda p, c: None)
    spec = register_method("t_ok", family="other", exact=True, params=NoParams,
                           registry=reg)(lambda p, ctx: None).spec
    assert spec.limit is None and spec.limit_case().params_for(None) == {}  # exact: itself
    assert register_method("t_dict", family="other", exact=False, limit={}, registry=reg)(
        lambda p, ctx: None).spec.limit == Limit(params={})


# The CLI verb and its table

def test_cli_check_one_method_prints_the_table(capsys):
    assert main(["check", "linear", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    for check in ("build", "output fp32", "limit", "causal", "backward", "constraints", "model"):
        assert check in out
    assert "linear_reference" in out and "1 of 1 methods conform" in out


def test_cli_check_exit_codes(bad_plugin, capsys):
    assert main(["--plugin", str(bad_plugin), "check", "t_leaky"]) == 1
    assert "claims causal" in capsys.readouterr().out
    assert main(["check", "linformr"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "Did you mean: linformer" in err and "--plugin FILE" in err
    assert main(["check"]) == 2 and "--all" in capsys.readouterr().err
    assert main(["check", "linear", "--dtype", "fp8"]) == 2
    assert "fp8" in capsys.readouterr().err


def test_cli_check_all_summarises_and_shows_failures(monkeypatch, capsys, bad_plugin):
    """--all: one summary row per registered method, full tables only for the failures."""
    def fake(spec, device, dtypes, n):
        bad = spec.name == "t_leaky"
        return Report(spec.name, "cpu", 128, [Row("build", "pass", "ok"),
                                              Row("causal", "fail" if bad else "pass", "leaks")])

    monkeypatch.setattr(conformance, "check_method", fake)
    assert main(["check", "--all"]) == 1
    out = capsys.readouterr().out
    assert f"check: {len(REGISTRY.names())} methods" in out
    assert "check t_leaky" in out and "check sdpa" not in out  # only the failing method's table
    assert f"{len(REGISTRY.names()) - 1} of {len(REGISTRY.names())} methods conform" in out
    monkeypatch.setattr(conformance, "check_method",
                        lambda spec, *a: Report(spec.name, "cpu", 128, [Row("build", "pass", "ok")]))
    assert main(["check", "sdpa", "naive"]) == 0


def test_tables_fit_80_columns_without_splitting_numbers():
    detail = ("k=512, projection=mean_pool: rel_err 1.1e-15 / 2.2e-16 (non-causal / causal) in fp64 "
              "against implied_attention, tol 1.0e-09; 2×2×512×32 " * 3).strip()
    report = Report("a_long_method_name", "cpu", 512, [Row("deterministic", "fail", detail)])
    console = Console(width=200, record=True, color_system=None)
    console.print(report_table(report))
    console.print(summary_table([report]))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = " ".join(lines)
    for number in ("1.1e-15", "2.2e-16", "1.0e-09", "2×2×512×32"):
        assert text.count(number) == 3, number


def test_check_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    check_method(REGISTRY.get("naive"), dtypes=["fp32"])
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_recipe_in_methods_readme_passes_check(tmp_path):
    """The example method of methods/README.md, steps 1 and 2 pasted into one plugin file."""
    import re

    from attnbench.registry import load_plugin_file

    from conftest import REPO

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "methods" / "README.md").read_text(), re.S)
    plugin = tmp_path / "my_methods.py"
    plugin.write_text("\n".join(blocks[:2]))
    assert load_plugin_file(plugin) == ["mine"]
    try:
        report = check_method(REGISTRY.get("mine"), dtypes=["fp32"])
        assert report.ok, [(r.check, r.detail) for r in report.rows if r.status == "fail"]
        assert report.row("limit").status == "pass"
    finally:
        REGISTRY.remove("mine")


@pytest.mark.parametrize("name,params,stats", [
    ("linformer", {"k": 64}, {"k": 64}), ("nystrom", {"num_landmarks": 16}, {}),
    ("performer", {"nb_features": 24}, {"nb_features_used": 24}),
    ("performer", {"nb_features": 24, "positive": False}, {"nb_features_used": 24}),
    ("linear", {}, {}),
])
def test_rank_hooks_agree_with_accuracy_budget_rank(name, params, stats):
    from attnbench.accuracy import budget_rank

    spec = REGISTRY.get(name)
    p = spec.params(**params)
    assert spec.rank(p, stats, 32) == budget_rank(name, p, stats, 32)
    assert REGISTRY.get("local").rank is None  # sparse patterns declare no rank bound
