"""The sweep never loses a result: error, OOM, NaN rows; resume after SIGKILL; capacity search."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from attnbench import load_results, run_suite
from attnbench.capacity import find_max_batch
from attnbench.cli import main
from attnbench.store import done_cells, iter_rows
from conftest import PLUGINS, cli_cmd, cli_env


def run_dir_of(out):
    (suite_dir,) = list(out.iterdir())
    (run_dir,) = list(suite_dir.iterdir())
    return run_dir


def test_method_that_raises_gives_error_row_and_sweep_finishes(tiny_suite, tmp_path, faulty_plugin):
    suite = tiny_suite("[methods.t_boom]\nn_fail = [128]\n[methods.sdpa]\n")
    out = tmp_path / "out"
    rc = main(["run", str(suite), "--out", str(out), "--no-progress", "--no-table"])
    assert rc == 1  # cells failed with error
    df = load_results(run_dir_of(out))
    boom = df[df.method == "t_boom"].set_index("n")
    assert boom.loc[64, "status"] == "ok"
    assert boom.loc[128, "status"] == "error"
    assert "boom at n=128" in boom.loc[128, "reason"]
    assert (df[df.method == "sdpa"].status == "ok").all() and len(df) == 4


def test_simulated_oom_gives_oom_then_pruned(tiny_suite, tmp_path, faulty_plugin):
    suite = tiny_suite("[methods.t_oom]\nn_fail = [128]\n[methods.sdpa]\n",
                       extra="").read_text().replace("n = [64, 128]", "n = [64, 128, 256, 512]")
    path = tmp_path / "oom.toml"
    path.write_text(suite)
    outcome = run_suite(str(path), "cpu", out=tmp_path / "out", progress=False)
    df = load_results(outcome.run_dir)
    oom = df[df.method == "t_oom"].set_index("n")["status"].to_dict()
    assert oom == {64: "ok", 128: "oom", 256: "oom-pruned", 512: "oom-pruned"}
    assert (df[df.method == "sdpa"].status == "ok").all()
    assert outcome.exit_code == 0  # oom is a finding, not a failure of the harness


def test_nan_output_gives_nan_row(tiny_suite, tmp_path, faulty_plugin):
    outcome = run_suite(str(tiny_suite("[methods.t_nan]\n")), "cpu", out=tmp_path / "o",
                        progress=False)
    df = load_results(outcome.run_dir)
    assert set(df.status) == {"nan"}


def test_unsupported_rows_are_written_not_dropped(tiny_suite, tmp_path):
    outcome = run_suite(str(tiny_suite("[methods.xformers]\n[methods.sdpa]\nbackend=['flash']\n")),
                        "cpu", out=tmp_path / "o", progress=False)
    df = load_results(outcome.run_dir)
    assert len(df) == 4 and set(df.status) == {"unsupported"}
    assert df.reason.str.len().min() > 10


def test_rows_have_units_and_provenance(tiny_suite, tmp_path):
    outcome = run_suite(str(tiny_suite("[methods.sdpa]\n[methods.naive]\n")), "cpu",
                        out=tmp_path / "o", progress=False)
    df = load_results(outcome.run_dir)
    for col in ("time_ms", "time_ms_iqr", "peak_mem_mib", "extra_mem_mib", "rel_err", "max_abs_err",
                "cosine", "baseline_rel_err", "tokens_per_s", "status", "reason", "n_samples"):
        assert col in df.columns, col
    assert (df.extra_mem_mib > 0).all() and (df.time_ms > 0).all()
    naive = df[df.method == "naive"].set_index("n")
    # naive holds (B, H, n, n) scores and probabilities: at least 2·H·n²·4 bytes
    assert naive.loc[128, "extra_mem_mib"] >= 2 * 2 * 128 * 128 * 4 / 2**20
    meta = json.loads((outcome.run_dir / "meta.json").read_text())
    prov = meta["provenance"]
    for key in ("attnbench_version", "torch", "device_name", "cpu", "git_commit", "git_dirty"):
        assert key in prov
    assert meta["suite_sha256"] and meta["state"] == "complete" and meta["command"]


def test_run_ids_never_overwrite(tiny_suite, tmp_path):
    suite = str(tiny_suite("[methods.sdpa]\n"))
    a = run_suite(suite, "cpu", out=tmp_path / "o", progress=False).run_dir
    b = run_suite(suite, "cpu", out=tmp_path / "o", progress=False).run_dir
    assert a != b and (a / "results.jsonl").is_file() and (b / "results.jsonl").is_file()


def test_resume_after_sigkill_every_cell_exactly_once(tmp_path, write_suite):
    suite = write_suite("""
name = "killme"
[sweep]
n = [16, 32, 48, 64, 80, 96]
heads = [1]
head_dim = [8]
mode = ["fwd", "fwd_bwd"]
[timing]
warmup = 1
warmup_s = 0.0
repeats = 3
[error]
enabled = false
[methods.t_slow]
""")
    out = tmp_path / "out"
    env = {**cli_env(), "ATTNBENCH_TEST_SLEEP": "0.08"}
    plugin = str(PLUGINS / "faulty.py")
    proc = subprocess.Popen(cli_cmd("--plugin", plugin, "run", str(suite), "--out", str(out),
                                    "--no-progress", "--no-table"), env=env)
    deadline = time.time() + 60
    results = None
    while time.time() < deadline:
        found = list(out.glob("killme/*/results.jsonl"))
        if found and sum(1 for _ in open(found[0])) >= 4:
            results = found[0]
            break
        time.sleep(0.05)
    assert results is not None, "the run never wrote rows"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_dir = results.parent
    before = len(list(iter_rows(run_dir)))
    assert 4 <= before < 12
    rc = subprocess.run(cli_cmd("--plugin", plugin, "run", "--resume", str(run_dir),
                                "--no-progress", "--no-table"), env=env, timeout=120).returncode
    assert rc == 0
    rows = list(iter_rows(run_dir))
    ids = [r["cell_id"] for r in rows]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert {r["status"] for r in rows} == {"ok"}
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["state"] == "complete" and meta["resumes"] == 1


def test_torn_last_line_is_set_aside_and_its_cell_rerun(tiny_suite, tmp_path):
    suite = str(tiny_suite("[methods.sdpa]\n[methods.naive]\n"))
    run_dir = run_suite(suite, "cpu", out=tmp_path / "o", progress=False).run_dir
    path = run_dir / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    with pytest.warns(UserWarning, match="torn"):
        assert len(load_results(run_dir)) == 3
    run_suite(suite, "cpu", resume=run_dir, progress=False)
    rows = list(iter_rows(run_dir))
    assert len(rows) == 4 and len(done_cells(run_dir)) == 4
    assert (run_dir / "results.jsonl.torn").is_file()


def test_capacity_search_finds_max_batch_under_simulated_limit():
    for limit in (1, 2, 3, 7, 8, 9, 100, 4096):
        calls = []

        def fits(b, limit=limit):
            calls.append(b)
            return b <= limit

        for guess in (1, 5, 64, 5000):
            calls.clear()
            assert find_max_batch(fits, max_batch=4096, guess=guess) == limit
            assert len(calls) < 30
    assert find_max_batch(lambda b: False) == 0
    assert find_max_batch(lambda b: True, max_batch=100) == 100
    assert find_max_batch(lambda b: b <= 1000, max_batch=4096, guess=900, rel_tol=0.02) >= 980


def test_capacity_mode_with_memory_limit(tiny_suite, tmp_path):
    """At a fixed memory limit, naive attention (n² memory) fits fewer sequences than sdpa."""
    suite = tiny_suite("[methods.sdpa]\n[methods.naive]\n").read_text().replace(
        'mode = ["fwd"]', 'mode = ["fwd"]\nbatching = ["capacity"]').replace("n = [64, 128]", "n = [256]")
    path = tmp_path / "cap.toml"
    path.write_text(suite)
    outcome = run_suite(str(path), "cpu", out=tmp_path / "o", progress=False, capacity_limit_mib=8.0)
    df = load_results(outcome.run_dir).set_index("method")
    assert df.loc["naive", "max_batch"] >= 1
    assert df.loc["sdpa", "max_batch"] > df.loc["naive", "max_batch"]
    assert df.loc["naive", "peak_mem_mib"] <= 8.0
    assert df.loc["sdpa", "time_per_seq_ms"] > 0


def test_levels_layer_and_model_run_with_errors_against_exact_weights(tiny_suite, tmp_path):
    suite = tiny_suite("[methods.sdpa]\n[methods.naive]\n", extra="[model]\nlayers = 2\nffn_dim = 32\n")
    text = suite.read_text().replace('mode = ["fwd"]', 'mode = ["fwd", "fwd_bwd"]\nlevel = ["layer", "model"]')
    suite.write_text(text)
    outcome = run_suite(str(suite), "cpu", out=tmp_path / "o", progress=False)
    df = load_results(outcome.run_dir)
    assert len(df) == 16 and set(df.status) == {"ok"}
    assert (df.rel_err < 1e-5).all()  # exact attention inside the same weights
    model = df[(df.level == "model") & (df.method == "sdpa")].iloc[0]
    layer = df[(df.level == "layer") & (df.method == "sdpa")].iloc[0]
    d = 2 * 16
    assert layer.n_params == 4 * d * d + 4 * d
    assert model.n_params == 2 * (4 * d * d + 4 * d + 2 * d * 32 + 32 + d + 4 * d)


def test_suite_timing_cuda_graphs_asks_for_the_mode_like_the_flag(tiny_suite, tmp_path):
    """[timing] cuda_graphs = true in a suite is honoured, not only --cuda-graphs (on the CPU the
    mode has nothing to capture, but the run records that it was asked for)."""
    plain = run_suite(str(tiny_suite("[methods.sdpa]\n")), "cpu", out=tmp_path / "a",
                      progress=False).run_dir
    graphs = run_suite(str(tiny_suite("[methods.sdpa]\n", extra="cuda_graphs = true\n")),
                       "cpu", out=tmp_path / "b", progress=False).run_dir
    assert json.loads((plain / "meta.json").read_text())["cuda_graphs"] is False
    assert json.loads((graphs / "meta.json").read_text())["cuda_graphs"] is True


def test_rerun_runs_again_the_cells_of_a_status_and_keeps_their_old_rows(tiny_suite, tmp_path,
                                                                        faulty_plugin, monkeypatch,
                                                                        capsys):
    monkeypatch.delenv("ATTNBENCH_T_ENV_READY", raising=False)
    first = run_suite(str(tiny_suite("[methods.t_needs_env]\n[methods.sdpa]\n")), "cpu",
                      out=tmp_path / "o", progress=False)
    before = load_results(first.run_dir).set_index(["method", "n"]).status.to_dict()
    assert before == {("t_needs_env", 64): "unsupported", ("t_needs_env", 128): "unsupported",
                      ("sdpa", 64): "ok", ("sdpa", 128): "ok"}
    monkeypatch.setenv("ATTNBENCH_T_ENV_READY", "1")  # the environment is fixed
    capsys.readouterr()
    assert main(["run", "--resume", str(first.run_dir), "--rerun", "unsupported", "--dry-run"]) == 0
    assert "resumed: 2 of its 4 cells left, with --rerun" in " ".join(capsys.readouterr().out.split())
    assert main(["run", "--resume", str(first.run_dir), "--dry-run"]) == 0
    assert "resumed: 0 of its 4 cells left" in " ".join(capsys.readouterr().out.split())
    assert len(list(iter_rows(first.run_dir, history=True))) == 4  # a dry run runs nothing
    again = run_suite(None, "cpu", resume=first.run_dir, rerun="unsupported", progress=False)
    assert again.complete and again.counts == {"ok": 4}
    df = load_results(first.run_dir)
    assert len(df) == 4 and set(df.status) == {"ok"}  # one row per cell: the latest
    assert (df[df.method == "t_needs_env"].rel_err < 1e-5).all()
    history = list(iter_rows(first.run_dir, history=True))
    assert [r["status"] for r in history if r["method"] == "t_needs_env"] == [
        "unsupported", "unsupported", "ok", "ok"]  # nothing lost
    assert sum(r["method"] == "sdpa" for r in history) == 2  # ok cells are not run again
    meta = json.loads((first.run_dir / "meta.json").read_text())
    assert meta["reruns"][0]["statuses"] == ["unsupported"] and meta["reruns"][0]["cells"] == 2
    # a plain resume afterwards has nothing left to run
    assert run_suite(None, "cpu", resume=first.run_dir, progress=False).counts == {"ok": 4}
    assert len(list(iter_rows(first.run_dir, history=True))) == 6


def test_rerun_needs_resume_and_a_known_status(tiny_suite, tmp_path, capsys):
    suite = str(tiny_suite("[methods.sdpa]\n"))
    assert main(["run", suite, "--rerun", "error", "--out", str(tmp_path / "o")]) == 2
    assert "--rerun runs cells of an existing run again" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written
    outcome = run_suite(suite, "cpu", out=tmp_path / "o", progress=False)
    assert main(["run", "--resume", str(outcome.run_dir), "--rerun", "ok,broken"]) == 2
    err = capsys.readouterr().err
    assert "broken is not a row status" in err and "unsupported" in err
    assert len(list(iter_rows(outcome.run_dir, history=True))) == 2  # nothing was run
