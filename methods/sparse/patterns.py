"""Fixed sparsity patterns: sliding window, the Sparse Transformer's strided and fixed patterns (Child
et al., 2019, https://arxiv.org/abs/1904.10509) and BigBird's (Zaheer et al., 2020,
https://arxiv.org/abs/2007.14062).

A pattern is one predicate ``allowed(i, j)`` on query position i and key position j, the single
definition behind every kernel: :meth:`Pattern.dense` evaluates it on the (n, n) grid, FlexAttention
takes it as its ``mask_mod``, and :meth:`Pattern.parts` splits it into disjoint (rows (G, gs),
cols (G, m), predicate) pieces for the CPU kernel. Causal patterns are intersected with j <= i.
"""
from __future__ import annotations

from typing import Callable

import torch

from attnbench.registry import BuildContext
from attnbench.varlen import Documents

Pred = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Pattern:
    """A sparsity pattern on n positions: ``allowed`` is the definition, ``parts`` the CPU schedule."""

    def __init__(self, n: int, causal: bool):
        self.n, self.causal = n, causal

    def base(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def allowed(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        ok = self.base(i, j)
        return ok & (j <= i) if self.causal else ok

    def parts(self) -> list[tuple[torch.Tensor, torch.Tensor, Pred]]:
        """Disjoint pieces ``(rows (G, gs), cols (G, m), pred)``: group g's queries ``rows[g]`` may see
        keys among ``cols[g]`` (-1 = padding; duplicates allowed) where ``pred`` holds. The union of the
        preds is ``allowed``; tests check this against :meth:`dense`."""
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        pos = torch.arange(self.n)
        return self.allowed(pos[:, None], pos[None, :])  # (N, N)

    def to(self, device: torch.device) -> "Pattern":
        return self

    def _causal(self, pred: Pred) -> Pred:
        return (lambda i, j: pred(i, j) & (j <= i)) if self.causal else pred


def _divisor_at_most(n: int, target: int) -> int:
    return max(d for d in range(1, min(n, max(target, 1)) + 1) if n % d == 0)


def _band(n: int, lo: int, hi: int, pred: Pred) -> tuple[torch.Tensor, torch.Tensor, Pred]:
    """Queries in tiles; each tile gets the contiguous keys covering offsets j - i in [lo, hi] for all of
    its queries, the range slid inward at the sequence ends so every tile has the same width."""
    tile = _divisor_at_most(n, min(128, max(16, (hi - lo) // 2)))
    width = min(n, tile + hi - lo)
    starts = torch.arange(0, n, tile)
    rows = starts[:, None] + torch.arange(tile)  # (G, tile)
    cols = (starts + lo).clamp(0, n - width)[:, None] + torch.arange(width)  # (G, width)
    return rows, cols, pred


class LocalPattern(Pattern):
    """``|i - j| < window``: the query and up to window - 1 neighbours on each side (causal: behind)."""

    def __init__(self, n: int, causal: bool, window: int):
        super().__init__(n, causal)
        self.window = window

    def base(self, i, j):
        return (i - j).abs() < self.window

    def parts(self):
        w = min(self.window, self.n)
        return [_band(self.n, -(w - 1), 0 if self.causal else w - 1, self.allowed)]


class StridedPattern(Pattern):
    """Sparse Transformer "strided": ``|i - j| <= l`` (the local band, the paper's A(1)) or
    ``(i - j) mod l == 0`` (every l-th position, A(2)). Needs n divisible by l."""

    def __init__(self, n: int, causal: bool, stride: int):
        super().__init__(n, causal)
        self.stride = stride

    def base(self, i, j):
        # i ≡ j (mod l) rather than (i - j) % l == 0: no remainder of a negative number, in any kernel
        return ((i - j).abs() <= self.stride) | (i % self.stride == j % self.stride)

    def parts(self):
        n, s = self.n, min(self.stride, self.n)
        band = _band(n, -s, 0 if self.causal else s, self._causal(lambda i, j: (i - j).abs() <= s))
        residues = torch.arange(n).view(n // self.stride, self.stride).T  # (l, n/l): one class a row
        far = self._causal(lambda i, j: (i % self.stride == j % self.stride) & ((i - j).abs() > s))
        return [band, (residues, residues, far)]


class FixedPattern(Pattern):
    """Sparse Transformer "fixed": ``i // l == j // l`` (own block, A(1)) or ``j mod l >= l - c``
    (the last c positions of every block, A(2)). Needs n divisible by l."""

    def __init__(self, n: int, causal: bool, block: int, c: int):
        super().__init__(n, causal)
        self.block, self.c = block, c

    def base(self, i, j):
        return (i // self.block == j // self.block) | (j % self.block >= self.block - self.c)

    def parts(self):
        n, l, c = self.n, self.block, self.c
        blocks = torch.arange(n).view(n // l, l)  # (n/l, l)
        own = self._causal(lambda i, j: i // l == j // l)
        summary = (blocks[:, l - c:]).reshape(1, -1)  # (1, c·n/l)
        other = self._causal(lambda i, j: (j % l >= l - c) & (i // l != j // l))
        return [(blocks, blocks, own), (torch.arange(n)[None], summary, other)]


class BigBirdPattern(Pattern):
    """BigBird (ITC): with blocks of b positions, ``|i//b - j//b| <= 1`` (three-block window) or
    ``i < g`` / ``j < g`` (global tokens) or ``R[i//b, j//b]`` (r random key blocks per query block,
    drawn outside the window and the all-global blocks; causal: among earlier blocks only). Needs n
    divisible by b."""

    def __init__(self, n: int, causal: bool, block: int, num_global: int, num_random: int,
                 generator: torch.Generator):
        super().__init__(n, causal)
        self.block, self.num_global, self.num_random = block, num_global, num_random
        nb = n // block
        self.random_idx = torch.full((nb, num_random), -1, dtype=torch.long)  # (nb, r), -1 = none
        for qb in range(nb):
            cand = [kb for kb in range(nb) if abs(kb - qb) > 1 and (kb + 1) * block > num_global
                    and (kb < qb or not causal)]
            pick = torch.randperm(len(cand), generator=generator)[:num_random]
            self.random_idx[qb, :len(pick)] = torch.tensor(cand, dtype=torch.long)[pick]
        self.random_table = torch.zeros(nb, nb + 1, dtype=torch.bool)  # last column absorbs the -1s
        self.random_table.scatter_(1, self.random_idx % (nb + 1), True)
        self.random_table = self.random_table[:, :nb].contiguous()  # (nb, nb)

    def to(self, device):
        self.random_table = self.random_table.to(device)
        return self

    def base(self, i, j):
        b, g = self.block, self.num_global
        return (((i // b - j // b).abs() <= 1) | (i < g) | (j < g)
                | self.random_table[i // b, j // b])

    def parts(self):
        n, b, g = self.n, self.block, self.num_global
        out = []
        if g > 0:
            out.append((torch.arange(min(g, n))[None], torch.arange(n)[None],
                        self._causal(lambda i, j: i < g)))
        first = min(g, n) // b  # query blocks from here on hold a non-global query
        if first < n // b:
            qbs = torch.arange(first, n // b)
            rows = qbs[:, None] * b + torch.arange(b)  # (G, b)
            width = min(n, 2 * b if self.causal else 3 * b)
            window = ((qbs - 1) * b).clamp(0, n - width)[:, None] + torch.arange(width)  # (G, width)
            rnd = self.random_idx[qbs]  # (G, r)
            rnd = torch.where(rnd[..., None] >= 0, rnd[..., None] * b + torch.arange(b), -1)
            cols = torch.cat([window, rnd.flatten(1), torch.arange(g).expand(len(qbs), g)], dim=1)
            rest = self._causal(lambda i, j: (i >= g) & (((i // b - j // b).abs() <= 1) | (j < g)
                                                         | self.random_table[i // b, j // b]))
            out.append((rows, cols, rest))
        return out


class DocumentPattern(Pattern):
    """``inner`` intersected with "i and j lie in one document" (packed sequences)."""

    def __init__(self, inner: Pattern, docs: Documents):
        super().__init__(inner.n, inner.causal)
        self.inner, self.docs = inner, docs
        self.ids = docs.doc_ids("cpu")

    def base(self, i, j):
        return self.inner.allowed(i, j) & (self.ids[i] == self.ids[j])

    def parts(self):
        return [(rows, cols, lambda i, j, pred=pred: pred(i, j) & (self.ids[i] == self.ids[j]))
                for rows, cols, pred in self.inner.parts()]

    def to(self, device):
        self.inner.to(device)
        self.ids = self.ids.to(device)
        return self


def build_pattern(name: str, p, ctx: BuildContext) -> Pattern:
    """The pattern ``name`` with params ``p`` for the cell ``ctx`` (n, causal, seed)."""
    if name == "local":
        return LocalPattern(ctx.n, ctx.causal, p.window)
    if name == "strided":
        return StridedPattern(ctx.n, ctx.causal, p.stride)
    if name == "fixed":
        return FixedPattern(ctx.n, ctx.causal, p.block, p.c)
    if name == "bigbird":
        return BigBirdPattern(ctx.n, ctx.causal, p.block, p.num_global, p.num_random,
                              ctx.generator(salt=0xB16B))
    raise ValueError(f"unknown sparse pattern {name!r}")


def pattern_mask(name: str, p, ctx: BuildContext) -> torch.Tensor:
    """The boolean (n, n) pattern, True where query i may attend to key j (causal applied)."""
    return build_pattern(name, p, ctx).dense()
