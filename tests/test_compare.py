"""compare: matched cells, B/A ratios, verdicts that respect the samples' spread, CI exit codes."""
import pytest

from attnbench.cli import main
from attnbench.compare import compare_frames
from attnbench.compare import load_run as load_results
from test_report import make_run, row

SPREAD = [0.9, 0.95, 1.0, 1.05, 1.1]  # IQR = 10% of the median


def runs(tmp_path, b_factor, samples=SPREAD, **b_kw):
    a, b = [], []
    for n in (256, 512):
        for m, t in (("sdpa", 1.0), ("naive", 2.0)):
            a.append(row(m, n, time_ms=t * n, samples=[t * n * f for f in samples], mem=n))
            bt = t * n * b_factor.get((m, n), 1.0)
            b.append(row(m, n, time_ms=bt, samples=[bt * f for f in samples], mem=n, **b_kw))
    return make_run(tmp_path / "a", a), make_run(tmp_path / "b", b)


def verdicts(cmp):
    return {(r["method"], r["n"]): r["verdict"] for _, r in cmp.iterrows()}


def test_two_fold_slowdown_is_flagged_and_one_percent_inside_the_spread_is_same(tmp_path):
    a, b = runs(tmp_path, {("naive", 512): 2.0, ("sdpa", 256): 1.01})
    cmp, extra = compare_frames(load_results(a), load_results(b))
    v = verdicts(cmp)
    assert v[("naive", 512)] == "slower" and v[("sdpa", 256)] == "same"
    assert v[("naive", 256)] == "same" and extra == {"only_a": 0, "only_b": 0}
    r = cmp[(cmp["method"] == "naive") & (cmp["n"] == 512)].iloc[0]
    assert r["time_ratio"] == 2.0 and r["mem_verdict"] == "same"


def test_one_percent_without_spread_is_a_change(tmp_path):
    # the same 1% with (almost) no spread is outside it: the IQR decides, not a fixed tolerance
    a, b = runs(tmp_path, {("sdpa", 256): 1.01, ("sdpa", 512): 0.98}, samples=[1.0, 1.0, 1.0001])
    v = verdicts(compare_frames(load_results(a), load_results(b))[0])
    assert v[("sdpa", 256)] == "slower" and v[("sdpa", 512)] == "faster"
    v = verdicts(compare_frames(load_results(a), load_results(b), threshold=0.05)[0])
    assert v[("sdpa", 256)] == "same"


def test_fail_if_slower_exit_codes(tmp_path, capsys):
    a, b = runs(tmp_path, {("naive", 512): 2.0})
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "1 slower" in out and "3 same" in out
    assert main(["compare", str(a), str(b), "--fail-if-slower", "10"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--fail-if-slower", "150"]) == 0
    assert main(["compare", str(a), str(a), "--fail-if-slower", "0"]) == 0


def test_broken_cells_unmatched_cells_and_memory(tmp_path, capsys):
    a = make_run(tmp_path / "a", [row("sdpa", 256, time_ms=1.0, mem=10.0), row("naive", 256),
                                  row("naive", 512)])
    b = make_run(tmp_path / "b", [row("sdpa", 256, time_ms=1.0, mem=20.0),
                                  row("naive", 256, status="oom", reason="oom"),
                                  row("sdpa", 1024)])
    cmp, extra = compare_frames(load_results(a), load_results(b))
    v = verdicts(cmp)
    assert v[("naive", 256)] == "broke" and extra == {"only_a": 1, "only_b": 1}
    assert cmp.set_index("method").loc["sdpa", "mem_verdict"] == "more"
    assert main(["compare", str(a), str(b), "--format", "md"]) == 0
    assert "| method |" in capsys.readouterr().out


def test_no_matching_cells_is_bad_input(tmp_path):
    a = make_run(tmp_path / "a", [row("sdpa", 256)])
    b = make_run(tmp_path / "b", [row("sdpa", 512)])
    assert main(["compare", str(a), str(b)]) == 2


def two(tmp_path, a_rows, b_rows):
    return (load_results(make_run(tmp_path / "a", a_rows)), load_results(make_run(tmp_path / "b", b_rows)))


def test_overlapping_sample_ranges_are_same_even_when_quartiles_are_apart(tmp_path):
    # quartiles 1.1–1.3 against 1.35–1.55 do not overlap; the ranges 1.0–1.4 and 1.25–1.65 do
    a, b = two(tmp_path, [row("sdpa", 256, time_ms=1.2, samples=[1.0, 1.1, 1.2, 1.3, 1.4])],
               [row("sdpa", 256, time_ms=1.45, samples=[1.25, 1.35, 1.45, 1.55, 1.65])])
    assert verdicts(compare_frames(a, b)[0]) == {("sdpa", 256): "same"}
    a, b = two(tmp_path / "2", [row("sdpa", 256, time_ms=1.2, samples=[1.0, 1.1, 1.2, 1.3, 1.4])],
               [row("sdpa", 256, time_ms=1.6, samples=[1.45, 1.5, 1.6, 1.7, 1.8])])
    assert verdicts(compare_frames(a, b)[0]) == {("sdpa", 256): "slower"}


def test_a_single_sample_falls_back_to_the_iqr(tmp_path):
    a, b = two(tmp_path, [row("sdpa", 256, time_ms=1.0, iqr=0.2, samples=[1.0])],
               [row("sdpa", 256, time_ms=1.1, iqr=0.2, samples=[1.1])])
    assert verdicts(compare_frames(a, b)[0]) == {("sdpa", 256): "same"}
    a, b = two(tmp_path / "2", [row("sdpa", 256, time_ms=1.0, iqr=0.01, samples=[1.0])],
               [row("sdpa", 256, time_ms=1.1, iqr=0.01, samples=[1.1])])
    assert verdicts(compare_frames(a, b)[0]) == {("sdpa", 256): "slower"}


def test_graph_replays_against_eager_calls_compare_the_eager_times(tmp_path):
    eager = [1.0, 1.01, 1.02]
    graph = row("sdpa", 256, time_ms=0.3, samples=[0.3, 0.3, 0.3], timing_mode="cuda-graph",
                eager_time_ms=1.01, eager_samples_ms=eager, eager_time_ms_iqr=0.01)
    plain = row("sdpa", 256, time_ms=1.01, samples=eager, timing_mode="eager")
    cmp, _ = compare_frames(*two(tmp_path, [graph], [plain]))
    r = cmp.iloc[0]
    assert r["verdict"] == "same" and r["timing"] == "eager" and r["time_ratio"] == 1.0
    cmp, _ = compare_frames(*two(tmp_path / "2", [graph], [graph]))
    assert cmp.iloc[0]["timing"] == "cuda-graph" and cmp.iloc[0]["time_a"] == 0.3


def scattered(tmp_path, slow=None):
    """12 cells whose B/A ratios scatter ±20% with tight samples (a machine whose load changed),
    and optionally one cell ``slow`` times slower."""
    a, b = [], []
    factors = [0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 0.88, 1.12, 0.97]
    for i, f in enumerate(factors):
        n = 64 * (i + 1)
        a.append(row("sdpa", n, time_ms=1.0, samples=[0.99, 1.0, 1.01]))
        g = f * (slow if slow and i == 0 else 1.0)
        b.append(row("sdpa", n, time_ms=g, samples=[0.99 * g, g, 1.01 * g]))
    return two(tmp_path, a, b)


def test_threshold_auto_calls_the_run_to_run_scatter_same_but_not_a_real_change(tmp_path):
    from attnbench.compare import noise_floor

    a, b = scattered(tmp_path)
    cmp, _ = compare_frames(a, b)
    assert (cmp["verdict"] != "same").sum() >= 9  # the samples alone can't see the drift
    assert 0.2 < cmp.attrs["noise_floor"] < 0.8
    assert set(compare_frames(a, b, threshold="auto")[0]["verdict"]) == {"same"}
    a, b = scattered(tmp_path / "slow", slow=3.0)
    v = compare_frames(a, b, threshold="auto")[0].set_index("n")["verdict"]
    assert v[64] == "slower" and (v.drop(64) == "same").all()
    assert noise_floor([1.0] * 7) != noise_floor([1.0] * 7)  # too few cells: nan


def test_summary_and_note_say_how_far_the_cells_scatter(tmp_path, capsys):
    a = make_run(tmp_path / "a", [row("sdpa", 64 * (i + 1), time_ms=1.0, samples=[0.99, 1.0, 1.01])
                                  for i in range(12)])
    fs = [0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 0.88, 1.12, 0.97]
    b = make_run(tmp_path / "b", [row("sdpa", 64 * (i + 1), time_ms=f, samples=[0.99 * f, f, 1.01 * f])
                                  for i, f in enumerate(fs)])
    assert main(["compare", str(a), str(b)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "per-cell scatter ±" in out and "--threshold auto" in out
    assert main(["compare", str(a), str(b), "--threshold", "auto"]) == 0
    assert "12 same" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("flag,value", [("--fail-if-slower", "nan"), ("--fail-if-slower", "-5"),
                                        ("--fail-if-slower", "inf"), ("--threshold", "nan"),
                                        ("--threshold", "-1"), ("--threshold", "lots"),
                                        ("--mem-tolerance", "inf"), ("--mem-tolerance", "-2")])
def test_bad_percentages_are_bad_input(tmp_path, capsys, flag, value):
    a, b = runs(tmp_path, {})
    assert main(["compare", str(a), str(b), f"{flag}={value}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{flag} {value}: give a percentage >= 0" in err


def test_runs_without_rows_or_without_status_are_bad_input(tmp_path, capsys):
    from attnbench.store import write_json_atomic

    good = make_run(tmp_path / "good", [row("sdpa", 256)])
    empty = tmp_path / "empty"
    empty.mkdir()
    write_json_atomic(empty / "meta.json", {"suite": "x", "baseline": "sdpa"})
    assert main(["compare", str(good), str(empty)]) == 2
    assert "has no result rows yet" in " ".join(capsys.readouterr().err.split())
    bare = make_run(tmp_path / "bare", [{k: v for k, v in row("sdpa", 256).items() if k != "status"}])
    assert main(["compare", str(bare), str(good)]) == 2  # its one row is set aside as malformed
    assert "has no result rows yet" in " ".join(capsys.readouterr().err.split())
    mixed = make_run(tmp_path / "mixed", [row("sdpa", 256), {k: v for k, v in row("sdpa", 512).items()
                                                             if k != "status"}])
    cmp, _ = compare_frames(load_results(mixed), load_results(good))
    assert verdicts(cmp) == {("sdpa", 256): "same"}
    assert main(["compare", str(mixed), str(good)]) == 0
