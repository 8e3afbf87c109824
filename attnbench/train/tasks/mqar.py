"""Multi-query associative recall (Arora et al., Zoology, https://arxiv.org/abs/2312.04927).

A sequence opens with ``num_kv_pairs`` key–value pairs ``k1 v1 k2 v2 …`` (keys drawn without
repetition from the lower half of the vocabulary, values from the upper half); every key is then asked
once more, in random order, at random positions of the rest of the sequence, which is filler (token 0).
At each query position the model must name the value that followed that key: accuracy over those
positions. Token ids: 0 filler, keys 1 … vocab/2 − 1, values vocab/2 … vocab − 1.

The label is scored at the query position and never appears in the input, so the task is the same
for a causal model (Zoology's: each query sees what came before it; the sweep's ``causal = [true]``)
and a bidirectional one (what Linformer needs: it has no causal variant). They do not learn it alike:
on a CPU at n = 12, 4 pairs, d_model 64, a causal 2-layer sdpa model reached 0.99 accuracy within
300 steps for every seed tried, while the same model without the mask stayed at 1/4 for 1000+ steps
for most seeds (a bidirectional model must find the key's neighbour from learned positions alone,
while causal masking favours the preceding token from the start).
At n = 1024 a 2-layer exact model stayed at chance for 2000 steps on an H200 (results/h200/lra_pilot/):
the two-layer circuit recall needs (copy the previous token, then match the query against it) forms
slowly when attention starts spread over a thousand positions. ``[train] token_shift = true`` hands
every position its previous token (see :mod:`attnbench.train.model`); with it exact attention learns
MQAR at n = 1024 within 200 steps, and recall still needs attention to find the key.
Batches are fresh draws from the seed's training stream; the evaluation set comes from another stream
(a repeat of a training sequence is vanishingly unlikely: keys and values are drawn anew each time).

Chance is 1/num_kv_pairs: a model that knows which values occur but not which key each followed (what
a bag of tokens, e.g. ``uniform`` attention, gives) can only guess among them. Exact attention solves
the task (Zoology, Figure 2: attention reaches ~100% at every tested size with 2 layers); the queries
need content-based lookup of the matching key, then the token after it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.methodspec import Unsupported
from attnbench.params import Positive
from attnbench.train.tasks.base import IGNORE, Batch, Task, generator


@dataclass(frozen=True)
class MQARParams:
    num_kv_pairs: Positive = 8   # key-value pairs per sequence (each queried once)
    vocab: Positive = 64         # tokens: filler, keys in the lower half, values in the upper half


class MQAR(Task):
    name = "mqar"
    metric = "accuracy"
    expected = "~1.0 (Zoology, Fig. 2: attention solves MQAR at every size tested)"

    def __init__(self, p: MQARParams, *, n: int, batch: int, seed: int, eval_batches: int):
        d, half = p.num_kv_pairs, p.vocab // 2
        if 3 * d > n:
            raise Unsupported(f"mqar: num_kv_pairs={d} needs n >= 3·{d} = {3 * d} (pairs, then one "
                              f"query per key), got n={n}")
        if half - 1 < d or p.vocab - half < d:
            raise Unsupported(f"mqar: vocab={p.vocab} is too small for {d} distinct keys and values "
                              f"(needs vocab >= {2 * d + 2})")
        super().__init__(n=n, batch=batch, seed=seed, eval_batches=eval_batches, vocab=p.vocab,
                         outputs=p.vocab)
        self.p = p
        self._train = generator(seed, "mqar-train")

    def draw(self, g: torch.Generator, batch: int) -> Batch:
        d, v, n = self.p.num_kv_pairs, self.p.vocab, self.n
        half = v // 2
        keys = torch.rand(batch, half - 1, generator=g).argsort(1)[:, :d] + 1  # (B, D) distinct
        vals = torch.rand(batch, v - half, generator=g).argsort(1)[:, :d] + half  # (B, D) distinct
        order = torch.rand(batch, d, generator=g).argsort(1)  # (B, D): which key each query asks
        spots = torch.rand(batch, n - 2 * d, generator=g).argsort(1)[:, :d]  # (B, D) query positions
        inputs = torch.zeros(batch, n, dtype=torch.long)
        inputs[:, : 2 * d] = torch.stack([keys, vals], dim=2).reshape(batch, 2 * d)
        labels = torch.full((batch, n), IGNORE, dtype=torch.long)
        inputs[:, 2 * d:].scatter_(1, spots, keys.gather(1, order))
        labels[:, 2 * d:].scatter_(1, spots, vals.gather(1, order))
        return Batch(inputs, labels)

    def train_batch(self, index: int) -> Batch:
        return self.draw(self._train, self.batch)

    def eval_set(self) -> list[Batch]:
        g = generator(self.seed, "mqar-eval")
        return [self.draw(g, self.batch) for _ in range(self.eval_batches)]

    def chance(self) -> float:
        return 1.0 / self.p.num_kv_pairs

    @classmethod
    def planned_eval_items(cls, settings, batch):  # every key is asked once per sequence
        return int(settings["eval_batches"]) * batch * int(settings["num_kv_pairs"])
