"""compare: matched cells, B/A ratios, verdicts that respect the samples' spread, CI exit codes."""
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
