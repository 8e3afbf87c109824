"""A method author's first hour, as the READMEs write it: scaffold, check, run beside the baseline;
progress a log can follow; the Python API as documented."""
import inspect
import re
import shlex
import subprocess
import sys

import pytest

import attnbench
from conftest import REPO, TINY, cli_env

RECIPE = re.search(r"```bash\n(attnbench new-method.+?)\n```",
                   (REPO / "methods" / "README.md").read_text(), re.S).group(1).splitlines()


def _argv(line: str) -> list[str]:
    words = shlex.split(line)
    if words[0] == "attnbench":
        return [sys.executable, "-m", "attnbench.cli", *words[1:]]
    if words[0] == "pytest":
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *words[1:]]
    raise AssertionError(f"unexpected command in methods/README.md: {line}")


def test_documented_plugin_flow_end_to_end(tmp_path):
    assert any("--only mine,sdpa" in line for line in RECIPE)
    for line in RECIPE:
        proc = subprocess.run(_argv(line), cwd=tmp_path, env=cli_env(), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, (line, proc.stdout[-2000:], proc.stderr[-2000:])
    from attnbench.store import iter_rows

    (quick,) = (tmp_path / "results" / "quick").iterdir()
    rows = list(iter_rows(quick))
    assert {r["method"] for r in rows} == {"mine", "sdpa"}
    assert all(r["status"] == "ok" for r in rows if r["method"] == "mine") and \
        sum(r["method"] == "mine" for r in rows) == 6  # quick's 3 n × fwd, fwd_bwd
    before = sorted(p.name for p in (tmp_path / "results" / "quick").iterdir())
    proc = subprocess.run(_argv("attnbench run quick --plugin plugins/mine.py --only nosuch"),
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Unknown method 'nosuch'" in " ".join(proc.stderr.split())
    assert "mine" in proc.stderr  # it names what exists, the plugin's method included
    assert sorted(p.name for p in (tmp_path / "results" / "quick").iterdir()) == before


def test_progress_lines_reach_a_pipe_while_the_run_goes_on(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(TINY.replace("n = [64, 128]", "n = [64, 128, 256]") +
                     "[methods.sdpa]\n[methods.t_slow]\n")
    proc = subprocess.Popen([sys.executable, "-m", "attnbench.cli", "--plugin",
                             str(REPO / "tests" / "plugins" / "faulty.py"), "run", str(suite),
                             "--out", str(tmp_path / "out")], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_while_running = []
    for line in proc.stderr:
        if re.match(r"\[\s*\d+/6\] \d+:\d\d elapsed, ETA", line):
            seen_while_running.append(proc.poll() is None)
    proc.wait(timeout=300)
    assert proc.returncode == 0
    assert seen_while_running and seen_while_running[0], seen_while_running


def test_api_signatures_are_typed_and_documented():
    sig = inspect.signature(attnbench.run_suite)
    assert {"suite", "device", "out", "only", "skip", "resume", "isolate", "timeout_s", "rounds",
            "retry_noisy"} <= set(sig.parameters)
    assert all(p.kind is not p.VAR_KEYWORD and p.kind is not p.VAR_POSITIONAL
               for p in sig.parameters.values())
    assert "baseline" in inspect.signature(attnbench.load_results).parameters
    for fn in (attnbench.run_suite, attnbench.load_results, attnbench.Suite.from_dict):
        assert len(inspect.getdoc(fn)) > 100


def test_suite_from_dict_runs_resumes_and_load_results_adds_ratios(tmp_path):
    suite = attnbench.Suite.from_dict({
        "name": "api", "baseline": "sdpa", "sweep": {"n": [64, 128], "heads": [2], "head_dim": [16]},
        "timing": {"warmup": 1, "warmup_s": 0.0, "repeats": 3},
        "methods": {"sdpa": {}, "linformer": {"k": [16]}}})
    outcome = attnbench.run_suite(suite, "cpu", out=tmp_path, progress=False, isolate="cell",
                                  only=["sdpa", "linformer"])
    assert outcome.exit_code == 0
    df = attnbench.load_results(outcome.run_dir, baseline="sdpa")
    lin = df[df["method"] == "linformer"]
    assert {"speedup", "speedup_lo", "speedup_hi", "mem_ratio"} <= set(df.columns)
    assert (lin["speedup_lo"] <= lin["speedup"]).all() and (lin["speedup"] <= lin["speedup_hi"]).all()
    base = df[df["method"] == "sdpa"].set_index("n")["time_ms"]
    assert lin.set_index("n")["speedup"].round(9).equals((base / lin.set_index("n")["time_ms"])
                                                         .round(9))
    with pytest.raises(attnbench.errors.UserError, match="baseline 'nope' has no rows"):
        attnbench.load_results(outcome.run_dir, baseline="nope")
    # the saved suite.toml is the dict's TOML: resuming it re-plans the very same cells
    assert attnbench.run_suite(None, "cpu", resume=outcome.run_dir, progress=False).exit_code == 0


def test_readme_python_example_pivots_one_mode(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(from attnbench import.+?)```", readme, re.S).group(1)
    assert "mode" in code  # fwd and fwd_bwd are never averaged together
    monkeypatch.chdir(tmp_path)
    code = code.replace('run_suite("quick", device="cpu")',
                        'run_suite("quick", device="cpu", only="sdpa,linformer", progress=False)')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README's example
    table = namespace["table"]
    assert list(table.index) == [256, 512, 1024] and "linformer(k=64)" in table.columns


def test_validate_a_gpu_suite_offline_and_version(capsys):
    from attnbench.cli import main

    assert main(["validate", "scaling", "--device", "cuda"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "cells on cuda" in out
    assert main(["--version"]) == 0
    assert attnbench.__version__ in capsys.readouterr().out


def test_every_option_of_every_verb_has_help():
    import argparse

    from attnbench.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for verb, p in [("(global)", parser), *subs.choices.items()]:
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{verb} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_retry_noisy_keeps_the_steadiest_attempt():
    from attnbench.executors import RetryNoisy

    attempts = iter([{"status": "ok", "noisy": True, "time_ms": 10.0, "time_ms_iqr": 5.0},
                     {"status": "ok", "noisy": True, "time_ms": 9.0, "time_ms_iqr": 2.0},
                     {"status": "ok", "noisy": False, "time_ms": 8.0, "time_ms_iqr": 0.4}])

    class Inner:
        def run(self, cases, gate, on_start):
            for case in cases:
                yield case, next(attempts)

        def close(self):
            pass

    (case, row), = RetryNoisy(Inner(), 5).run(["cell"], lambda c: None, lambda c: None)
    assert row["time_ms"] == 8.0 and row["timing_attempts"] == 3
    assert row["attempt_medians_ms"] == [10.0, 9.0, 8.0]
    steady = iter([{"status": "ok", "noisy": True, "time_ms": 10.0, "time_ms_iqr": 5.0},
                   {"status": "ok", "noisy": True, "time_ms": 12.0, "time_ms_iqr": 1.2}])
    attempts = steady
    (case, row), = RetryNoisy(Inner(), 1).run(["cell"], lambda c: None, lambda c: None)
    assert row["time_ms"] == 12.0 and row["timing_attempts"] == 2 and row["noisy"]


def test_meta_records_host_load_and_dry_run_estimates_from_the_last_run(tmp_path, capsys):
    from attnbench.cli import main
    from attnbench.store import read_meta

    suite = tmp_path / "s.toml"
    suite.write_text(TINY + "[methods.sdpa]\n")
    outcome = attnbench.run_suite(str(suite), "cpu", out=tmp_path / "o", progress=False,
                                  retry_noisy=1)
    meta = read_meta(outcome.run_dir)
    for key in ("host_load_before", "host_load_after"):
        assert meta[key]["cpu_count"] >= 1 and len(meta[key]["loadavg"]) == 3
    assert meta["retry_noisy"] == 1
    assert main(["run", str(suite), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "estimated run time" in out and str(outcome.run_dir) in out
    assert main(["run", str(suite), "--dry-run", "--out", str(tmp_path / "none")]) == 0
    assert "no earlier run of this suite here" in " ".join(capsys.readouterr().out.split())
