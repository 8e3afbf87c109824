"""Masked-language modelling on real English text: the Linformer paper's pre-training objective
(Wang et al., 2020, https://arxiv.org/abs/2006.04768, §5.1, after BERT/RoBERTa), reported as the
perplexity of the masked tokens on held-out text.

The text is the one :mod:`attnbench.real` assembles from the Python standard library's docstrings
(about 340 kB of English prose, available wherever Python is; rows record its hash and size). The
last ``eval_frac`` of it is held out. Tokens: ``byte`` (UTF-8 bytes, 256 ids and a [MASK] id; needs
nothing) or ``wordpiece`` (MiniLM's WordPiece tokenizer, from the ``real`` extra). Training windows
of n tokens start anywhere in the training text (fresh draws per step); the evaluation windows are
drawn once per seed from the held-out text. BERT's masking: ``mask_prob`` of the positions are
scored; of those 80% read [MASK], 10% a random token and 10% stay as they are.

Chance is the unigram perplexity of the held-out masked tokens (token frequencies of the training
text): what a model that cannot see the context reaches.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from attnbench.methodspec import Unsupported
from attnbench.params import Range
from attnbench.train.tasks.base import IGNORE, Batch, Task, generator

Tokenizer = Literal["byte", "wordpiece"]
Fraction = Annotated[float, Range(0.0, 1.0)]


@dataclass(frozen=True)
class MLMParams:
    mask_prob: Fraction = 0.15      # share of positions scored (BERT's 15%)
    tokenizer: Tokenizer = "byte"   # byte (no extra needed) | wordpiece (the 'real' extra)
    eval_frac: Fraction = 0.1       # the end of the text held out for evaluation


@dataclass(frozen=True)
class Corpus:
    ids: torch.Tensor  # (T,) token ids of the whole text, int32
    vocab: int         # output ids are in [0, vocab); [MASK] is ``mask``
    mask: int
    sha256: str


@functools.lru_cache(maxsize=2)
def corpus(tokenizer: str) -> Corpus:
    from attnbench.real import build_text, text_sha256

    text, _ = build_text()
    if tokenizer == "byte":
        ids = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int32)
        return Corpus(ids, 256, 256, text_sha256())
    from attnbench.real import MissingExtra, _require_extra

    try:
        transformers, package = _require_extra()
    except MissingExtra as exc:
        raise Unsupported(f"mlm tokenizer='wordpiece': {exc}; tokenizer='byte' needs nothing") from None
    tok = transformers.AutoTokenizer.from_pretrained(str(package.get_model_path()),
                                                     local_files_only=True)
    ids = tok.encode(text, add_special_tokens=False, verbose=False)
    return Corpus(torch.tensor(ids, dtype=torch.int32), len(tok), tok.mask_token_id, text_sha256())


class MLM(Task):
    name = "mlm"
    metric = "perplexity"
    expected = ("no published figure on this text; the Linformer paper's claims are relative to "
                "the Transformer's perplexity (Figure 3)")

    def __init__(self, p: MLMParams, *, n: int, batch: int, seed: int, eval_batches: int):
        c = corpus(p.tokenizer)
        if not 0 < p.eval_frac < 1 or not 0 < p.mask_prob < 1:
            raise Unsupported(f"mlm: mask_prob={p.mask_prob} and eval_frac={p.eval_frac} must lie "
                              "strictly between 0 and 1")
        cut = int(len(c.ids) * (1 - p.eval_frac))
        self.train_ids, self.eval_ids = c.ids[:cut], c.ids[cut:]
        if len(self.eval_ids) <= n:
            raise Unsupported(f"mlm: the held-out text has {len(self.eval_ids)} tokens, fewer than "
                              f"n={n}; raise eval_frac or lower n")
        vocab = max(c.vocab, c.mask + 1)
        super().__init__(n=n, batch=batch, seed=seed, eval_batches=eval_batches, vocab=vocab,
                         outputs=vocab, info={"corpus_sha256": c.sha256, "corpus_tokens": len(c.ids),
                                              "eval_tokens": len(self.eval_ids),
                                              "tokenizer": p.tokenizer})
        self.p, self.c = p, c
        self._train = generator(seed, "mlm-train")
        self._eval: list[Batch] | None = None

    def draw(self, ids: torch.Tensor, g: torch.Generator, batch: int) -> Batch:
        n = self.n
        starts = torch.randint(0, len(ids) - n + 1, (batch, 1), generator=g)  # (B, 1)
        orig = ids[starts + torch.arange(n)].long()  # (B, N)
        chosen = torch.rand(batch, n, generator=g) < self.p.mask_prob
        how = torch.rand(batch, n, generator=g)
        noise = torch.randint(0, self.c.vocab, (batch, n), generator=g)
        inputs = torch.where(chosen & (how < 0.8), self.c.mask, orig)
        inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), noise, inputs)
        return Batch(inputs, torch.where(chosen, orig, IGNORE))

    def train_batch(self, index: int) -> Batch:
        return self.draw(self.train_ids, self._train, self.batch)

    def eval_set(self) -> list[Batch]:
        if self._eval is None:
            g = generator(self.seed, "mlm-eval")
            self._eval = [self.draw(self.eval_ids, g, self.batch) for _ in range(self.eval_batches)]
        return self._eval

    def chance(self) -> float:
        counts = torch.bincount(self.train_ids.long(), minlength=self.outputs).double() + 1.0
        logp = (counts / counts.sum()).log()
        labels = torch.cat([b.labels.reshape(-1) for b in self.eval_set()])
        labels = labels[labels != IGNORE]
        return math.exp(-float(logp[labels].mean()))
