"""The README's two set-up commands exist, CI runs the test one, and the documented columns exist."""
import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def setup_commands():
    return re.findall(r"```bash\n(.+?)\n```", README.split("## Set-up")[1].split("\n## ")[0])


def test_exactly_two_setup_commands_install_and_run():
    run, test = setup_commands()
    assert "pip install" in run and run.endswith("attnbench run quick")
    assert "pip install" in test and "[test]" in test and test.endswith("pytest -q")


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert setup_commands()[1] in ci


def test_quick_suite_named_in_readme_exists():
    """Every built-in suite the README names (``attnbench run NAME``, ``suites/NAME.toml``, the
    list of built-in suites) exists, the main job's included."""
    from attnbench.suite import builtin_suites

    named = set(re.findall(r"suites/([a-z0-9_]+)\.toml", README))
    named |= set(re.findall(r"attnbench (?:run|validate) ([a-z0-9_]+)\b", README))
    listed = README.split("Built-in suites live in `suites/`")[1].split(".")[0]
    named |= set(re.findall(r"`([a-z0-9_]+)`", listed))
    assert "quick" in named and len(named) >= 5
    missing = sorted(named - set(builtin_suites()))
    assert not missing, missing


def test_documented_columns_are_produced(tiny_suite, tmp_path):
    from attnbench import load_results, run_suite

    outcome = run_suite(str(tiny_suite("[methods.sdpa]\n")), "cpu", out=tmp_path, progress=False)
    cols = set(load_results(outcome.run_dir).columns)
    for col in ("time_ms", "time_ms_iqr", "peak_mem_mib", "extra_mem_mib", "rel_err",
                "baseline_rel_err", "tokens_per_s", "status", "reason", "time_ms_min", "n_samples",
                "max_abs_err", "cosine", "n_params", "build_s", "param.backend"):
        assert col in cols, col
