"""Crossover n: analytic crossings of power laws, "never"/"always" wins, notes, one row per setting."""
import math

import pytest

from attnbench.crossover import crossing, crossover_table
from attnbench.store import load_results
from test_report import make_run, row

NS = [128, 256, 512, 1024, 2048, 4096]


def laws(tmp_path, base_t, meth_t, base_m=None, meth_m=None, ns=NS, **kw):
    rows = []
    for n in ns:
        rows.append(row("sdpa", n, time_ms=base_t(n), mem=(base_m or base_t)(n), **kw))
        rows.append(row("linformer", n, time_ms=meth_t(n), mem=(meth_m or meth_t)(n),
                        params={"k": 64}, **kw))
    return load_results(make_run(tmp_path / "run", rows))


def test_power_laws_cross_where_the_algebra_says(tmp_path):
    # 2e-5 n^2 = 0.03 n^1.1  =>  n* = (0.03 / 2e-5) ** (1 / 0.9); memory 1e-3 n^2 = 0.4 n => n* = 400
    df = laws(tmp_path, lambda n: 2e-5 * n ** 2, lambda n: 0.03 * n ** 1.1,
              lambda n: 1e-3 * n ** 2, lambda n: 0.4 * n)
    ct = crossover_table(df, "sdpa")
    assert len(ct) == 1
    r = ct.iloc[0]
    assert r["time_crossover_n"] == pytest.approx((0.03 / 2e-5) ** (1 / 0.9), rel=0.02)
    assert r["mem_crossover_n"] == pytest.approx(400, rel=0.02)
    assert r["speedup_at_max_n"] == pytest.approx(2e-5 * 4096 ** 2 / (0.03 * 4096 ** 1.1))


def test_smooth_non_power_law_within_two_percent():
    # a fixed overhead bends the method's curve; the log-log chord between measured n is still close
    ns = [2 ** (7 + i / 2) for i in range(12)]
    base = lambda n: 1e-5 * n * n  # noqa: E731
    meth = lambda n: 2.0 + 4e-3 * n  # noqa: E731
    lo, hi = 100.0, 1e5
    for _ in range(200):  # bisection for base(n) = meth(n)
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if base(mid) < meth(mid) else (lo, mid)
    c = crossing(ns, [meth(n) / base(n) for n in ns])
    assert c.kind == "cross" and c.n == pytest.approx(lo, rel=0.02)


def test_never_and_always(tmp_path):
    df = laws(tmp_path, lambda n: 1e-3 * n, lambda n: 1e-2 * n)
    r = crossover_table(df, "sdpa").iloc[0]
    assert r["time_crossover"] == "> 4k" and math.isnan(r["time_crossover_n"])
    df = laws(tmp_path / "b", lambda n: 1e-2 * n, lambda n: 1e-3 * n)
    r = crossover_table(df, "sdpa").iloc[0]
    assert r["time_crossover"] == "< 128" and r["mem_crossover"] == "< 128"


def test_crossing_edge_cases():
    assert crossing([], []).kind == "none"
    assert crossing([256], [0.5]).text == "< 256"
    assert crossing([256], [1.0]).text == "> 256"  # a tie is not a win
    c = crossing([256, 512, 1024, 2048], [2.0, 0.5, 0.5, 1.5])
    assert c.kind == "cross" and c.n == pytest.approx(362.0, rel=1e-3)
    assert "loses again at n=2k" in c.note
    assert crossing([512, 256], [0.5, 2.0]).n == pytest.approx(362.0, rel=1e-3)  # order-free


def test_baseline_oom_is_noted_not_extrapolated(tmp_path):
    rows = []
    for n in NS:
        if n < 4096:
            rows.append(row("sdpa", n, time_ms=1e-3 * n))
        else:
            rows.append(row("sdpa", n, status="oom", reason="out of memory"))
        rows.append(row("linformer", n, time_ms=1e-2 * n, params={"k": 64}))
    r = crossover_table(load_results(make_run(tmp_path / "run", rows)), "sdpa").iloc[0]
    assert r["time_crossover"] == "> 2k"
    assert "baseline OOM from n=4k" in r["note"]


def test_one_row_per_mode_and_method_label(tmp_path):
    rows = []
    for mode, f in (("fwd", 1.0), ("fwd_bwd", 3.0)):
        for n in NS:
            rows.append(row("sdpa", n, time_ms=f * 1e-5 * n * n, mode=mode))
            for k in (32, 64):
                rows.append(row("linformer", n, time_ms=f * 1e-4 * k * n, mode=mode,
                                params={"k": k}))
    ct = crossover_table(load_results(make_run(tmp_path / "run", rows)), "sdpa")
    assert len(ct) == 4 and "mode" in ct.columns
    got = {(r["method"], r["mode"]): r["time_crossover_n"] for _, r in ct.iterrows()}
    assert got[("linformer(k=32)", "fwd")] == pytest.approx(320, rel=0.02)
    assert got[("linformer(k=64)", "fwd_bwd")] == pytest.approx(640, rel=0.02)


def noisy_laws(tmp_path, spread_at, spread=0.5, ns=NS):
    """sdpa 1e-5 n², linformer 0.01 n (they cross at n = 1000); the cells at ``spread_at`` n get
    samples spread ±``spread`` around their median, the others ±1%."""
    rows = []
    for n in ns:
        for m, t, params in (("sdpa", 1e-5 * n * n, {}), ("linformer", 1e-2 * n, {"k": 64})):
            f = spread if n in spread_at else 0.01
            rows.append(row(m, n, time_ms=t, params=params,
                            samples=[t * (1 - f), t * (1 - f / 2), t, t * (1 + f / 2), t * (1 + f)]))
    return load_results(make_run(tmp_path / "run", rows))


def test_a_clean_crossing_is_not_marked(tmp_path):
    r = crossover_table(noisy_laws(tmp_path, spread_at=()), "sdpa").iloc[0]
    assert r["time_crossover"] == "1000" and "noisy" not in r["note"]
    assert r["time_crossover_n"] == pytest.approx(1000, rel=0.01)


def test_a_crossing_bracketed_by_noisy_cells_is_marked_with_its_range(tmp_path):
    # at n = 1024 the speed-up is 1.02: with ±50% samples its range straddles 1
    r = crossover_table(noisy_laws(tmp_path, spread_at=(1024,)), "sdpa").iloc[0]
    assert r["time_crossover"] == "1000?"
    assert r["time_crossover_n"] == pytest.approx(1000, rel=0.01)  # the estimate itself is kept
    # quartiles 0.75 and 1.25 of each side: 1.024 × 0.75 / 1.25 to 1.024 × 1.25 / 0.75
    assert "time: noisy bracket: speed-up 0.61–1.7× at n=1k" in r["note"]
    assert r["mem_crossover"] != "" and "?" not in r["mem_crossover"]


def test_a_noisy_cell_beside_the_crossing_marks_it_and_one_far_away_does_not(tmp_path):
    # ±8% quartile spread (IQR 16% of the median) on the baseline at n = 512, below the crossing
    r = crossover_table(noisy_laws(tmp_path, spread_at=(512,), spread=0.16), "sdpa").iloc[0]
    assert r["time_crossover"] == "1000?" and "IQR over 10% at n=512" in r["note"]
    r = crossover_table(noisy_laws(tmp_path / "far", spread_at=(4096,), spread=0.16), "sdpa").iloc[0]
    assert r["time_crossover"] == "1000"


def test_never_and_always_are_marked_only_when_a_range_straddles_one(tmp_path):
    assert crossing([256, 512], [2.0, 3.0]).bracket == (256, 512)
    df = laws(tmp_path, lambda n: 1e-3 * n, lambda n: 1.2e-3 * n)  # never wins, by 20%
    assert crossover_table(df, "sdpa").iloc[0]["time_crossover"] == "> 4k"
    rows = []
    for n in NS:
        rows.append(row("sdpa", n, time_ms=1e-3 * n, samples=[1e-3 * n * f for f in (0.5, 1, 1.5)]))
        rows.append(row("linformer", n, time_ms=1.2e-3 * n, params={"k": 64}))
    r = crossover_table(load_results(make_run(tmp_path / "n", rows)), "sdpa").iloc[0]
    assert r["time_crossover"] == "> 4k?" and "noisy bracket: speed-up" in r["note"]


def test_report_tables_show_the_marks(tmp_path):
    from attnbench.report import crossover_rows

    heads, rows = crossover_rows(noisy_laws(tmp_path, spread_at=(1024, 4096)), "sdpa")
    r = dict(zip(heads, rows[0]))
    assert r["beats in time from n"] == "1000?" and "noisy bracket" in r["note"]
    assert r["speedup at max n"].endswith("~")  # at 4k: quartile range 0.6 to 1.67 of 410×
