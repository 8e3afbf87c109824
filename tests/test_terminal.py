"""Terminal output that fits: the summary and the full table at the console's width, numbers whole,
cells that did not run collapsed to one line per (method, status, reason)."""
import re
from collections import Counter

import pytest
from rich.cells import cell_len
from rich.console import Console

from attnbench.cli import BadInput, main
from attnbench.report import render_terminal
from attnbench.runner import run_suite
from attnbench.store import load_results
from attnbench.terminal import fit_tables
from test_report import make_run, row

SUITE = """
name = "fits"
baseline = "sdpa"
[sweep]
n = [64, 128, 256]
batch = [1]
heads = [2]
head_dim = [16]
mode = ["fwd", "fwd_bwd"]
[timing]
warmup = 1
warmup_s = 0.0
repeats = 3
[methods.sdpa]
[methods.naive]
[methods.linformer]
k = [32]
[methods.local]
window = [32]
[methods.xformers]
"""
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]\d+)?")
COLLAPSED = re.compile(r"^  (ok|unsupported|oom|oom-pruned|error|crashed|timeout|nan): ")


@pytest.fixture(scope="module")
def quick_like(tmp_path_factory):
    """A quick-like run on the CPU: five methods (xformers unsupported here) at three n, fwd and
    fwd_bwd."""
    tmp = tmp_path_factory.mktemp("fits")
    suite = tmp / "fits.toml"
    suite.write_text(SUITE)
    return run_suite(str(suite), "cpu", out=tmp / "out", progress=False).run_dir


def render(run, width, **kw) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    render_terminal(run, console, **kw)
    return console.export_text()


def numbers(text: str) -> Counter:
    """Every number in the text, counted, leaving out the one-line reasons (cut to the width)."""
    return Counter(t for line in text.splitlines() if not COLLAPSED.match(line)
                   for t in NUMBER.findall(line))


def assert_fits(narrow: str, wide: str, width: int) -> None:
    too_long = [ln for ln in narrow.splitlines() if cell_len(ln) > width]
    assert not too_long, too_long
    # a number folded across lines ("1.13" -> "1." / "13") or cut ("0.4…") loses its whole form:
    # the narrow render must hold every number of the unwrapped one at least as often (blocks of
    # columns only add repeated keys)
    missing = numbers(wide) - numbers(narrow)
    assert not missing, f"numbers split or cut at width {width}: {dict(missing)}"


@pytest.mark.parametrize("table", ["summary", "full"])
def test_quick_like_run_fits_80_columns_with_numbers_whole(quick_like, table):
    narrow, wide = render(quick_like, 80, table=table), render(quick_like, 1000, table=table)
    assert_fits(narrow, wide, 80)
    assert max(cell_len(ln) for ln in wide.splitlines()) > 80  # the unwrapped content is wider
    df = load_results(quick_like)
    n_unsup = int(((df["method"] == "xformers") & (df["status"] == "unsupported")).sum())
    assert n_unsup == 6
    lines = [ln for ln in narrow.splitlines() if "xformers" in ln]
    assert len(lines) == 1 and f"×{n_unsup}" in lines[0] and "unsupported" in lines[0], lines


def test_summary_is_a_grid_per_mode_with_errors_and_crossovers(quick_like):
    text = render(quick_like, 80)
    assert "mode=fwd · time_ms and speed-up over sdpa" in text
    assert "mode=fwd_bwd · time_ms and speed-up over sdpa" in text
    assert "error at the largest n" in text and "crossover against sdpa" in text
    grid = text.split("mode=fwd ·")[1].split("mode=fwd_bwd")[0]
    assert re.search(r"linformer\(k=32\)\s+\S+ \S+×", grid)  # "time speed-up×" per cell
    assert len(text.splitlines()) < 60


def test_grid_blocks_split_n_instead_of_folding(tmp_path):
    ns = [256 * 2 ** i for i in range(10)]
    rows = []
    for n in ns:
        rows.append(row("sdpa", n, time_ms=1e-4 * n * n))
        rows.append(row("bigbird", n, time_ms=1.234e-2 * n, params={"block": 64, "num_global": 64,
                                                                    "num_random": 3}))
    run = make_run(tmp_path / "run", rows)
    narrow, wide = render(run, 80), render(run, 1000)
    assert_fits(narrow, wide, 80)
    assert narrow.count("n=256") == 1 and "n=128k" in narrow
    assert narrow.count("bigbird(block=64,") >= 2  # its row repeats in each block of n


def test_columns_env_is_honoured_in_pipes(quick_like, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["report", str(quick_like), "--format", "table", "--table", "full"]) == 0
    widths = [cell_len(ln) for ln in capsys.readouterr().out.splitlines()]
    assert max(widths) <= 100 and max(widths) > 80


def test_full_table_columns_and_bad_names(quick_like, capsys):
    assert main(["report", str(quick_like), "--format", "table", "--columns",
                 "mode,time_ms,speedup"]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.lstrip().startswith("method"))
    assert header.split() == ["method", "n", "mode", "time_ms", "speedup"]
    assert main(["report", str(quick_like), "--columns", "time_ms,bogus"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown column 'bogus'" in err and "allowed: method, level, n" in err and "peak_MiB" in err
    with pytest.raises(BadInput, match="use it with --table full"):
        render_terminal(quick_like, Console(file=open("/dev/null", "w")), columns=["time_ms"])
    with pytest.raises(BadInput, match="use one of summary, full, none"):
        render_terminal(quick_like, Console(file=open("/dev/null", "w")), table="wide")


def test_table_none_prints_only_the_counts(quick_like):
    text = render(quick_like, 80, table="none")
    assert text.strip().splitlines() == ["cells: ok 24, unsupported 6"]


def test_failed_rows_show_no_time_and_collapse(tmp_path):
    rows = [row("sdpa", n, time_ms=1.0) for n in (256, 512, 1024)]
    rows += [row("naive", n, time_ms=2.0) for n in (256, 512)]
    failed = row("naive", 1024, status="error", reason="boom")
    failed.update(time_ms=123.456, time_ms_iqr=1.0, time_samples_ms=[123.0, 123.456, 124.0])
    rows.append(failed)  # an error after timing keeps its time in the row
    rows += [row("local", n, status="unsupported", reason="window must be smaller than n")
             for n in (256, 512, 1024)]
    run = make_run(tmp_path / "run", rows)
    full = render(run, 80, table="full")
    err_line = next(ln for ln in full.splitlines() if "error" in ln and "naive" in ln)
    assert "123" not in err_line and "boom" in err_line
    assert sum("local" in ln for ln in full.splitlines()) == 1
    summary = render(run, 80)
    assert "123" not in summary
    assert [ln.strip() for ln in summary.splitlines() if "naive" in ln and ": " in ln] == \
        ["error: naive at n=1k: boom"]
    assert "unsupported: local ×3 at n=256,512,1k: window must be smaller than n" in summary


def test_fit_tables_splits_wide_tables_into_blocks_that_fit():
    headers = ["method"] + [f"col{i}" for i in range(12)]
    values = [f"{1234.5678 * i:.4f}" for i in range(12)]
    tables = fit_tables(headers, [["linformer(k=256, sharing=layerwise)"] + values], 80)
    assert len(tables) > 1
    texts = []
    for t in tables:
        console = Console(width=80, record=True, file=open("/dev/null", "w"))
        console.print(t)
        texts.append(console.export_text())
        assert max(cell_len(ln) for ln in texts[-1].splitlines()) <= 80
        assert "linformer" in texts[-1]  # the key column is in every block
    found = Counter(NUMBER.findall("".join(texts)))
    assert all(found[v] == 1 for v in values), found


def test_numbers_keep_three_significant_digits_and_ratios_read_like_the_readme():
    from attnbench.terminal import fmt_ms, fmt_x

    assert [fmt_ms(v) for v in (0.075, 0.2, 0.431, 1.13, 32.04, 121.4, 1234.5, 4e-4)] == \
        ["0.0750", "0.200", "0.431", "1.13", "32.0", "121", "1234", "4.0e-04"]
    assert [fmt_x(v) for v in (0.2, 0.57, 1.0, 7.53, 24.3, float("nan"))] == \
        ["0.20×", "0.57×", "1.0×", "7.5×", "24×", "—"]
