"""Decode reports (issue 23): the decode crossover in context length and in sequences per GPU, the
decode plots (log–log time per token and state per sequence), and decode rows in every report."""
from __future__ import annotations

import math

import pytest

from attnbench.cli import main
from attnbench.decode_report import decode_crossover, decode_table, plot_decode, plot_state
from attnbench.html import render_html
from attnbench.plots import make_figures
from attnbench.plotstyle import NothingToPlot
from attnbench.report import to_markdown
from attnbench.store import load_results, read_meta
from test_report import make_run, row, simple_rows

NS = (1024, 4096, 16384, 65536)
GIB = 2**30


def decode_row(method, n, per_token_ms, state_per_seq, batch=1, status="ok", **kw):
    r = row(method, n, time_ms=per_token_ms, mode="decode", causal=True, batch=batch,
            status=status, **kw)
    if status == "ok":
        r.update(time_per_token_ms=per_token_ms, tokens_per_s=batch * 1e3 / per_token_ms,
                 state_bytes_per_seq=state_per_seq, state_bytes=state_per_seq * batch,
                 device_mem_mib=140 * 1024.0, timing_mode="cuda-graph")
        r.pop("rel_err", None)
    return r


def laws(tmp_path, extra=()):
    """sdpa: 1e-4·n ms and 4 KiB per token; linear: constant 0.8192 ms and 1 MiB; local (window
    8192): 0.4096 ms and 32 MiB, a ring of the window whatever n is."""
    rows = []
    for n in NS:
        rows.append(decode_row("sdpa", n, 1e-4 * n, 4096.0 * n))
        rows.append(decode_row("linear", n, 0.8192, 2.0**20))
        rows.append(decode_row("local", n, 0.4096, 4096.0 * 8192, params={"window": 8192}))
    rows += list(extra)
    return make_run(tmp_path / "run", rows, suite="decode")


def test_decode_crossover_in_context_and_sequences(tmp_path):
    df = load_results(laws(tmp_path))
    ct = decode_crossover(df, "sdpa").set_index("method")
    lin = ct.loc["linear"]
    assert lin["faster_from_n"] == "8k"  # 1e-4·n = 0.8192 at n = 8192 (log-log interpolation: exact)
    assert lin["fits_more_from_n"] == "< 1k"  # 1 MiB < 4 MiB already at n = 1k
    assert math.isclose(lin["speedup_at_max_n"], 6.5536 / 0.8192)
    assert lin["seqs_per_gpu_at_max_n"] == 140 * 1024  # 140 GiB / 1 MiB
    assert lin["baseline_seqs_per_gpu"] == math.floor(140 * GIB / (4096 * 65536))
    loc = ct.loc["local(window=8192)"]
    assert loc["fits_more_from_n"] == "8k" and loc["faster_from_n"] == "4k"


def test_never_faster_and_baseline_oom_are_said(tmp_path):
    extra = [decode_row("lsh", n, 1e-4 * n * 2, 4096.0 * n * 1.2) for n in NS]
    extra.append(decode_row("linear", 131072, 0.8192, 2.0**20))
    extra.append(decode_row("sdpa", 131072, 0, 0, status="oom", reason="CUDA out of memory"))
    df = load_results(laws(tmp_path, extra))
    ct = decode_crossover(df, "sdpa").set_index("method")
    assert ct.loc["lsh", "faster_from_n"] == "> 64k" and ct.loc["lsh", "fits_more_from_n"] == "> 64k"
    assert "baseline OOM from n=128k" in ct.loc["linear", "note"]


def test_decode_rows_split_by_batch_and_table_shows_state(tmp_path):
    extra = [decode_row(m, n, t, s, batch=16) for n in NS
             for m, t, s in (("sdpa", 1e-3 * n, 4096.0 * n), ("linear", 2.0, 2.0**20))]
    df = load_results(laws(tmp_path, extra))
    ct = decode_crossover(df, "sdpa")
    assert sorted(zip(ct["method"], ct["batch"].astype(int))) == [
        ("linear", 1), ("linear", 16), ("local(window=8192)", 1)]
    heads, rows = decode_table(df)
    assert heads[:3] == ["method", "batch", "n"] and "state/seq" in heads and "seqs/GPU" in heads
    first = dict(zip(heads, rows[0]))
    assert first["method"] == "linear" and first["state/seq"] == "1 MiB"
    assert first["seqs/GPU"] == "143,360"


def test_decode_plots_are_log_log_with_sequences_per_gpu(tmp_path):
    run = laws(tmp_path)
    df, meta = load_results(run), read_meta(run)
    (fig,) = plot_decode(df, meta).values()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["sdpa"].get_ydata()) == pytest.approx([1e-4 * n for n in NS])
    (fig,) = plot_state(df, meta).values()
    ax = fig.axes[0]
    y = {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()}
    assert y["linear"] == [1.0] * 4 and y["sdpa"] == pytest.approx([4096 * n / 2**20 for n in NS])
    (right,) = ax.child_axes  # sequences per GPU = 140 GiB / state per sequence
    assert right.get_ylabel() == "sequences per GPU (state alone)"
    with pytest.raises(NothingToPlot):
        plot_decode(load_results(make_run(tmp_path / "fwd", simple_rows())), meta)


def test_runs_without_decode_rows_get_no_decode_plots_or_notes(tmp_path):
    run = make_run(tmp_path / "fwd", simple_rows())
    figs, skipped = make_figures(load_results(run), read_meta(run))
    assert not any(s.startswith(("decode", "state")) for s in figs)
    assert "decode" not in skipped and "state" not in skipped


def test_reports_carry_the_decode_sections(tmp_path, capsys):
    run = laws(tmp_path)
    md = to_markdown(run)
    assert "## Decode crossover against sdpa" in md and "fits more from n" in md
    html = render_html(run, plots=False)
    assert "<h2>Decode</h2>" in html and "seqs/GPU" in html
    assert main(["plot", str(run), "--kind", "decode,state", "--format", "png",
                 "--out", str(tmp_path / "p")]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["decode.png", "state.png"]
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Decode crossover against sdpa" in out


def test_a_constant_token_sweep_is_one_line_along_n(tmp_path):
    """total_tokens: the batch follows n, so crossovers and plots group by total_tokens instead."""
    from attnbench.crossover import crossover_table
    from attnbench.plots import plot_scaling

    rows = []
    for n in (1024, 4096, 16384):
        b = 65536 // n
        rows.append(row("sdpa", n, time_ms=1e-4 * n, batch=b, total_tokens=65536))
        rows.append(row("linear", n, time_ms=0.8, batch=b, total_tokens=65536))
    run = make_run(tmp_path / "tt", rows)
    df = load_results(run)
    ct = crossover_table(df, "sdpa")
    assert list(ct["method"]) == ["linear"] and ct.at[0, "time_crossover"] == "7.8k"
    figs = plot_scaling(df, read_meta(run))
    assert list(figs) == ["scaling"]  # one figure, not one per batch
