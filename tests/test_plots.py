"""Plots on synthetic runs: files are valid images, one line per method label, stable styles, failed
cells marked, figures split by dtype, seed bands, dominated points, entropy and grid plots. (The
paper-figure properties, legends, captions, CLI options, are in test_plots_paper.py.)"""
import xml.etree.ElementTree as ET

import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.colors import to_hex
from PIL import Image

from attnbench.cli import main
from attnbench.plots import (NothingToPlot, plot_entropy, plot_error, plot_pareto, plot_scaling,
                             style_map)
from attnbench.plotstyle import caption_of
from attnbench.store import load_results, read_meta
from test_report import make_run, row

NS = (256, 512, 1024)


def scaling_rows(dtypes=("fp32",)):
    rows = []
    for dtype in dtypes:
        for mode, f in (("fwd", 1.0), ("fwd_bwd", 3.0)):
            for n in NS:
                kw = dict(mode=mode, dtype=dtype)
                rows.append(row("sdpa", n, time_ms=f * 1e-5 * n * n, mem=n / 100, **kw))
                rows.append(row("naive", n, time_ms=f * 2e-5 * n * n, mem=n * n / 1e4, **kw)
                            if n < 1024 else row("naive", n, status="oom", reason="oom", **kw))
                for k in (32, 64):
                    rows.append(row("linformer", n, time_ms=f * 1e-4 * k * n, mem=k / 10,
                                    rel_err=1 / k, params={"k": k}, **kw))
                rows.append(row("performer", n, status="unsupported", reason="no", **kw))
    return rows


def load(tmp_path, rows, **meta):
    run = make_run(tmp_path / "run", rows, **meta)
    return load_results(run), read_meta(run), run


def test_scaling_has_one_line_per_label_and_marks_failed_cells(tmp_path):
    df, meta, _ = load(tmp_path, scaling_rows())
    (fig,) = plot_scaling(df, meta).values()
    axes = fig.axes
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["mode: forward",
                                                               "mode: forward + backward"]
    for ax in axes:
        labels = sorted(line.get_label() for line in ax.get_lines())
        assert labels == ["linformer(k=32)", "linformer(k=64)", "naive", "sdpa"]
        naive = next(line for line in ax.get_lines() if line.get_label() == "naive")
        assert list(naive.get_xdata()) == [256, 512]
        marks = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
        xs = sorted(float(x) for c in marks for x, _ in c.get_offsets())
        assert xs == [256, 512, 1024, 1024]  # performer unsupported x3, naive OOM at 1024
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert "ms" in ax.get_ylabel() and "n" in ax.get_xlabel()
    base = next(line for line in axes[0].get_lines() if line.get_label() == "sdpa")
    assert to_hex(base.get_color()) == "#000000" and base.get_linewidth() > 2
    title, caption = fig._suptitle.get_text(), caption_of(fig)
    assert "Test CPU" in title and "dtype=fp32" in caption and "level=core" in caption


def test_styles_are_stable_across_plots(tmp_path):
    df, meta, _ = load(tmp_path, scaling_rows())
    colours = []
    for figs in (plot_scaling(df, meta), plot_scaling(df, meta, metric="memory"),
                 plot_pareto(df, meta)):
        fig = next(iter(figs.values()))
        colours.append({ln.get_label(): (to_hex(ln.get_color()), ln.get_marker())
                        for ln in fig.axes[0].get_lines() if ln.get_label().startswith(("lin", "s"))})
    assert colours[0] == colours[1] == {k: v for k, v in colours[2].items() if k in colours[0]}
    s = style_map(df, "sdpa")
    assert s["linformer(k=32)"]["marker"] == s["linformer(k=64)"]["marker"]
    assert s["linformer(k=32)"]["color"] != s["linformer(k=64)"]["color"]


def test_several_dtypes_make_separate_figures(tmp_path):
    df, meta, _ = load(tmp_path, scaling_rows(("fp32", "bf16")))
    figs = plot_scaling(df, meta)
    assert sorted(figs) == ["scaling-dtype=bf16", "scaling-dtype=fp32"]
    assert "dtype=bf16" in figs["scaling-dtype=bf16"]._suptitle.get_text()


def test_error_plot_means_and_bands_over_seeds(tmp_path):
    rows = []
    for seed, err in ((0, 0.10), (1, 0.20), (2, 0.30)):
        for k in (16, 32, 64):
            rows.append(row("linformer", 512, rel_err=err * 16 / k, seed=seed, params={"k": k}))
            rows.append(row("performer", 512, rel_err=err, seed=seed, params={"nb_features": k}))
    df, meta, _ = load(tmp_path, rows)
    (fig,) = plot_error(df, meta).values()
    assert [a.get_title() for a in fig.axes] == ["linformer", "performer"]
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [16, 32, 64]
    assert list(line.get_ydata()) == pytest.approx([0.2, 0.1, 0.05])
    assert any(isinstance(c, PolyCollection) for c in fig.axes[0].collections)
    assert "3 seeds" in caption_of(fig) and "k" in fig.axes[0].get_xlabel()


def test_pareto_marks_dominated_points_hollow(tmp_path):
    rows = [row("sdpa", 1024, time_ms=10.0, rel_err=1e-7),
            row("linformer", 1024, time_ms=1.0, rel_err=0.1, params={"k": 64}),
            row("linformer", 1024, time_ms=2.0, rel_err=0.2, params={"k": 128})]  # worse on both
    df, meta, _ = load(tmp_path, rows)
    (fig,) = plot_pareto(df, meta, n=1024).values()
    faces = {ln.get_label(): ln.get_markerfacecolor() for ln in fig.axes[0].get_lines()
             if not ln.get_label().startswith("_")}
    assert faces["linformer(k=128)"] == "none"
    assert faces["linformer(k=64)"] != "none" and faces["sdpa"] != "none"
    with pytest.raises(NothingToPlot, match="measured n: 1024"):
        plot_pareto(df, meta, n=4096)


def test_entropy_plot_with_uniform_baseline(tmp_path):
    rows = []
    for scale, ent in ((0.5, 0.95), (1.0, 0.8), (2.0, 0.5)):
        inp = {"regime": "gaussian", "qk_scale": scale}
        for m, p, err in (("linformer", {"k": 64}, 0.1 / ent), ("performer", {"nb_features": 64},
                                                                0.05 / ent)):
            rows.append(row(m, 512, rel_err=err, params=p, input=inp, entropy=ent,
                            uniform_rel_err=1 - ent, cell_id=f"{m}{scale}"))
    df, meta, _ = load(tmp_path, rows)
    (fig,) = plot_entropy(df, meta).values()
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"linformer(k=64)", "performer(nb_features=64)",
                          "uniform: every query returns mean(V)"}
    assert list(lines["linformer(k=64)"].get_xdata()) == [0.5, 0.8, 0.95]
    assert list(lines["uniform: every query returns mean(V)"].get_ydata()) == pytest.approx(
        [0.5, 0.2, 0.05])
    with pytest.raises(NothingToPlot, match="entropy"):
        plot_entropy(load(tmp_path / "x", scaling_rows())[0], meta)


def test_cli_writes_valid_png_and_svg(tmp_path, capsys):
    _, _, run = load(tmp_path, scaling_rows())
    assert main(["plot", str(run), "--kind", "scaling,memory,pareto,grid"]) == 0
    out = run / "plots"
    pngs, svgs = sorted(out.glob("*.png")), sorted(out.glob("*.svg"))
    assert {p.stem for p in pngs} >= {"scaling", "memory", "pareto-n1024"}
    assert any(p.stem.startswith("grid-speedup-linformer") for p in pngs)
    assert len(pngs) == len(svgs)
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        assert Image.open(p).size[0] > 300
    for s in svgs:
        assert ET.parse(s).getroot().tag.endswith("svg")
    assert main(["plot", str(run), "--kind", "entropy"]) == 2
    assert "entropy" in capsys.readouterr().err
    assert main(["plot", str(run), "--kind", "bogus"]) == 2
