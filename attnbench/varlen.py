"""Variable-length batches: sequences packed as documents, attention kept within each document.

A core-level input table may carry ``lengths``, the document lengths one packed sequence of n tokens
holds (the same layout in every row of the batch, so every row does the same work):

- ``"fixed:L"``: documents of L tokens; the last takes what is left when L does not divide n.
- ``"uniform:A-B"``: lengths drawn uniformly from the whole numbers A..B.
- ``"longtail:M"``: the long tail of real corpora, drawn log-normal with median M and σ = 1 (so a
  quarter of the documents are shorter than M/2 and one in twenty longer than 5·M), at least 1.

Drawn lengths fill n in order and the last document is cut at n. The draw depends on the suite's seed,
n and the spec only, so every method of a sweep sees the same documents.

A method that declares ``varlen=True`` builds ``pack(docs)``: a module whose forward attends within the
documents of ``docs`` (:class:`Documents`), through a document mask (FlexAttention), torch's variable-
length attention, or its own block mask intersected with "same document". :class:`Packed` gives such a
module its exact reference: float64 attention run document by document.
"""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnbench.reference import reference_attention

LENGTHS_FORMS = '"fixed:L", "uniform:A-B" or "longtail:M" (whole numbers >= 1)'
_FORMS = {"fixed": re.compile(r"fixed:(\d+)"), "uniform": re.compile(r"uniform:(\d+)-(\d+)"),
          "longtail": re.compile(r"longtail:(\d+)")}
LONGTAIL_SIGMA = 1.0


def parse_lengths(text: Any) -> tuple[str, tuple[int, ...]]:
    """``"uniform:64-512"`` -> ("uniform", (64, 512)); a ValueError says what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, {LENGTHS_FORMS}")
    kind = text.split(":", 1)[0]
    form = _FORMS.get(kind)
    m = form.fullmatch(text.strip()) if form else None
    if m is None:
        raise ValueError(f"expected {LENGTHS_FORMS}")
    nums = tuple(int(x) for x in m.groups())
    if any(x < 1 for x in nums):
        raise ValueError(f"lengths must be >= 1 ({LENGTHS_FORMS})")
    if kind == "uniform" and nums[0] > nums[1]:
        raise ValueError(f"uniform:A-B needs A <= B, got {nums[0]} > {nums[1]}")
    return kind, nums


def check_lengths(checker, key: str, value: Any) -> list[str]:
    """A suite's ``lengths`` value (one spec or a list of them), validated; as a list."""
    vals = value if isinstance(value, list) else [value]
    if not vals:
        checker.fail(key, value, f"expected {LENGTHS_FORMS} or a list of them")
    for v in vals:
        try:
            parse_lengths(v)
        except ValueError as exc:
            checker.fail(key, v, str(exc))
    return checker.distinct(key, value, [v.strip() for v in vals])


def draw_lengths(spec: str, n: int, seed: int = 0) -> tuple[int, ...]:
    """Document lengths filling n tokens, the last cut at n (see the module docstring)."""
    kind, nums = parse_lengths(spec)
    if kind == "fixed":
        full, rest = divmod(n, nums[0])
        return (nums[0],) * full + ((rest,) if rest else ())
    g = torch.Generator().manual_seed((seed * 1_000_003 + n * 7919 + zlib.crc32(spec.encode()))
                                      % 2**63)
    out: list[int] = []
    total = 0
    while total < n:
        if kind == "uniform":
            length = int(torch.randint(nums[0], nums[1] + 1, (1,), generator=g))
        else:
            z = float(torch.randn(1, generator=g))
            length = max(1, round(math.exp(math.log(nums[0]) + LONGTAIL_SIGMA * z)))
        length = min(length, n - total)
        out.append(length)
        total += length
    return tuple(out)


@dataclass(frozen=True)
class Documents:
    """Documents packed into one sequence of n tokens, in order."""

    lengths: tuple[int, ...]
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        return sum(self.lengths)

    @property
    def count(self) -> int:
        return len(self.lengths)

    def bounds(self) -> list[tuple[int, int]]:
        """(start, stop) of every document."""
        starts = [0]
        for length in self.lengths:
            starts.append(starts[-1] + length)
        return list(zip(starts[:-1], starts[1:]))

    def doc_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(N,) int32: the document of each position."""
        key = ("ids", str(device))
        if key not in self._cache:
            ids = torch.repeat_interleave(torch.arange(self.count, dtype=torch.int32),
                                          torch.tensor(self.lengths))
            self._cache[key] = ids.to(device)
        return self._cache[key]

    def cu_seqlens(self, batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
        """(batch · count + 1,) int32 cumulative offsets of every document of every row, as
        variable-length kernels take them."""
        one = torch.tensor(self.lengths, dtype=torch.int32).repeat(batch)
        return torch.cat([torch.zeros(1, dtype=torch.int32), one.cumsum(0).int()]).to(device)

    def same(self, ids: torch.Tensor):
        """The predicate "i and j lie in one document", on a ``doc_ids`` tensor."""
        return lambda i, j: ids[i] == ids[j]

    def mask(self, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
        """(N, N) bool, True where query i may attend to key j: same document (and j <= i)."""
        ids = self.doc_ids(device)
        allowed = ids[:, None] == ids[None, :]
        return allowed.tril() if causal else allowed


def documents_for(case) -> Documents | None:
    """The documents of a cell whose input carries ``lengths`` (None: not packed)."""
    spec = case.input_dict.get("lengths")
    return None if spec is None else Documents(draw_lengths(spec, case.n, case.seed))


def document_reference(q, k, v, docs: Documents, causal: bool) -> torch.Tensor:
    """Exact float64 attention within each document, run document by document."""
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=torch.float64, device=q.device)
    for start, stop in docs.bounds():
        out[..., start:stop, :] = reference_attention(q[..., start:stop, :], k[..., start:stop, :],
                                                      v[..., start:stop, :], causal=causal)
    return out


class Packed(nn.Module):
    """Base of a method's packed module: ``docs`` and ``causal`` kept, the exact reference run per
    document, and ``packing()``: the row columns naming the documents and the kernel that ran (the
    harness's columns, declared in :mod:`attnbench.schema`, not a method's stats)."""

    def __init__(self, docs: Documents, causal: bool, kernel: str):
        super().__init__()
        self.docs, self.causal, self.kernel = docs, causal, kernel

    def exact_reference(self, q, k, v):
        return document_reference(q, k, v, self.docs, self.causal)

    def packing(self) -> dict:
        return {"documents": self.docs.count, "mean_doc_len": self.docs.n / self.docs.count,
                "max_doc_len": max(self.docs.lengths), "varlen_kernel": self.kernel}


class DenseMaskPacked(Packed):
    """Attention under the dense (N, N) document mask through ``attend(q, k, v, mask)``: the path
    of exact methods where nothing better applies (memory O(N²) for the mask)."""

    def __init__(self, docs: Documents, causal: bool, attend, device, kernel: str = "dense-mask"):
        super().__init__(docs, causal, kernel)
        self.attend = attend
        self.register_buffer("allowed", docs.mask(causal, device), persistent=False)

    def forward(self, q, k, v):
        return self.attend(q, k, v, self.allowed)


def pack_level(model: nn.Module, docs: Documents) -> nn.Module:
    """``model`` (a core module, layer or encoder from :func:`attnbench.levels.build_level`) with
    each attention module replaced by its ``pack(docs)``."""
    from attnbench.levels import Encoder, SelfAttention

    def packed(module):
        hook = getattr(module, "pack", None)
        if hook is None:
            from attnbench.methodspec import Unsupported

            raise Unsupported(f"{type(module).__name__} has no pack(docs) hook")
        return hook(docs)

    if isinstance(model, SelfAttention):
        model.attn = packed(model.attn)
        return model
    if isinstance(model, Encoder):
        for layer in model.layers:
            layer.attn.attn = packed(layer.attn.attn)
        return model
    return packed(model)
