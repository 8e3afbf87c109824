"""What an approximation error means: how sharp the exact attention is, and what trivial answers score.

A relative error of 0.5 is good on inputs where attention is nearly one-hot and poor where it is nearly
uniform, since there "every query returns the mean of V" already scores well (on i.i.d. Gaussian q, k,
v with head_dim 64 and n = 1024, a correct FAVOR+ with 1024 features errs by 3.7 where that constant
errs by 0.81). So beside each method's ``rel_err`` the harness records, per input set:

- ``entropy``: the normalised entropy of the exact attention rows, H(p_i) / log(visible keys of i),
  averaged over queries, heads and batch; 1 = uniform, 0 = one key per query. Computed a block of
  queries (or of keys, for a method's own reference) at a time, so the n×n matrix never exists at once.
  Causal: query i sees i + 1 keys and is normalised by log(i + 1); query 0 (one key, 0/0) is left out.
  For a method with its own exact reference (e.g. Reformer's shared-QK attention, which also hides a
  query's own key) the same causal-prefix normaliser is used.
- ``uniform_rel_err``: the error of uniform attention, ū_i = mean of v_j over the keys i sees (causal:
  the prefix 0..i), against the same exact output; ``err_vs_uniform = rel_err / uniform_rel_err``
  (< 1: the method beats a constant).
- ``svd_rel_err``: ‖PV − P_k V‖_F / ‖PV‖_F with P_k the truncated SVD of the exact P at the method's
  rank k: for methods whose attention matrix P̃ has rank ≤ k by construction. These are Linformer
  (P̃ = softmax(Q(EK)ᵀ)F, rank ≤ k), Nyström (rank ≤ num_landmarks), FAVOR+ (D⁻¹φ(Q)φ(K)ᵀ, rank ≤ m
  positive features or 2m trigonometric) and elu+1 linear attention (rank ≤ head_dim, no budget knob).
  Eckart–Young makes ‖P − P_k‖_F a lower bound on ‖P − P̃‖_F; for the output it is a lower bound in
  expectation over V with i.i.d. entries independent of P̃ (E‖(P − P̃)V‖² = σ²‖P − P̃‖_F²), which is
  how the Gaussian and peaked regimes draw V; on real V it is a reference point. Only where P fits:
  n ≤ 512 on CPU (at n = 1024 one eigendecomposition per head takes 1–2 s on two cores, ~20 s per
  input set of 12 heads), n ≤ 4096 on CUDA.

All three describe inputs, not methods, so they are computed once per input set and cached. They are
core-level columns only: at layer and model level the attention's inputs are the method's own
projections of x, different for every method, and "uniform attention" is not a fixed baseline.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable

import torch

ProbsFn = Callable[[torch.Tensor], torch.Tensor]  # v (B, H, N, c) float64 -> P·v (B, H, N, c)
SVD_MAX_N = {"cpu": 512, "cuda": 4096}


def _row_normaliser(n: int, causal: bool, rows: torch.Tensor) -> torch.Tensor:
    """log(visible keys) for query positions ``rows``; 0 where a query sees a single key."""
    visible = (rows + 1).double() if causal else torch.full(rows.shape, float(n), dtype=torch.float64,
                                                            device=rows.device)
    return torch.log(visible)


def _neg_plogp(p: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, -p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))


def _mean_normalised(h_sum: torch.Tensor, n: int, causal: bool) -> float:
    """Mean over (B, H, N) of row entropies ``h_sum`` (..., N) divided by log(visible keys)."""
    norm = _row_normaliser(n, causal, torch.arange(n, device=h_sum.device))  # (N,)
    keep = norm > 0
    if not bool(keep.any()):
        return float("nan")
    return float((h_sum[..., keep] / norm[keep]).mean())


@torch.no_grad()
def attention_entropy(q: torch.Tensor, k: torch.Tensor, *, causal: bool = False,
                      chunk: int = 512) -> float:
    """Normalised entropy of softmax(QKᵀ/√d) (causal: masked), a block of queries at a time, in float64."""
    q64, k64 = q.double(), k.double()
    n = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    h_sum = torch.empty(q.shape[:-1], dtype=torch.float64, device=q.device)  # (B, H, N)
    cols = torch.arange(n, device=q.device)[None, :]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = (q64[..., start:stop, :] @ k64.transpose(-1, -2)) * scale  # (B, H, c, N)
        if causal:
            rows = torch.arange(start, stop, device=q.device)[:, None]
            scores = scores.masked_fill(cols > rows, float("-inf"))
        logp = torch.log_softmax(scores, dim=-1)
        p = logp.exp()
        h_sum[..., start:stop] = torch.where(p > 0, -p * logp, torch.zeros_like(p)).sum(-1)
    return _mean_normalised(h_sum, n, causal)


@torch.no_grad()
def operator_entropy(probs: ProbsFn, shape: tuple[int, ...], *, causal: bool = False,
                     chunk: int = 256, device: torch.device | str = "cpu") -> float:
    """Normalised entropy of any exact attention given as ``probs(v) = P·v``: P's columns are read a
    block at a time as P·I[:, cols], so P never exists whole. ``shape`` is (B, H, N)."""
    b, h, n = shape
    h_sum = torch.zeros(b, h, n, dtype=torch.float64, device=device)
    eye = torch.eye(n, dtype=torch.float64, device=device)
    for start in range(0, n, chunk):
        cols = eye[:, start:start + chunk].expand(b, h, n, -1)  # (B, H, N, c)
        h_sum += _neg_plogp(probs(cols)).sum(-1)  # P[..., cols]: (B, H, N, c)
    return _mean_normalised(h_sum, n, causal)


def uniform_output(v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Uniform attention in float64: every query returns the mean of V (causal: of the prefix 0..i)."""
    v64 = v.double()
    if not causal:
        return v64.mean(-2, keepdim=True).expand_as(v64)
    count = torch.arange(1, v.shape[-2] + 1, dtype=torch.float64, device=v.device)[:, None]
    return v64.cumsum(-2) / count  # (B, H, N, D)


def uniform_rel_err(ref: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> float:
    """Relative Frobenius error of uniform attention against the exact output ``ref``."""
    ref64 = ref.double()
    diff = torch.linalg.vector_norm(uniform_output(v, causal=causal) - ref64)
    return float(diff / torch.linalg.vector_norm(ref64).clamp_min(1e-300))


def softmax_probs(q: torch.Tensor, k: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """The exact P = softmax(QKᵀ/√d) of every head, (B, H, N, N), in float64."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, N, N)
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1),
                                    float("-inf"))
    return torch.softmax(scores, dim=-1)


@torch.no_grad()
def rank_tail_energies(p: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-rank squared output error of truncated SVDs of P, summed over heads: ``tails[k]`` =
    Σ_heads ‖PV − P_k V‖_F² for k = 0..n, and ‖PV‖_F² in total.

    With P = UΣWᵀ, PV = U(UᵀPV) and U orthonormal, so ‖PV − P_k V‖² is the energy of the rows of
    UᵀPV past the k-th singular direction: one eigendecomposition of PPᵀ per head gives every rank.
    """
    p64, v64 = p.double(), v.double()
    n = p.shape[-1]
    tails = torch.zeros(n + 1, dtype=torch.float64, device=p.device)
    total = 0.0
    for ph, vh in zip(p64.reshape(-1, n, n), v64.reshape(-1, n, v.shape[-1])):
        pv = ph @ vh  # (N, D)
        _, u = torch.linalg.eigh(ph @ ph.T)  # ascending eigenvalues σ², u: (N, N)
        energy = ((u.T @ pv) ** 2).sum(-1).flip(0)  # (N,) energy along each direction, σ descending
        tails[:n] += energy.flip(0).cumsum(0).flip(0)
        total += float((pv ** 2).sum())
    return tails.clamp_min(0.0).cpu(), total


def svd_rel_err(tails: torch.Tensor, total: float, rank: int) -> float:
    """‖PV − P_k V‖_F / ‖PV‖_F at ``rank`` from :func:`rank_tail_energies`."""
    rank = min(max(rank, 0), tails.numel() - 1)
    return math.sqrt(float(tails[rank]) / max(total, 1e-300))


def budget_rank(method: str, params: Any, stats: dict, head_dim: int) -> int | None:
    """The rank bound of a method's attention matrix at ``params``, from the ``rank`` hook its spec
    declares (``register_method(..., rank=...)``), or None for methods that are not low rank."""
    from attnbench.registry import REGISTRY

    hook = REGISTRY.get(method).rank
    return None if hook is None else hook(params, stats, head_dim)


class StatsCache:
    """A small LRU of per-input-set results (floats and rank-error vectors, never n×n tensors), so a
    run computes each input set's entropy and SVD once however many methods and budgets visit it."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


def input_columns(cache: StatsCache, key: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  ref: torch.Tensor, rel_err: float, *, causal: bool, own_probs: ProbsFn | None,
                  rank: int | None) -> dict:
    """``entropy``, ``uniform_rel_err``, ``err_vs_uniform`` and (for a rank below n that fits)
    ``svd_rel_err`` of one core-level cell; ``own_probs`` is the method's own exact P·v, if any."""
    b, h, n, _ = q.shape

    def base():
        if own_probs is None:
            ent = attention_entropy(q, k, causal=causal)
        else:
            ent = operator_entropy(own_probs, (b, h, n), causal=causal, device=q.device)
        return {"entropy": ent, "uniform_rel_err": uniform_rel_err(ref, v, causal=causal)}

    row = dict(cache.get(("input", key), base))
    row["err_vs_uniform"] = rel_err / max(row["uniform_rel_err"], 1e-300)
    if rank is None:
        return row
    row["svd_rank"] = rank
    if rank >= n:
        row["svd_rel_err"] = 0.0
        return row
    limit = SVD_MAX_N.get(q.device.type, SVD_MAX_N["cpu"])
    if n > limit:
        row["svd_skipped"] = f"n={n} > {limit} on {q.device.type}"
        return row

    def tails():
        if own_probs is None:
            p = softmax_probs(q, k, causal=causal)
        else:
            p = own_probs(torch.eye(n, dtype=torch.float64, device=q.device).expand(b, h, n, n))
        return rank_tail_energies(p, v)

    row["svd_rel_err"] = svd_rel_err(*cache.get(("svd", key), tails), rank)
    return row
