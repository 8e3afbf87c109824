"""ListOps (Nangia & Bowman, 2018, https://arxiv.org/abs/1804.06028), as the Long Range Arena uses it
(Tay et al., 2020, https://arxiv.org/abs/2011.04006): nested prefix expressions over the digits 0–9
with MAX, MIN, MED (median, rounded down) and SM (sum modulo 10), e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9;
the model reads the whole expression and names its value, a 10-way classification from the output
averaged over the non-padding positions.

Trees grow as in LRA's generator: the root is an operator; below ``max_depth`` a node is an operator with 2…``max_args``
arguments with probability 0.75, else a digit. An expression longer than n tokens (or shorter than
``min_length``) is drawn again; it is padded to n on the right. The attention methods take no padding
mask, so padding is ordinary tokens the model learns to ignore (pooling leaves them out). The
training set is ``train_examples`` expressions drawn once per seed; the evaluation set is drawn from
another stream, leaving out any expression that is also in the training set.

Chance: the share of the most common answer in the evaluation set (LRA's answers are far from
uniform; a constant guess reaches it). LRA's Transformer reaches 36.4% at n = 2000 after 5000 steps
of batch 32 (Tay et al., Table 1).
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import torch

from attnbench.methodspec import Unsupported
from attnbench.params import NonNegative, Positive
from attnbench.train.tasks.base import Batch, Task, generator

OPS = ("[MAX", "[MIN", "[MED", "[SM")
PAD, DIGIT0, OP0 = 0, 1, 11  # ids: padding, digits 1..10, operators 11..14, "]" 15
CLOSE = OP0 + len(OPS)
VOCAB = CLOSE + 1
VALUE_P = 0.25  # below max depth, a node is a digit with this probability (LRA's generator)
MAX_TRIES = 1000


@dataclass(frozen=True)
class ListOpsParams:
    max_depth: Positive = 6        # deepest nesting of operators
    max_args: Positive = 5         # arguments per operator (at least 2)
    min_length: NonNegative = 0    # shortest expression kept, in tokens
    train_examples: Positive = 4096  # distinct training expressions drawn once per seed


class _TooLong(Exception):
    """The expression being drawn has passed its length limit (it is dropped)."""


def _tree(rng: random.Random, depth: int, p: ListOpsParams, out: list[int], limit: int) -> int:
    """Append one expression's token ids to ``out`` and return its value; raise ``_TooLong`` as soon
    as ``out`` holds more than ``limit`` tokens (deep trees grow exponentially)."""
    if len(out) >= limit:
        raise _TooLong
    if depth >= p.max_depth or (depth > 0 and rng.random() < VALUE_P):  # the root is an operator
        digit = rng.randrange(10)
        out.append(DIGIT0 + digit)
        return digit
    op = rng.randrange(len(OPS))
    out.append(OP0 + op)
    vals = [_tree(rng, depth + 1, p, out, limit) for _ in range(rng.randint(2, max(2, p.max_args)))]
    out.append(CLOSE)
    if op == 0:
        return max(vals)
    if op == 1:
        return min(vals)
    if op == 2:
        s = sorted(vals)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    return sum(vals) % 10


def expression(rng: random.Random, p: ListOpsParams, n: int) -> tuple[list[int], int]:
    """One expression of at most n tokens (and at least ``min_length``), with its value."""
    for _ in range(MAX_TRIES):
        out: list[int] = []
        try:
            value = _tree(rng, 0, p, out, n)
        except _TooLong:
            continue
        if p.min_length <= len(out) <= n:
            return out, value
    raise Unsupported(f"listops: no expression of {p.min_length}..{n} tokens in {MAX_TRIES} draws "
                      f"with max_depth={p.max_depth}, max_args={p.max_args}; lower min_length or "
                      "max_depth")


def _pack(exprs: list[list[int]], n: int) -> torch.Tensor:
    inputs = torch.full((len(exprs), n), PAD, dtype=torch.uint8)  # (T, N); ids < 16
    for i, e in enumerate(exprs):
        inputs[i, : len(e)] = torch.tensor(e, dtype=torch.uint8)
    return inputs


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(int(torch.randint(0, 2**62, (1,), generator=generator(seed, stream))))


@dataclass(frozen=True)
class _Data:
    """A seed's training expressions and held-out batches (shared by every cell of that seed)."""

    inputs: torch.Tensor  # (T, N) uint8 token ids
    labels: torch.Tensor  # (T,)
    eval_inputs: torch.Tensor  # (E, N) uint8, E = eval_batches · batch
    eval_labels: torch.Tensor  # (E,)
    lengths: torch.Tensor  # (T,) tokens per training expression


@functools.lru_cache(maxsize=16)  # cells run method by method: keep every seed's and n's data
def _data(p: ListOpsParams, n: int, seed: int, eval_size: int) -> _Data:
    rng = _rng(seed, "listops-train")
    pairs = [expression(rng, p, n) for _ in range(p.train_examples)]
    seen = {tuple(e) for e, _ in pairs}
    rng = _rng(seed, "listops-eval")
    held: list[tuple[list[int], int]] = []
    tries = 0
    while len(held) < eval_size:
        e, v = expression(rng, p, n)
        tries += 1
        if tuple(e) not in seen:
            held.append((e, v))
        elif tries > MAX_TRIES * eval_size:
            raise Unsupported(f"listops: too few expressions outside the training set (max_depth="
                              f"{p.max_depth}, max_args={p.max_args}); raise them or lower "
                              "train_examples")
    return _Data(_pack([e for e, _ in pairs], n), torch.tensor([v for _, v in pairs]),
                 _pack([e for e, _ in held], n), torch.tensor([v for _, v in held]),
                 torch.tensor([len(e) for e, _ in pairs]))


class ListOps(Task):
    name = "listops"
    metric = "accuracy"
    pooled = True
    expected = "LRA Transformer 36.4% (Tay et al. 2020, Table 1; n = 2000, 5000 steps)"

    def __init__(self, p: ListOpsParams, *, n: int, batch: int, seed: int, eval_batches: int):
        if p.min_length > n:
            raise Unsupported(f"listops: min_length={p.min_length} exceeds n={n}")
        super().__init__(n=n, batch=batch, seed=seed, eval_batches=eval_batches, vocab=VOCAB,
                         outputs=10, pad=PAD)
        self.data = _data(p, n, seed, eval_batches * batch)
        self._pick = generator(seed, "listops-pick")
        lengths = self.data.lengths.float()
        self.info = {"mean_length": float(lengths.mean()), "max_length": int(lengths.max())}

    def train_batch(self, index: int) -> Batch:
        rows = torch.randint(0, len(self.data.labels), (self.batch,), generator=self._pick)
        return Batch(self.data.inputs[rows].long(), self.data.labels[rows])

    def eval_set(self) -> list[Batch]:
        d, b = self.data, self.batch
        return [Batch(d.eval_inputs[i:i + b].long(), d.eval_labels[i:i + b])
                for i in range(0, len(d.eval_labels), b)]

    @classmethod
    def planned_eval_items(cls, settings, batch):  # one answer per held-out expression
        return int(settings["eval_batches"]) * batch

    def chance(self) -> float:
        labels = self.data.eval_labels
        return float(torch.bincount(labels, minlength=10).max()) / len(labels)
