"""Spectrum of real attention matrices, after Figure 1 of Linformer (Wang et al., 2020,
https://arxiv.org/abs/2006.04768).

The paper's argument for projecting keys and values to k rows: the normalized cumulative singular values
of a pretrained model's P = softmax(QKᵀ/√d) rise fast, so most of P lives in a few directions. Here we
measure the same for every layer and head of MiniLM-L6 on real text (:mod:`attnbench.real`), averaged
over windows, and report how many singular values reach 90/95/99 % and the value at index n/4 (128 of
512, the paper's heatmap). By Eckart–Young the SVD truncated at rank k is the best rank-k approximation,
so its error is a lower bound that any low-rank method's attention matrix can only match.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

FRACTIONS = (0.90, 0.95, 0.99)
ERROR_RANKS = (32, 64, 128, 256)  # ranks at which the Eckart–Young bound is tabulated (when < n)


def singular_values(p: torch.Tensor) -> torch.Tensor:
    """Singular values of each matrix in ``p`` (..., n, m), descending, in float64."""
    return torch.linalg.svdvals(p.double())


def normalized_cumulative(s: torch.Tensor) -> torch.Tensor:
    """c_i = (σ_1 + … + σ_i) / Σ σ_j for descending singular values ``s`` (..., n): the paper's y-axis."""
    total = s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    return s.cumsum(-1) / total


def k_for_fraction(cumulative: torch.Tensor, fraction: float, atol: float = 1e-9) -> torch.Tensor:
    """How many singular values reach ``fraction`` of the total: the smallest i with c_i ≥ fraction."""
    return (cumulative < fraction - atol).sum(-1) + 1


def rank_k_rel_error_from_singular_values(s: torch.Tensor, rank: int) -> torch.Tensor:
    """‖A − A_k‖_F / ‖A‖_F = sqrt(Σ_{j>k} σ_j² / Σ_j σ_j²) for singular values ``s`` (..., n)."""
    sq = s.double() ** 2
    return (sq[..., rank:].sum(-1) / sq.sum(-1).clamp_min(1e-300)).sqrt()


def truncate(a: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of each matrix in ``a`` (..., n, m), in float64."""
    u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
    return (u[..., :rank] * s[..., None, :rank]) @ vh[..., :rank, :]


def best_rank_k_rel_error(p: torch.Tensor, rank: int, v: torch.Tensor | None = None) -> torch.Tensor:
    """Eckart–Young lower bound: relative Frobenius error of the best rank-``rank`` approximation.

    Without ``v``: of P (..., n, n) itself. No matrix of rank ≤ k is closer to P, so this bounds the
    attention-matrix error of any method whose effective P̃ has rank ≤ k (Linformer's P̃·F has).
    With ``v`` (..., n, d): of the output P·V, (..., n, d). No output of rank ≤ k is closer, so this bounds
    the output error of such a method (Linformer's output has rank ≤ min(k, d)); it is 0 once k ≥ d.
    Returns one value per leading index (...).
    """
    a = p.double() if v is None else p.double() @ v.double()  # (..., n, n) or (..., n, d)
    return rank_k_rel_error_from_singular_values(singular_values(a), rank)


def rank_k_attention_error(p: torch.Tensor, v: torch.Tensor, rank: int) -> torch.Tensor:
    """‖PV − P_k V‖_F / ‖PV‖_F: the output error when P is replaced by its best rank-k approximation.

    A reference point beside a low-rank method's output error, not a bound on it: the method picks its
    own P̃, which can do better on this particular V than P_k does.
    """
    pv = p.double() @ v.double()  # (..., n, d)
    approx = truncate(p, rank) @ v.double()  # (..., n, d)
    diff = torch.linalg.matrix_norm(pv - approx)
    return diff / torch.linalg.matrix_norm(pv).clamp_min(1e-300)


@dataclass
class SpectrumResult:
    """Spectra of P for every layer and head, accumulated over windows.

    ``mean_cumulative`` (L, H, n): normalized cumulative singular values averaged over windows.
    ``quarter`` (W, L, H): each window's value at index n/4. ``rank_err`` {k: (L, H)}: Eckart–Young
    relative error of P at rank k, averaged over windows.
    """

    n: int
    windows: int
    mean_cumulative: torch.Tensor
    quarter: torch.Tensor
    rank_err: dict[int, torch.Tensor]
    window_indices: list[int] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def quarter_index(self) -> int:
        return self.n // 4

    def heatmap(self) -> torch.Tensor:
        """(L, H) mean normalized cumulative value at index n/4 (Figure 1, right)."""
        return self.mean_cumulative[..., self.quarter_index - 1]

    def layer_rows(self) -> list[dict]:
        """One row per layer: k for each fraction from the layer's mean curve (over heads and windows),
        the range of per-head k, the n/4 value and the Eckart–Young bounds."""
        rows = []
        heat = self.heatmap()
        for layer in range(self.mean_cumulative.shape[0]):
            curves = self.mean_cumulative[layer]  # (H, n)
            row = {"layer": layer}
            for frac in FRACTIONS:
                pct = round(frac * 100)
                per_head = k_for_fraction(curves, frac)
                row[f"k_{pct}"] = int(k_for_fraction(curves.mean(0), frac))
                row[f"k_{pct}_head_min"] = int(per_head.min())
                row[f"k_{pct}_head_max"] = int(per_head.max())
            q = self.quarter_index
            row[f"cum_at_{q}"] = float(heat[layer].mean())
            row[f"cum_at_{q}_head_min"] = float(heat[layer].min())
            row[f"cum_at_{q}_head_max"] = float(heat[layer].max())
            for rank, err in sorted(self.rank_err.items()):
                row[f"best_rank_{rank}_rel_err"] = float(err[layer].mean())
            rows.append(row)
        return rows


def accumulate_spectrum(p_windows, n: int) -> SpectrumResult:
    """Fold an iterable of per-window P stacks, each (L, H, n, n), into a :class:`SpectrumResult`."""
    total = None
    quarters = []
    ranks = [r for r in ERROR_RANKS if r < n]
    err_sum = {}
    count = 0
    for p in p_windows:
        if p.shape[-2:] != (n, n):
            raise ValueError(f"expected P of shape (..., {n}, {n}), got {tuple(p.shape)}")
        s = singular_values(p)  # (L, H, n)
        cum = normalized_cumulative(s)  # (L, H, n)
        total = cum if total is None else total + cum
        quarters.append(cum[..., n // 4 - 1].float())
        for rank in ranks:
            err = rank_k_rel_error_from_singular_values(s, rank)  # (L, H)
            err_sum[rank] = err if rank not in err_sum else err_sum[rank] + err
        count += 1
    if count == 0:
        raise ValueError("no windows to accumulate")
    return SpectrumResult(n=n, windows=count, mean_cumulative=(total / count).float(),
                          quarter=torch.stack(quarters),
                          rank_err={r: (e / count).float() for r, e in err_sum.items()})


def real_p_windows(indices: list[int], n: int, device: str = "cpu", cache: str = "read"):
    """Yield P (L, H, n, n) in float64 of each window in ``indices``: the first n tokens of the window."""
    from attnbench import real

    rm = real.load_model(device)
    for index in indices:
        cap = real.window_capture(rm, index, cache=cache)
        q = cap.q[:, 0, :, :n].double()  # (L, H, n, D)
        k = cap.k[:, 0, :, :n].double()
        yield torch.softmax(q @ k.transpose(-1, -2) / real.HEAD_DIM ** 0.5, dim=-1)  # (L, H, n, n)


def spread_indices(windows: int, available: int) -> list[int]:
    """``windows`` distinct window indices spread evenly over the text, so every part of it is seen."""
    if not 1 <= windows <= available:
        raise ValueError(f"windows={windows}; the text has {available} windows of 512 tokens "
                         f"(allowed: 1..{available})")
    return torch.linspace(0, available - 1, windows).round().long().unique().tolist()


def _fmt_range(lo, hi, spec: str = "") -> str:
    return f"{lo:{spec}}" if lo == hi else f"{lo:{spec}}–{hi:{spec}}"


def markdown_table(result: SpectrumResult) -> str:
    q = result.quarter_index
    ranks = sorted(result.rank_err)
    head = ["layer", "k @ 90%", "k @ 95%", "k @ 99%", f"cum. value @ {q} (heads)"]
    head += [f"best rank-{r} rel. err of P" for r in ranks]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for row in result.layer_rows():
        cells = [str(row["layer"])]
        for pct in (90, 95, 99):
            spread = _fmt_range(row[f"k_{pct}_head_min"], row[f"k_{pct}_head_max"])
            cells.append(f"{row[f'k_{pct}']} ({spread})")
        cells.append(f"{row[f'cum_at_{q}']:.3f} "
                     f"({_fmt_range(row[f'cum_at_{q}_head_min'], row[f'cum_at_{q}_head_max'], '.3f')})")
        cells += [f"{row[f'best_rank_{r}_rel_err']:.3f}" for r in ranks]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nn = {result.n}, {result.windows} windows; P = softmax(QKᵀ/√d) of every layer and head. "
            f"k is read off the layer's curve averaged over heads and windows; brackets give the range "
            f"over heads (each head's curve averaged over windows). Cumulative values use singular "
            f"values, as Linformer's Figure 1; the Eckart–Young column is ‖P − P_k‖_F / ‖P‖_F, the best "
            f"any rank-k matrix can do.\n")
    return "\n".join(lines) + "\n" + note


def plot_layers(result: SpectrumResult, path: Path) -> None:
    """One panel per layer: each head's mean curve and the layer mean (Figure 1, left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads, n = result.mean_cumulative.shape
    cols = 3
    rows = -(-layers // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), sharex=True, sharey=True,
                             squeeze=False)
    x = torch.arange(1, n + 1).numpy()
    colors = plt.get_cmap("tab20")
    ymin = float(result.mean_cumulative[..., 0].min())
    for layer in range(rows * cols):
        ax = axes[layer // cols][layer % cols]
        if layer >= layers:
            ax.axis("off")
            continue
        for h in range(heads):
            ax.plot(x, result.mean_cumulative[layer, h].numpy(), lw=0.9, color=colors(h % 20),
                    label=f"head {h}")
        ax.plot(x, result.mean_cumulative[layer].mean(0).numpy(), lw=2.2, color="black",
                label="mean over heads")
        ax.axvline(result.quarter_index, color="grey", ls="--", lw=0.8)
        ax.set_title(f"layer {layer}")
        ax.set_ylim(max(0.0, ymin - 0.02), 1.01)
        ax.set_xlim(0, n)
        ax.grid(alpha=0.3)
        if layer % cols == 0:
            ax.set_ylabel("normalized cumulative\nsingular value")
        if layer // cols == rows - 1:
            ax.set_xlabel("singular value index")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"Spectrum of P = softmax(QKᵀ/√d), MiniLM-L6, n = {n}, mean of {result.windows} "
                 f"windows (dashed: index {result.quarter_index})")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_layer_means(result: SpectrumResult, path: Path) -> None:
    """One line per layer (mean over heads), shaded over the middle half of its heads (min–max bands
    of all layers overlap into one smear; the outlying heads are in the per-layer panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads, n = result.mean_cumulative.shape
    x = torch.arange(1, n + 1).numpy()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for layer in range(layers):
        curves = result.mean_cumulative[layer]  # (H, n)
        color = cmap(layer / max(1, layers - 1))
        lo, hi = torch.quantile(curves.double(), torch.tensor([0.25, 0.75], dtype=torch.float64),
                                dim=0)  # (n,) each
        ax.fill_between(x, lo.numpy(), hi.numpy(), color=color, alpha=0.18, lw=0)
        ax.plot(x, curves.mean(0).numpy(), color=color, lw=1.8, label=f"layer {layer}")
    ax.axvline(result.quarter_index, color="grey", ls="--", lw=0.8)
    ax.set_xlim(0, n)
    ax.set_ylim(max(0.0, float(result.mean_cumulative[..., 0].min()) - 0.02), 1.01)
    ax.set_xlabel("singular value index")
    ax.set_ylabel("normalized cumulative singular value")
    ax.set_title(f"MiniLM-L6 attention spectrum by layer (n = {n}, {result.windows} windows;\n"
                 f"line: mean over heads, band: 25th to 75th percentile of heads)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_heatmap(result: SpectrumResult, path: Path) -> None:
    """Layer × head heatmap of the normalized cumulative value at index n/4 (Figure 1, right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat = result.heatmap().numpy()
    layers, heads = heat.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * heads, 1.2 + 0.55 * layers))
    im = ax.imshow(heat, cmap="viridis", aspect="auto")
    lo, hi = heat.min(), heat.max()
    for layer in range(layers):
        for h in range(heads):
            value = heat[layer, h]
            dark = (value - lo) / max(hi - lo, 1e-12) < 0.6
            ax.text(h, layer, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"Normalized cumulative singular value at index {result.quarter_index} of {result.n} "
                 f"({result.windows} windows)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_report(result: SpectrumResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the table (CSV, MD), the curves (CSV), a JSON summary and three PNGs into ``out_dir``."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("k_table.csv", "k_table.md", "curves.csv", "summary.json",
                                           "spectrum_layers.png", "spectrum_mean.png",
                                           "heatmap_quarter.png")}
    rows = result.layer_rows()
    pd.DataFrame(rows).to_csv(paths["k_table.csv"], index=False, float_format="%.6g")
    paths["k_table.md"].write_text(markdown_table(result))
    layers, heads, n = result.mean_cumulative.shape
    curves = pd.DataFrame(result.mean_cumulative.reshape(layers * heads, n).numpy(),
                          columns=[f"c{i}" for i in range(1, n + 1)])
    curves.insert(0, "head", [h for _ in range(layers) for h in range(heads)])
    curves.insert(0, "layer", [layer for layer in range(layers) for _ in range(heads)])
    curves.to_csv(paths["curves.csv"], index=False, float_format="%.6f")
    heat = result.heatmap()
    summary = {
        "n": n, "windows": result.windows, "window_indices": result.window_indices,
        "layers": layers, "heads": heads,
        "definition": "c_i = sum of the i largest singular values of P / sum of all, averaged over "
                      "windows; k_p = smallest i with c_i >= p on the layer's mean curve",
        "per_layer": rows,
        "quarter_index": result.quarter_index,
        "heatmap": [[round(float(x), 6) for x in row] for row in heat],
        "heatmap_range": [float(heat.min()), float(heat.max())],
        "quarter_window_spread": {"std_over_windows_mean": float(result.quarter.std(0).mean())
                                  if result.windows > 1 else 0.0},
        "provenance": result.provenance,
    }
    paths["summary.json"].write_text(json.dumps(summary, indent=2) + "\n")
    plot_layers(result, paths["spectrum_layers.png"])
    plot_layer_means(result, paths["spectrum_mean.png"])
    plot_heatmap(result, paths["heatmap_quarter.png"])
    return paths


def plot_saved(out_dir: str | Path) -> None:
    """Redraw the three PNGs of ``out_dir`` from its curves.csv and summary.json, without measuring."""
    import pandas as pd

    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text())
    curves = pd.read_csv(out / "curves.csv").sort_values(["layer", "head"])
    layers, heads, n = summary["layers"], summary["heads"], summary["n"]
    values = torch.tensor(curves.drop(columns=["layer", "head"]).to_numpy(), dtype=torch.float32)
    result = SpectrumResult(n=n, windows=summary["windows"],
                            mean_cumulative=values.reshape(layers, heads, n),  # (L, H, n)
                            quarter=torch.empty(0), rank_err={})
    plot_layers(result, out / "spectrum_layers.png")
    plot_layer_means(result, out / "spectrum_mean.png")
    plot_heatmap(result, out / "heatmap_quarter.png")


def spectrum_command(out_dir: str | Path, windows: int = 32, n: int = 512, device: str = "cpu",
                     cache: str = "read") -> int:
    """``attnbench spectrum``: spectra of MiniLM-L6's attention on ``windows`` real-text windows.

    Returns 0 on success and 2 for bad input or a missing ``real`` extra (the message says what to
    install). ``cache`` as in :func:`attnbench.real.window_capture` (default: reuse, never fill).
    """
    from attnbench import real

    try:
        real.check_shape(n, real.HEADS, real.HEAD_DIM, 0)
        if n < 4:
            raise ValueError(f"n={n}; the spectrum needs n >= 4")
        rm = real.load_model(device)
        indices = spread_indices(windows, len(real.token_windows(rm)))
    except (real.MissingExtra, ValueError) as exc:
        print(f"attnbench spectrum: {exc}", file=sys.stderr)
        return 2
    result = accumulate_spectrum(real_p_windows(indices, n, device, cache), n)
    result.window_indices = indices
    result.provenance = real.provenance() | {"command": "spectrum", "device": device}
    paths = write_report(result, out_dir)
    heat = result.heatmap()
    print(f"spectrum of {result.windows} windows, n={n}: k@90% per layer "
          f"{[row['k_90'] for row in result.layer_rows()]}, value at {result.quarter_index} in "
          f"[{float(heat.min()):.3f}, {float(heat.max()):.3f}]; wrote {len(paths)} files to {out_dir}")
    return 0
