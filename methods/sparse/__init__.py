"""Fixed sparse attention patterns: sliding window, the Sparse Transformer's strided and fixed patterns
(Child et al., 2019, https://arxiv.org/abs/1904.10509) and BigBird (Zaheer et al., 2020,
https://arxiv.org/abs/2007.14062).

Each query attends only to the keys a fixed, input-independent pattern allows, so cost and memory grow
with the number of allowed pairs instead of n².

A pattern is one predicate ``allowed(i, j)`` on query position ``i`` and key position ``j`` (0-based),
the single definition behind every path: :func:`pattern_mask` evaluates it on the full (n, n) grid (tests
and the dense masked reference), FlexAttention uses it as its ``mask_mod`` on CUDA, and the CPU kernel
evaluates it on the pairs it gathers. In the causal variant every pattern is intersected with ``j <= i``.
Every pattern lets each query see itself, so no row is empty.

CPU kernel: each pattern is split into disjoint parts; a part groups queries (a tile, a residue class,
all queries) and gives each group the key positions its queries may need. The kernel gathers those keys,
scores the group densely against them under the predicate's mask and merges the parts' softmaxes with
their log-sum-exp weights, so nothing of size n × n is ever formed. On CUDA the same predicate drives a
compiled FlexAttention kernel whose block mask is built once, in the factory.

Decoding (``local``): the last ``window`` keys and values in a ring buffer, the new query attending to
the slots filled so far; fixed shapes, so a step replays in a CUDA graph. The other patterns reach back
over the whole past (every l-th position, the summary columns, global and random blocks), so a cached
step would keep every key, as exact attention does; they have no decode path here.
Packed documents (``local``, ``strided``, whose predicates depend on i - j only, so a document sees the
pattern it would see alone): the predicate intersected with "same document", in both kernels.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

import torch.nn.functional as F

from attnbench.compiling import allow_recompiles, compile_failure
from attnbench.decode_state import RingCache
from attnbench.flops import attention_flops
from attnbench.params import NonNegative, Positive
from attnbench.registry import BuildContext, Limit, Unsupported, register_method
from attnbench.varlen import Documents, Packed

Kernel = Literal["auto", "flex", "blocked"]
Pred = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LocalParams:
    window: Positive = 256  # w: query i sees keys with |i - j| < w (causal: 0 <= i - j < w)
    kernel: Kernel = "auto"  # auto: FlexAttention on CUDA, blocked kernel on CPU (flex on CPU: fwd only)


@dataclass(frozen=True)
class StridedParams:
    stride: Positive = 64  # l: the previous (and next) l positions plus every l-th position; l ≈ √n
    kernel: Kernel = "auto"


@dataclass(frozen=True)
class FixedParams:
    block: Positive = 64  # l: query i sees its own block of l positions ...
    c: Positive = 8  # ... and the last c positions of every block (the "summary" columns)
    kernel: Kernel = "auto"


@dataclass(frozen=True)
class BigBirdParams:
    block: Positive = 64  # b: window and random attention work on blocks of b positions
    num_global: NonNegative = 128  # g: positions 0..g-1 are global tokens (see all, seen by all)
    num_random: NonNegative = 3  # r: random key blocks per query block, drawn once per cell seed
    kernel: Kernel = "auto"


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


@dataclass
class _Part:
    rows: torch.Tensor  # (G, gs) query positions
    cols: torch.Tensor  # (G, m) key positions, padding clamped to 0
    mask: torch.Tensor  # (G, gs, m) which gathered pairs are scored
    whole: bool = False  # rows are all positions in order: the part alone is the answer


def plan(pattern: Pattern) -> list[_Part]:
    """The CPU kernel's schedule: gathered key lists deduplicated, masks evaluated once."""
    out = []
    for rows, cols, pred in pattern.parts():
        cols = cols.sort(dim=-1).values
        fresh = torch.ones_like(cols, dtype=torch.bool)
        fresh[:, 1:] = cols[:, 1:] != cols[:, :-1]
        valid = fresh & (cols >= 0)  # (G, m)
        cols = cols.clamp_min(0)
        mask = pred(rows[:, :, None], cols[:, None, :]) & valid[:, None, :]  # (G, gs, m)
        if mask.any():
            out.append(_Part(rows, cols, mask))
    if len(out) == 1:
        out[0].whole = bool(torch.equal(out[0].rows.flatten(), torch.arange(pattern.n)))
    return out


def blocked_attention(q, k, v, parts: list[_Part], scale: float) -> torch.Tensor:
    """Softmax attention restricted to the parts' pairs, merged across parts by log-sum-exp weights."""
    b, h, n, d = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax precision: fp32 or better
    maxes, sums, outs = [], [], []
    for p in parts:
        g, gs = p.rows.shape
        qg = q.index_select(2, p.rows.flatten()).view(b, h, g, gs, d)
        kg = k.index_select(2, p.cols.flatten()).view(b, h, g, -1, d)  # (B, H, G, m, D)
        vg = v.index_select(2, p.cols.flatten()).view(b, h, g, -1, d)
        # in place from here on: one score-sized buffer, none of these ops saves its input
        s = (qg @ kg.transpose(-1, -2)).to(acc).mul_(scale)  # (B, H, G, gs, m)
        s.masked_fill_(~p.mask, float("-inf"))
        mx = s.detach().amax(-1, keepdim=True)  # (B, H, G, gs, 1); -inf for rows with no pair here
        e = s.sub_(torch.where(mx.isinf(), 0.0, mx)).exp_()
        o = (e.to(v.dtype) @ vg).to(acc)  # (B, H, G, gs, D)
        if p.whole:
            return (o / e.sum(-1, keepdim=True)).view(b, h, n, d).to(q.dtype)
        idx = p.rows.flatten()
        maxes.append(torch.full((b, h, n), float("-inf"), device=q.device, dtype=acc).index_copy(
            2, idx, mx.view(b, h, -1)))
        sums.append(q.new_zeros((b, h, n), dtype=acc).index_copy(
            2, idx, e.sum(-1).view(b, h, -1)))
        outs.append(q.new_zeros((b, h, n, d), dtype=acc).index_copy(
            2, idx, o.view(b, h, -1, d)))
    top = torch.stack(maxes).amax(0)  # (B, H, N)
    num = torch.zeros_like(outs[0])
    den = torch.zeros_like(sums[0])
    for mx, l, o in zip(maxes, sums, outs):
        w = torch.exp(mx - top)  # (B, H, N): 0 where this part holds nothing for the query
        num = num + w[..., None] * o
        den = den + w * l
    return (num / den.clamp_min(torch.finfo(acc).tiny)[..., None]).to(q.dtype)


def flex_block_mask(pattern: Pattern, device: torch.device):
    """FlexAttention block mask of ``pattern`` (its predicate as the mask_mod)."""
    from torch.nn.attention.flex_attention import create_block_mask

    pattern.to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.allowed(q_idx, kv_idx)

    return create_block_mask(mask_mod, None, None, pattern.n, pattern.n, device=device,
                             _compile=device.type == "cuda")


class SparseAttention(nn.Module):
    """Attention under a fixed pattern, on FlexAttention (compiled once here) or the blocked kernel.

    The FlexAttention warm-up runs at batch 1 (the build context has no batch size); another batch
    size recompiles once more, inside the harness's untimed warm-up calls."""

    def __init__(self, pattern: Pattern, ctx: BuildContext, kernel: str):
        super().__init__()
        self.pattern = pattern
        self.build_ctx, self.kernel_param = ctx, kernel
        if kernel == "auto":
            kernel = "flex" if ctx.device.type == "cuda" else "blocked"
        self.kernel = kernel
        self._stats: dict = {"kernel": self.kernel, "compiled": False}
        parts = plan(pattern)  # CPU, cheap: O(allowed pairs); also gives the exact density
        allowed = sum(int(p.mask.sum()) for p in parts)
        self._stats["density"] = allowed / ctx.n**2
        if self.kernel == "blocked":
            self._whole = [p.whole for p in parts]
            for i, p in enumerate(parts):  # buffers: counted as the method's state, moved by .to()
                for field in ("rows", "cols", "mask"):
                    self.register_buffer(f"{field}{i}", getattr(p, field).to(ctx.device),
                                         persistent=False)
            scored = sum(p.mask.numel() for p in parts)
        else:
            self._init_flex(ctx)
            scored = (1 - self.block_mask.sparsity() / 100) * ctx.n**2
        self._stats["kernel_density"] = scored / ctx.n**2  # share of the n×n scores evaluated

    def _init_flex(self, ctx: BuildContext):
        from torch.nn.attention.flex_attention import flex_attention

        def sync():
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)

        try:
            allow_recompiles()
            self.block_mask = flex_block_mask(self.pattern, ctx.device)
            self.flex = torch.compile(flex_attention)
            shape = (1, ctx.heads, ctx.n, ctx.head_dim)
            q, k, v = (torch.randn(shape, device=ctx.device, dtype=ctx.dtype) for _ in range(3))
            t0 = time.perf_counter()
            self.flex(q, k, v, block_mask=self.block_mask)
            sync()
            t1 = time.perf_counter()
            if ctx.device.type == "cuda":  # compiled FlexAttention has no backward on CPU
                q, k, v = (t.requires_grad_() for t in (q, k, v))
                self.flex(q, k, v, block_mask=self.block_mask).sum().backward()
                sync()
        except Exception as exc:  # noqa: BLE001 - inductor/triton fail in many ways
            raise compile_failure("FlexAttention", exc) from exc
        self._stats.update(compiled=True, compile_s=t1 - t0)
        if ctx.device.type == "cuda":
            self._stats["compile_bwd_s"] = time.perf_counter() - t1

    def forward(self, q, k, v):
        if self.kernel == "flex":
            return self.flex(q, k, v, block_mask=self.block_mask)
        parts = [_Part(*(getattr(self, f"{field}{i}") for field in ("rows", "cols", "mask")), whole)
                 for i, whole in enumerate(self._whole)]
        return blocked_attention(q, k, v, parts, 1.0 / math.sqrt(q.shape[-1]))

    def stats(self) -> dict:
        return dict(self._stats)

    def flops(self, q, k, v) -> float:
        """Over the pattern's allowed pairs (``density``·n², causal included); the pairs the kernel
        also scores inside partly allowed blocks (``kernel_density``) are not useful work."""
        b, h, n, d = q.shape
        return attention_flops(b, h, d, self._stats["density"] * n * n, v.shape[-1])

    # decode (local only): a ring of the last `window` keys and values

    decode_graphs = True

    def init_state(self, q, k, v, capacity=None):
        if not isinstance(self.pattern, LocalPattern) or not self.pattern.causal:
            raise Unsupported("decode needs the causal local pattern")
        return RingCache(k, v, self.pattern.window)

    def step(self, q_t, k_t, v_t, state: RingCache):
        state.append(k_t, v_t)  # query t sees t - window < j <= t: the ring after the write
        mask = state.valid().view(1, 1, 1, -1)  # (1, 1, 1, window)
        return F.scaled_dot_product_attention(q_t, state.k, state.v, attn_mask=mask), state

    def pack(self, docs: Documents) -> nn.Module:
        if not isinstance(self.pattern, (LocalPattern, StridedPattern)):
            raise Unsupported("packed documents need a pattern that depends on i - j only")
        return SparsePacked(docs, SparseAttention(DocumentPattern(self.pattern, docs),
                                                  self.build_ctx, self.kernel_param))


class SparsePacked(Packed):
    """A pattern within packed documents: the sparse kernel on the intersected pattern, the exact
    reference run per document."""

    def __init__(self, docs: Documents, inner: SparseAttention):
        super().__init__(docs, inner.pattern.causal, inner.kernel)
        self.inner = inner

    def forward(self, q, k, v):
        return self.inner(q, k, v)

    def stats(self) -> dict:
        return {**self.inner.stats(), **super().stats()}


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


def _window(p, ctx):
    return None if p.window >= 1 else f"window={p.window} must be >= 1"


def _divides(field: str):
    def check(p, ctx):
        size = getattr(p, field)
        if size >= 1 and ctx.n % size == 0:
            return None
        return f"n={ctx.n} must be divisible by {field}={size}"
    return check


def _fixed_c(p, ctx):
    return None if 1 <= p.c <= p.block else f"c={p.c} must be in 1..block={p.block}"


def _bigbird_counts(p, ctx):
    if not 0 <= p.num_global <= ctx.n:
        return f"num_global={p.num_global} must be in 0..n={ctx.n}"
    return None if p.num_random >= 0 else f"num_random={p.num_random} must be >= 0"


_COMMON = dict(family="sparse", exact=False, causal=True, backward=True)
_WHOLE_PAST = ("its pattern reaches back over the whole past ({}), so a cached step keeps every key "
               "as exact attention does; not implemented")

# Limiting cases: patterns that allow every pair (causal: every j <= i), so the kernels compute softmax
# attention itself. Block sizes are divisors of n no larger than 64, so the blocked parts stay several.
LOCAL_LIMIT = Limit(params=lambda ctx: {"window": ctx.n}, note="window = n: every |i - j| < n")
STRIDED_LIMIT = Limit(params=lambda ctx: {"stride": ctx.n}, note="stride = n: the band |i - j| <= n")
def _fixed_limit(ctx: BuildContext) -> dict:
    block = _divisor_at_most(ctx.n, 64)
    return {"block": block, "c": block}


FIXED_LIMIT = Limit(params=_fixed_limit, note="c = block: every position is a summary column")
BIGBIRD_LIMIT = Limit(params=lambda ctx: {"block": _divisor_at_most(ctx.n, 64), "num_global": ctx.n},
                      note="num_global = n: every position is a global token")


@register_method("local", params=LocalParams, budget="window", constraints=(_window,),
                 limit=LOCAL_LIMIT, decode=True, varlen=True, **_COMMON)
def build_local(p: LocalParams, ctx: BuildContext) -> nn.Module:
    """Sliding-window attention: each query sees the keys within `window` positions."""
    return SparseAttention(build_pattern("local", p, ctx), ctx, p.kernel)


@register_method("strided", params=StridedParams, budget="stride",
                 constraints=(_divides("stride"),), limit=STRIDED_LIMIT, varlen=True,
                 decode_note=_WHOLE_PAST.format("every l-th position"), **_COMMON)
def build_strided(p: StridedParams, ctx: BuildContext) -> nn.Module:
    """Sparse Transformer strided pattern: local band of `stride` plus every `stride`-th key."""
    return SparseAttention(build_pattern("strided", p, ctx), ctx, p.kernel)


@register_method("fixed", params=FixedParams, budget="c", constraints=(_divides("block"), _fixed_c),
                 limit=FIXED_LIMIT, decode_note=_WHOLE_PAST.format("the summary columns"), **_COMMON)
def build_fixed(p: FixedParams, ctx: BuildContext) -> nn.Module:
    """Sparse Transformer fixed pattern: own block plus the last `c` positions of every block."""
    return SparseAttention(build_pattern("fixed", p, ctx), ctx, p.kernel)


@register_method("bigbird", params=BigBirdParams, budget="num_random",
                 constraints=(_divides("block"), _bigbird_counts), limit=BIGBIRD_LIMIT,
                 decode_note=_WHOLE_PAST.format("global tokens, random blocks"), **_COMMON)
def build_bigbird(p: BigBirdParams, ctx: BuildContext) -> nn.Module:
    """BigBird: three-block window, global tokens and random key blocks."""
    return SparseAttention(build_pattern("bigbird", p, ctx), ctx, p.kernel)
