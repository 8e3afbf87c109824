"""Paper-style grids on synthetic rows with known values: speed-up, memory (fixed and capacity),
baseline OOM marks, paper values beside measured ones, several baselines, CLI outputs."""
import csv
import io

import pytest
from PIL import Image

from attnbench.cli import main
from attnbench.grid import grids, paper_values
from attnbench.store import load_results, read_meta
from test_report import make_run, row

NS, KS = (512, 1024, 2048), (128, 256)


def linformer_rows(batching="fixed"):
    rows = []
    for n in NS:
        cap = batching == "capacity"
        base_status = "oom" if n == 2048 else "ok"
        for name, f in (("sdpa", 1.0), ("naive", 4.0)):
            kw = dict(batching=batching, max_batch=int(64 * 512 / n / f), time_per_seq_ms=f * n / 100) \
                if cap else {}
            st = base_status if name == "naive" else "ok"
            rows.append(row(name, n, time_ms=f * n * n / 1e4, mem=f * n / 10, status=st, **kw))
        for k in KS:
            kw = dict(batching=batching, max_batch=int(64 * 512 / k), time_per_seq_ms=k / 100) \
                if cap else {}
            rows.append(row("linformer", n, time_ms=n * k / 1e4, mem=k / 10,
                            params={"k": k, "sharing": "layerwise"}, **kw))
    rows.append(row("linformer", 512, status="unsupported", reason="k=512 must be < n=512",
                    params={"k": 512, "sharing": "layerwise"}, batching=batching))
    return rows


def test_speedup_values_and_baseline_oom(tmp_path):
    run = make_run(tmp_path / "run", linformer_rows())
    (g,) = grids(load_results(run), read_meta(run), "speedup", "naive")
    assert g.rows == list(NS) and g.cols == [128, 256, 512]
    assert g.values[(1024, 128)] == pytest.approx(4.0 * 1024 / 128)
    assert g.values[(512, 256)] == pytest.approx(4.0 * 512 / 256)
    assert (2048, 128) not in g.values and g.notes[(2048, 128)] == "base OOM"
    assert g.notes[(512, 512)] == "—" and g.cell_text(2048, 256) == "base OOM"


def test_several_baselines_in_one_run(tmp_path):
    run = make_run(tmp_path / "run", linformer_rows())
    df, meta = load_results(run), read_meta(run)
    (g,) = grids(df, meta, "speedup", "sdpa")
    assert g.values[(2048, 128)] == pytest.approx(2048 / 128)  # sdpa ran where naive did not
    (m,) = grids(df, meta, "memory", "sdpa")
    assert m.values[(1024, 256)] == pytest.approx((1024 / 10) / (256 / 10))


def test_capacity_mode_uses_max_batch_and_time_per_sequence(tmp_path):
    run = make_run(tmp_path / "run", linformer_rows("capacity"))
    df, meta = load_results(run), read_meta(run)
    (m,) = grids(df, meta, "memory", "sdpa")
    assert m.values[(1024, 128)] == pytest.approx(int(64 * 512 / 128) / int(64 * 512 / 1024))
    (s,) = grids(df, meta, "speedup", "sdpa")
    assert s.values[(1024, 128)] == pytest.approx((1024 / 100) / (128 / 100))


def test_paper_values_stand_beside_measured_for_the_linformer_suite(tmp_path):
    run = make_run(tmp_path / "run", linformer_rows(), suite="linformer_table3")
    (g,) = grids(load_results(run), read_meta(run), "speedup", "sdpa")
    assert g.paper[(1024, 128)] == 1.7 and g.paper[(2048, 256)] == 2.4
    assert g.cell_text(1024, 128) == "8× (paper 1.7×)"
    assert paper_values("linformer_table3", "n", "k")["memory"][(65536, 2048)] == 18
    assert paper_values("other", "n", "k") == {}
    plain = make_run(tmp_path / "plain", linformer_rows())
    assert not grids(load_results(plain), read_meta(plain), "speedup", "sdpa")[0].paper


def test_cli_grid_prints_and_writes_md_csv_png(tmp_path, capsys):
    run = make_run(tmp_path / "run", linformer_rows(), suite="linformer_table3")
    out = tmp_path / "o"
    assert main(["report", str(run), "--grid", "speedup", "--baseline", "naive", "--rows", "n",
                 "--cols", "k", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "base OOM" in printed and "paper 1.7×" in printed
    (png,) = out.glob("grid-speedup-*.png")
    with Image.open(png) as im:
        im.verify()
    (c,) = out.glob("grid-speedup-*.csv")
    recs = {(r["n"], r["k"]): r for r in csv.DictReader(io.StringIO(c.read_text()))}
    assert float(recs[("1024", "128")]["measured"]) == pytest.approx(32.0)
    assert recs[("2048", "128")]["note"] == "base OOM" and recs[("1024", "128")]["paper"] == "1.7"
    assert main(["report", str(run), "--grid", "memory", "--format", "md", "--out", str(out)]) == 0
    assert "| n \\\\ k |" in capsys.readouterr().out
    assert main(["report", str(run), "--grid", "speedup", "--cols", "nope"]) == 2
