"""Interleaved timing (``rounds > 1``): the cells of a comparison group are timed in alternating
rounds, so a host that slows down during a sweep slows every method alike.

The timing tests run on a fake clock (tests/plugins/clocked.py, patched in for attnbench.measure's
``perf_counter``): every call of the clocked method costs 1 ms, 3 ms once the host "slows down", so
the measured times are exact and no wall-clock time is asserted.
"""
import types

import pytest
import torch

from attnbench import load_results, run_suite
from attnbench.cli import main
from attnbench.suite import SuiteError
from conftest import PLUGINS

SUITE = """
name = "clocked"
baseline = "sdpa"
[sweep]
n = [64]
heads = [2]
head_dim = [16]
[timing]
warmup = 1
warmup_s = 0
repeats = 12
max_time_s = 1000
{timing}
[error]
enabled = false
[methods.t_clocked]
tag = ["a", "b"]
"""


@pytest.fixture
def clock(monkeypatch):
    import sys

    from attnbench import measure
    from attnbench.registry import REGISTRY, load_plugin_file

    if "t_clocked" not in REGISTRY:
        load_plugin_file(PLUGINS / "clocked.py")
    plugin = sys.modules[REGISTRY.get("t_clocked").factory.__module__]

    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=plugin.CLOCK.perf_counter))
    plugin.CLOCK.reset()
    return plugin.CLOCK


def _times(write_suite, tmp_path, timing="", **kw):
    outcome = run_suite(str(write_suite(SUITE.format(timing=timing))), "cpu", out=tmp_path / "o",
                        progress=False, **kw)
    df = load_results(outcome.run_dir)
    assert set(df.status) == {"ok"}
    return {tag: r for tag, r in zip(df["param.tag"], df.itertuples())}


def test_a_slowdown_lands_on_one_method_one_at_a_time(clock, write_suite, tmp_path):
    """Without interleaving, the method that runs after the host slows down reads 3× slower: the
    failure interleaving exists to fix (and proof that the fake clock reaches the measurement)."""
    clock.reset(slow_after=18)
    rows = _times(write_suite, tmp_path)
    a, b = rows["a"], rows["b"]
    assert a.time_ms == pytest.approx(1.0) and b.time_ms == pytest.approx(3.0)
    assert a.n_samples == b.n_samples == 12


@pytest.mark.parametrize("how", ["suite", "argument"])
def test_interleaved_rounds_give_identical_methods_identical_times(clock, write_suite, tmp_path, how):
    clock.reset(slow_after=18)
    kw = {"rounds": 4} if how == "argument" else {}
    rows = _times(write_suite, tmp_path, "rounds = 4" if how == "suite" else "", **kw)
    a, b = rows["a"], rows["b"]
    assert a.time_ms == pytest.approx(b.time_ms)
    assert 1.0 < a.time_ms < 3.0  # each saw both speeds
    assert a.n_samples == b.n_samples == 12 and a.timing_rounds == b.timing_rounds == 4
    # the calls alternate in blocks: a, b, then b, a (the order rotates each round), ...
    switches = sum(x != y for x, y in zip(clock.calls, clock.calls[1:]))
    assert switches >= 2 * 4 - 1


def test_rounds_split_repeats_into_blocks_and_keep_at_least_repeats(clock, write_suite, tmp_path):
    clock.reset()
    rows = _times(write_suite, tmp_path, "rounds = 5")  # ⌈12 / 5⌉ = 3 a block
    assert {r.n_samples for r in rows.values()} == {15}
    assert [r.time_ms for r in rows.values()] == pytest.approx([1.0, 1.0])


def test_interleaved_rows_match_one_at_a_time_rows_except_timing(write_suite, tmp_path):
    """Memory and error do not depend on the mode; cells of other shapes form their own groups."""
    text = """
name = "mix"
baseline = "sdpa"
[sweep]
n = [64, 128]
heads = [2]
head_dim = [16]
[timing]
warmup = 1
repeats = 4
[methods.sdpa]
[methods.linformer]
k = [32]
[methods.nystrom]
num_landmarks = [16]
"""
    path = write_suite(text)
    one = load_results(run_suite(str(path), "cpu", out=tmp_path / "one", progress=False).run_dir)
    two = load_results(run_suite(str(path), "cpu", out=tmp_path / "two", progress=False,
                                 rounds=2).run_dir)
    assert len(one) == len(two) == 6 and set(two.status) == {"ok"}
    key = ["method", "n"]
    one, two = one.set_index(key).sort_index(), two.set_index(key).sort_index()
    for col in ("rel_err", "max_abs_err", "extra_mem_mib", "peak_mem_mib", "n_params"):
        assert (one[col] == two[col]).all(), col
    assert two["timing_rounds"].eq(2).all() and "timing_rounds" not in one
    # grouped by shape: every n=64 row was written before any n=128 row
    rows = load_results(run_suite(str(path), "cpu", out=tmp_path / "three", progress=False,
                                  rounds=2).run_dir)
    assert list(rows["n"]) == [64] * 3 + [128] * 3


def test_a_failing_cell_does_not_sink_its_group(tiny_suite, tmp_path, faulty_plugin):
    suite = tiny_suite("[methods.t_boom]\nn_fail = [128]\n[methods.sdpa]\n[methods.t_nan]\n",
                       extra="rounds = 3\n")
    outcome = run_suite(str(suite), "cpu", out=tmp_path / "o", progress=False)
    df = load_results(outcome.run_dir).set_index(["method", "n"])
    assert df.loc[("t_boom", 64), "status"] == "ok"
    assert df.loc[("t_boom", 128), "status"] == "error"
    assert "boom at n=128" in df.loc[("t_boom", 128), "reason"]
    assert df.loc[("t_nan", 128), "status"] == "nan"
    assert (df.xs("sdpa").status == "ok").all() and outcome.exit_code == 1


def test_resume_keeps_the_runs_rounds(tiny_suite, tmp_path):
    suite = tiny_suite("[methods.sdpa]\n[methods.linformer]\nk = [32]\n")
    first = run_suite(str(suite), "cpu", out=tmp_path / "o", progress=False, rounds=2)
    rows = (first.run_dir / "results.jsonl").read_text().splitlines()
    (first.run_dir / "results.jsonl").write_text("\n".join(rows[:2]) + "\n")  # lose the n=128 group
    again = run_suite(None, "cpu", resume=first.run_dir, progress=False)
    df = load_results(again.run_dir)
    assert len(df) == 4 and df["timing_rounds"].eq(2).all()


@pytest.mark.parametrize("args, needle", [
    (["--rounds", "0"], "--rounds 0: expected a whole number from 1 to 1000"),
    (["--rounds", "2", "--isolate"], "use one or the other"),
    (["--rounds", "2", "--timeout-s", "60"], "use one or the other"),
])
def test_bad_rounds_are_refused_before_any_run_directory(tiny_suite, tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    rc = main(["run", str(tiny_suite("[methods.sdpa]\n")), "--out", str(out), "--no-progress", *args])
    assert rc != 0
    assert needle in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()


def test_suite_rounds_must_be_a_whole_number(tiny_suite):
    from attnbench.suite import load_suite

    with pytest.raises(SuiteError, match="timing.rounds.*an integer from 1 to 1000"):
        load_suite(str(tiny_suite("[methods.sdpa]\n", extra="rounds = 1.5\n")))


@pytest.mark.gpu
def test_interleaved_cuda_graph_rows_on_gpu(write_suite, tmp_path):
    """On CUDA: eager and replay samples from every round, and a cell's absolute peak memory does
    not count what the other cells of its group hold meanwhile (48 MiB of inputs each here)."""
    text = SUITE.replace('[methods.t_clocked]\ntag = ["a", "b"]\n', "[methods.sdpa]\n"
                         "[methods.linformer]\nk = [32]\n[methods.performer]\nnb_features = [32]\n")
    path = write_suite(text.format(timing="").replace("n = [64]", "n = [8192]")
                       .replace("heads = [2]", "heads = [8]").replace("head_dim = [16]", "head_dim = [64]")
                       .replace("repeats = 12", "repeats = 6"))
    # a first run sets up what stays for the process (the capture stream and its cuBLAS workspace)
    run_suite(str(path), "cuda", out=tmp_path / "zero", progress=False, cuda_graphs=True)
    one = load_results(run_suite(str(path), "cuda", out=tmp_path / "one", progress=False,
                                 cuda_graphs=True).run_dir).set_index("method")
    two = load_results(run_suite(str(path), "cuda", out=tmp_path / "two", progress=False,
                                 cuda_graphs=True, rounds=3).run_dir).set_index("method")
    assert set(two.status) == {"ok"} and set(two.timing_mode) == {"cuda-graph"}
    assert two.n_samples.eq(6).all() and two.eager_samples_ms.map(len).eq(6).all()
    for m in one.index:
        assert abs(one.loc[m, "extra_mem_mib"] - two.loc[m, "extra_mem_mib"]) < 1.0, m
        assert abs(one.loc[m, "peak_mem_mib"] - two.loc[m, "peak_mem_mib"]) < 8.0, m
