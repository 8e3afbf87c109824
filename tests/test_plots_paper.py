"""Plots fit for a paper, on synthetic runs shaped like the real ones: every legend entry is something
drawn, legends clear of the data, a sensible axis for one budget value, title and caption split,
IQR bars, heatmaps only for real grids, and the plot CLI's options and errors."""
import json
import os
import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox
from PIL import Image

from attnbench.cli import main
from attnbench.plots import (Look, make_figures, plot_error, plot_grid, plot_memory, plot_scaling,
                             style_map)
from attnbench.plotstyle import FAILED_NOTES, caption_of
from attnbench.store import load_results, read_meta
from test_report import make_run, row

NS = (256, 512, 1024)
MARKER_OF = {note: marker for marker, note in FAILED_NOTES.items()}
XFORMERS = "unavailable: xformers not installed (pip install 'attnbench[xformers]')"


def quick_rows(ks=(64,), svd_at=NS):
    """Like the quick suite: one budget value per method, SVD error where measured, xformers missing."""
    rows = []
    for mode, f in (("fwd", 1.0), ("fwd_bwd", 3.0)):
        for n in NS:
            kw = dict(mode=mode, entropy=0.9, uniform_rel_err=0.8)
            rows.append(row("sdpa", n, time_ms=f * 1e-5 * n * n, mem=n / 100, **kw))
            rows.append(row("xformers", n, status="unsupported", reason=XFORMERS, mode=mode))
            for k in ks:
                rows.append(row("linformer", n, time_ms=f * 1e-4 * k * n, mem=k / 10, rel_err=8 / k,
                                params={"k": k}, svd_rel_err=1 / k if n in svd_at else None, **kw))
            rows.append(row("local", n, time_ms=f * 2e-4 * n, mem=n / 50, rel_err=0.5,
                            params={"window": 128}, **kw))
    return rows


def load(tmp_path, rows, **meta):
    run = make_run(tmp_path / "run", rows, **meta)
    return load_results(run), read_meta(run), run


def render(fig):
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def drawn(artist) -> bool:
    """Whether an artist leaves ink: a line needs two finite points or a marker, a collection some
    offsets or segments, an error-bar container one such child."""
    if isinstance(artist, ErrorbarContainer):
        return any(drawn(a) for a in artist.get_children())
    if not artist.get_visible():
        return False
    if isinstance(artist, Line2D):
        xy = np.asarray(artist.get_xydata(), dtype=float).reshape(-1, 2)
        pts = int(np.isfinite(xy).all(axis=1).sum())
        has_marker = artist.get_marker() not in (None, "None", "none", "", " ")
        return pts >= 2 and artist.get_linestyle() not in ("None", "none", "") or pts >= 1 and has_marker
    if isinstance(artist, ErrorbarContainer):
        return any(drawn(a) for a in artist.get_children())
    if isinstance(artist, LineCollection):
        return len(artist.get_segments()) > 0
    return len(artist.get_offsets()) > 0 if hasattr(artist, "get_offsets") else True


def legends(fig):
    out = list(fig.legends)
    out += [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return out


def assert_legends_honest(fig):
    """Each legend entry names an artist drawn in some panel; a failed-cell marker entry stands for
    markers of that shape drawn in some panel."""
    artists = [a for ax in fig.axes for a in [*ax.lines, *ax.collections, *ax.containers]]
    for leg in legends(fig):
        for text in leg.get_texts():
            marker = MARKER_OF.get(text.get_text())
            if marker:
                assert any(a.get_gid() == f"failed:{marker}" and drawn(a) for a in artists), marker
            else:
                assert any(a.get_label() == text.get_text() and drawn(a) for a in artists), \
                    f"legend entry {text.get_text()!r} has nothing drawn"


def assert_legends_clear(fig):
    """No legend overlaps the data area of any panel or the figure's title (renderer extents, in
    pixels)."""
    renderer = render(fig)
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
    if fig._suptitle is not None and fig._suptitle.get_text():
        boxes.append(fig._suptitle.get_window_extent(renderer))
    for leg in legends(fig):
        lb = leg.get_window_extent(renderer)
        for ab in boxes:
            inter = Bbox.intersection(lb, ab)
            assert inter is None or inter.width * inter.height < 1.0, (lb, ab)


def assert_texts_inside(fig):
    renderer = render(fig)
    canvas = fig.bbox
    for t in [fig._suptitle, *fig.texts, *(ax.title for ax in fig.axes)]:
        if t is None or not t.get_text():
            continue
        b = t.get_window_extent(renderer)
        assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= canvas.x1 + 1 and b.y1 <= canvas.y1 + 1, \
            (t.get_text(), b, canvas)


def test_every_legend_entry_is_drawn_and_clear_of_the_data(tmp_path):
    df, meta, _ = load(tmp_path, quick_rows(svd_at=(256, 512)))  # no SVD at the largest n
    figs, skipped = make_figures(df, meta)
    assert {"scaling", "memory", "error", "pareto-n1024", "entropy"} <= set(figs)
    for stem, fig in figs.items():
        assert_legends_honest(fig)
        assert_legends_clear(fig)
        assert_texts_inside(fig)
    (error_axes,) = [ax for ax in figs["error"].axes if ax.get_title() == "linformer"]
    labels = [t.get_text() for t in error_axes.get_legend().get_texts()]
    assert labels.count("best rank-k (SVD)") == 1
    entropy_labels = [t.get_text() for t in figs["entropy"].legends[0].get_texts()]
    assert "uniform: every query returns mean(V)" in entropy_labels


def test_an_unavailable_method_has_no_legend_entry_and_is_named_in_the_caption(tmp_path):
    df, meta, _ = load(tmp_path, quick_rows())
    for fig in [*plot_scaling(df, meta).values(), *plot_memory(df, meta).values()]:
        texts = [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
        assert texts and not any("xformers" in t for t in texts)
        assert not any(c.get_gid() for ax in fig.axes for c in ax.collections
                       if str(c.get_gid()).startswith("failed:"))
        assert "xformers (xformers not installed)" in caption_of(fig)


def test_an_unsupported_cell_of_a_method_that_ran_is_still_marked(tmp_path):
    rows = quick_rows() + [row("linformer", 2048, status="unsupported", reason="k must be < n",
                               params={"k": 64})]
    df, meta, _ = load(tmp_path, rows)
    (fig,) = plot_scaling(df, meta).values()
    marks = [c for c in fig.axes[0].collections if c.get_gid() == "failed:|"]
    assert [float(x) for c in marks for x, _ in c.get_offsets()] == [2048]
    assert "unsupported (top edge)" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert_legends_honest(fig)


def test_one_budget_value_gets_a_tick_at_it_not_a_degenerate_range(tmp_path):
    df, meta, _ = load(tmp_path, quick_rows())
    (fig,) = plot_error(df, meta).values()
    for ax, value in zip(fig.axes, (64, 128)):  # linformer k=64, local window=128
        assert list(ax.get_xticks()) == [value]
        lo, hi = ax.get_xlim()
        assert lo < value < hi and hi / lo >= 1.5  # room either side, on a ratio scale
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(value)]


def test_several_budget_values_each_get_a_tick(tmp_path):
    df, meta, _ = load(tmp_path, quick_rows(ks=(32, 64, 128)))
    (fig,) = plot_error(df, meta).values()
    assert list(fig.axes[0].get_xticks()) == [32, 64, 128]
    assert fig.axes[0].get_xscale() == "log"


def test_title_says_what_suite_device_and_the_caption_holds_the_constants(tmp_path):
    df, meta, _ = load(tmp_path, quick_rows(), suite="quick")
    figs, _ = make_figures(df, meta, ("scaling", "error"))
    for fig in figs.values():
        title, caption = fig._suptitle.get_text(), caption_of(fig)
        assert "quick" in title and "Test CPU" in title
        assert "heads" not in title and "head_dim" not in title and "qk_scale" not in title
        assert "heads=2" in caption and "head_dim=16" in caption and "qk_scale=1.0" in caption
    assert figs["scaling"]._suptitle.get_text().startswith("time vs n")
    bare, _ = make_figures(df, meta, ("scaling",), look=Look(title=False))
    assert bare["scaling"]._suptitle is None and "heads=2" in caption_of(bare["scaling"])
    mixed = quick_rows() + [{**r, "dtype": "bf16", "cell_id": r["cell_id"] + "-bf"} for r in quick_rows()]
    df2, meta2, _ = load(tmp_path / "mixed", mixed)
    split, _ = make_figures(df2, meta2, ("scaling",), look=Look(title=False))
    assert caption_of(split["scaling-dtype=bf16"]).startswith("dtype=bf16 · ")  # the facet moves down
    none, _ = make_figures(df, meta, ("scaling",), look=Look(title=False, caption=False))
    assert none["scaling"]._suptitle is None and caption_of(none["scaling"]) == ""


def test_time_points_carry_iqr_bars_from_the_samples(tmp_path):
    rows = [row("sdpa", n, time_ms=3.0 * n, samples=[1.0 * n, 2.0 * n, 3.0 * n, 4.0 * n, 100.0 * n])
            for n in NS]
    rows += [row("linformer", n, time_ms=2.0, iqr=0.5, samples=[], params={"k": 8}) for n in NS]
    df, meta, _ = load(tmp_path, rows)
    (fig,) = plot_scaling(df, meta).values()
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    segs = {}
    for c in bars:
        for coll in c.lines[2]:
            for seg in coll.get_segments():
                segs.setdefault(float(seg[0][0]), []).append(sorted(float(y) for y in seg[:, 1]))
    for n in NS:  # sdpa: quartiles of its samples; linformer, no samples: median ± IQR/2
        assert sorted(segs[n]) == [pytest.approx([1.75, 2.25]), pytest.approx([2.0 * n, 4.0 * n])]
    assert "IQR" in caption_of(fig)
    (mem,) = plot_memory(df, meta).values()
    assert not any(mem_ax.containers for mem_ax in mem.axes)
    assert "no spread bars" in caption_of(mem)


def test_grid_draws_only_grids_of_two_by_two_or_more(tmp_path, capsys):
    _, _, run = load(tmp_path, quick_rows())
    assert main(["plot", str(run), "--kind", "grid", "--format", "png"]) == 2
    err = capsys.readouterr().err
    assert "at least 2" in err and "Traceback" not in err
    assert not list((run / "plots").glob("*.png")) if (run / "plots").exists() else True
    df, meta, run2 = load(tmp_path / "b", quick_rows(ks=(32, 64)))
    figs = plot_grid(df, meta)
    assert figs and all("linformer" in stem for stem in figs)  # local has one window: no heatmap
    for fig in figs.values():
        assert min(fig.axes[0].images[0].get_array().shape) >= 2
        assert_texts_inside(fig)
    assert main(["plot", str(run2), "--kind", "grid", "--format", "png"]) == 0
    assert sorted(p.stem for p in (run2 / "plots").glob("*.png")) == sorted(figs)


def test_heatmap_title_fits_even_for_a_long_device_name(tmp_path):
    df, meta, _ = load(tmp_path, quick_rows(ks=(32, 64)), suite="a_rather_long_suite_name_for_tables",
                       provenance={"device_name": "NVIDIA H100 80GB HBM3 with a long marketing name"})
    for fig in plot_grid(df, meta).values():
        assert_texts_inside(fig)
        assert "heads=2" not in fig._suptitle.get_text() and "heads=2" in caption_of(fig)


def test_cli_formats_dpi_and_title(tmp_path, capsys):
    _, _, run = load(tmp_path, quick_rows())
    out = tmp_path / "o"
    assert main(["plot", str(run), "--kind", "scaling", "--format", "pdf,svg,png", "--out", str(out),
                 "--dpi", "60", "--no-title"]) == 0
    assert (out / "scaling.pdf").read_bytes().startswith(b"%PDF")
    assert (out / "scaling.svg").exists()
    with Image.open(out / "scaling.png") as im:
        small = im.size[0]
    assert main(["plot", str(run), "--kind", "scaling", "--format", "png", "--out", str(out),
                 "--dpi", "120"]) == 0
    with Image.open(out / "scaling.png") as im:
        assert im.size[0] == pytest.approx(2 * small, abs=2)
    capsys.readouterr()
    nowhere = tmp_path / "nothing"
    assert main(["plot", str(run), "--format", "png,bmp", "--out", str(nowhere)]) == 2
    err = capsys.readouterr().err
    assert "bmp" in err and "png, svg, pdf" in err and not nowhere.exists()
    for bad in ("0", "-3", "ten"):
        assert main(["plot", str(run), "--dpi", bad, "--out", str(nowhere)]) == 2
    assert not nowhere.exists()


def test_cli_methods_filter_keeps_the_baseline_and_the_colours(tmp_path, capsys):
    df, meta, run = load(tmp_path, quick_rows(ks=(32, 64)))
    everything = style_map(df, "sdpa")
    figs, _ = make_figures(df, meta, ("scaling",), methods=["LIN*"])
    fig = figs["scaling"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["sdpa", "linformer(k=32)", "linformer(k=64)"]
    for line in fig.axes[0].lines:
        assert line.get_color() == everything[line.get_label()]["color"]
    figs, _ = make_figures(df, meta, ("scaling",), methods=["linformer(k=64)"])
    assert [t.get_text() for t in figs["scaling"].legends[0].get_texts()] == ["sdpa", "linformer(k=64)"]
    out = tmp_path / "o"
    assert main(["plot", str(run), "--methods", "local", "--kind", "error", "--out", str(out)]) == 0
    assert main(["plot", str(run), "--methods", "perf*,local", "--out", str(out / "x")]) == 2
    err = capsys.readouterr().err
    assert "perf*" in err and "linformer" in err and not (out / "x").exists()


def test_unwritable_output_is_one_line_naming_out(tmp_path, capsys):
    _, _, run = load(tmp_path, quick_rows())
    (run / "plots").write_text("a file where the plots directory would go")
    assert main(["plot", str(run), "--kind", "scaling"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err and str(run / "plots") in err.replace("\n", "")
    assert main(["plot", str(run), "--kind", "scaling", "--out", str(run / "plots" / "sub")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_run_directory(tmp_path, capsys):
    _, _, run = load(tmp_path, quick_rows())
    run.chmod(0o555)
    try:
        assert main(["plot", str(run), "--kind", "scaling"]) == 2
        assert "--out" in capsys.readouterr().err
    finally:
        run.chmod(0o755)


def test_rows_lacking_columns_are_skipped_with_a_warning(tmp_path, capsys):
    _, _, run = load(tmp_path, quick_rows())
    broken = [{"hello": 1}, {"method": "sdpa", "n": 256, "mode": "fwd"},
              {"method": "sdpa", "status": "ok", "mode": "fwd", "time_ms": 1.0},
              {**row("sdpa", 256, mode="fwd"), "n": "abc"}]
    with open(run / "results.jsonl", "a", encoding="utf-8") as f:
        for rec in broken:
            f.write(json.dumps(rec) + "\n")
    assert main(["plot", str(run), "--format", "png"]) == 0
    captured = capsys.readouterr()
    # the store sets them aside, one warning line naming each
    assert len(re.findall(r"warning: \S+results\.jsonl:\d+: (?:set aside|skipped)", captured.err)) == 4
    assert "Traceback" not in captured.err
    assert (run / "plots" / "scaling.png").exists() and (run / "plots" / "error.png").exists()


def test_figure_names_leave_out_axes_a_figure_does_not_have(tmp_path):
    rows = [row("linformer", 512, rel_err=0.1, params={"k": 32},
                input={"regime": "gaussian", "qk_scale": 1.0}),
            *(row("linformer", 512, rel_err=0.2, params={"k": 32}, cell_id=layout,
                  input={"regime": "peaked", "layout": layout}) for layout in ("local", "random"))]
    df, meta, _ = load(tmp_path, rows)
    figs = plot_error(df, meta)
    assert sorted(figs) == ["error-layout=local-regime=peaked", "error-layout=random-regime=peaked",
                            "error-regime=gaussian"]
    assert "nan" not in figs["error-regime=gaussian"]._suptitle.get_text()
    assert "qk_scale=1.0" in caption_of(figs["error-regime=gaussian"])


def test_entropy_draws_one_uniform_curve_per_exact_reference(tmp_path):
    rows = []
    for scale, ent in ((0.5, 0.95), (1.0, 0.8)):
        inp = {"regime": "gaussian", "qk_scale": scale}
        rows.append(row("linformer", 512, rel_err=0.3, params={"k": 64}, input=inp, entropy=ent,
                        uniform_rel_err=1 - ent, cell_id=f"l{scale}"))
        rows.append(row("performer", 512, rel_err=0.2, params={"nb_features": 64}, input=inp,
                        entropy=ent, uniform_rel_err=1 - ent, cell_id=f"p{scale}"))
        rows.append(row("lsh", 512, rel_err=0.4, params={"n_hashes": 2}, input=inp, entropy=0.99,
                        uniform_rel_err=0.1 * scale, cell_id=f"h{scale}"))  # its own reference
    df, meta, _ = load(tmp_path, rows)
    (fig,) = make_figures(df, meta, ("entropy",))[0].values()
    black = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]
    assert sorted(sorted(zip(ln.get_xdata(), ln.get_ydata())) for ln in black) == [
        [(0.8, pytest.approx(0.2)), (0.95, pytest.approx(0.05))], [(0.99, 0.05), (0.99, 0.1)]]
    assert [ln.get_label() for ln in black].count("uniform: every query returns mean(V)") == 1
    assert_legends_honest(fig)


def test_quality_plot_of_a_committed_training_run_keeps_its_legend_clear_of_the_title():
    """The lra_lite run on the H200 (ten methods, long labels, a long title): the legend beside the
    panels must clear the figure's title as well as the data."""
    from pathlib import Path

    from attnbench.plot_train import plot_quality

    run = Path(__file__).parent.parent / "results" / "h200" / "lra_lite" / "20261203-162021-h200-9c06"
    figs = plot_quality(load_results(run), read_meta(run))
    assert len(figs) == 2  # mqar and listops at n = 1024
    for fig in figs.values():
        assert_legends_honest(fig)
        assert_legends_clear(fig)
