"""The training tasks: seeded, held out, scored where they say, and their chance levels."""
import random

import pytest
import torch

from attnbench.registry import Unsupported
from attnbench.train.tasks import IGNORE, Tally, make_task
from attnbench.train.tasks.listops import CLOSE, DIGIT0, OP0, ListOpsParams, expression


def test_mqar_label_is_the_value_that_followed_the_queried_key():
    task = make_task("mqar", {"num_kv_pairs": 6, "vocab": 32}, n=40, batch=8, seed=3, eval_batches=1)
    b = task.train_batch(0)
    for x, y in zip(b.inputs.tolist(), b.labels.tolist()):
        pairs = dict(zip(x[0:12:2], x[1:12:2]))
        assert len(pairs) == 6 and all(k < 16 <= v for k, v in pairs.items())
        scored = [(x[i], y[i]) for i in range(12, 40) if y[i] != IGNORE]
        assert sorted(k for k, _ in scored) == sorted(pairs)  # every key asked exactly once
        assert all(pairs[k] == v for k, v in scored)
        assert all(y[i] == IGNORE for i in range(12))
    assert task.chance() == pytest.approx(1 / 6)


def test_mqar_seeded_streams_and_held_out_set():
    a = make_task("mqar", {}, n=64, batch=4, seed=1, eval_batches=2)
    b = make_task("mqar", {}, n=64, batch=4, seed=1, eval_batches=2)
    first = a.train_batch(0).inputs
    assert torch.equal(first, b.train_batch(0).inputs)
    assert not torch.equal(a.train_batch(1).inputs, first)  # a stream, not one batch repeated
    assert torch.equal(a.eval_set()[1].labels, b.eval_set()[1].labels)
    train = {tuple(r) for r in a.train_batch(2).inputs.tolist()}
    assert not train & {tuple(r) for e in a.eval_set() for r in e.inputs.tolist()}
    c = make_task("mqar", {}, n=64, batch=4, seed=2, eval_batches=2)
    assert not torch.equal(c.eval_set()[0].inputs, a.eval_set()[0].inputs)


def test_mqar_refuses_what_cannot_fit():
    with pytest.raises(Unsupported, match="n >= 3"):
        make_task("mqar", {"num_kv_pairs": 8}, n=16, batch=1, seed=0, eval_batches=1)
    with pytest.raises(Unsupported, match="vocab"):
        make_task("mqar", {"num_kv_pairs": 8, "vocab": 12}, n=64, batch=1, seed=0, eval_batches=1)


def _evaluate(tokens: list[int]) -> int:
    """An independent evaluator of a ListOps token list (prefix, ']' closes)."""
    stack: list[list] = []
    for t in tokens:
        if OP0 <= t < CLOSE:
            stack.append([t - OP0])
        elif t == CLOSE:
            op, *vals = stack.pop()
            s = sorted(vals)
            v = [max(vals), min(vals), s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] +
                 s[len(s) // 2]) // 2, sum(vals) % 10][op]
            if not stack:
                return v
            stack[-1].append(v)
        else:
            stack[-1].append(t - DIGIT0)
    raise AssertionError("unbalanced expression")


def test_listops_values_and_lengths():
    p = ListOpsParams(max_depth=4, max_args=4, min_length=10)
    rng = random.Random(0)
    for _ in range(200):
        tokens, value = expression(rng, p, 64)
        assert 10 <= len(tokens) <= 64 and tokens[0] >= OP0  # the root is an operator
        assert _evaluate(tokens) == value


def test_listops_eval_set_is_disjoint_from_training_and_padded():
    task = make_task("listops", {"max_depth": 3, "max_args": 3, "train_examples": 256}, n=48,
                     batch=16, seed=5, eval_batches=2)
    data = task.data
    train = {tuple(r) for r in data.inputs.tolist()}
    held = [tuple(r) for b in task.eval_set() for r in b.inputs.tolist()]
    assert len(held) == 32 and not train & set(held)
    b = task.train_batch(0)
    assert b.inputs.shape == (16, 48) and b.labels.shape == (16,)
    assert ((b.inputs == 0).cumsum(1) > 0).eq(b.inputs == 0).all()  # padding only at the end
    labels = torch.cat([e.labels for e in task.eval_set()])
    assert task.chance() == pytest.approx(labels.bincount().max().item() / 32)


def test_mlm_masks_a_share_and_scores_only_masked_positions():
    task = make_task("mlm", {"mask_prob": 0.15}, n=256, batch=8, seed=0, eval_batches=2)
    b = task.train_batch(0)
    scored = b.labels != IGNORE
    assert 0.10 < scored.float().mean() < 0.20
    changed = b.inputs != torch.where(scored, b.labels, b.inputs)
    assert not changed[~scored].any()  # unscored positions read the text as it is
    assert (b.inputs[scored] == 256).float().mean() > 0.6  # most scored positions read [MASK]
    assert b.labels[scored].max() < 256 and task.info["tokenizer"] == "byte"
    assert 5 < task.chance() < 100  # the unigram perplexity of English bytes


def test_tally_metrics():
    t = Tally()
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    t.add(logits, torch.tensor([[0, IGNORE]]))
    assert t.value("accuracy") == 1.0  # argmax of a tie is the first class
    assert t.value("perplexity") == pytest.approx(2.0)


@pytest.mark.parametrize("name,knobs,batch,eval_batches", [
    ("mqar", {"num_kv_pairs": 6, "vocab": 32}, 8, 3),
    ("listops", {"max_depth": 3, "max_args": 3, "train_examples": 64, "min_length": 1}, 4, 2),
])
def test_eval_items_counts_the_scored_predictions_and_rows_before_it_can_plan_them(
        name, knobs, batch, eval_batches):
    from attnbench.train.tasks import TASKS

    task = make_task(name, knobs, n=64, batch=batch, seed=0, eval_batches=eval_batches)
    scored = sum(int(b.labels.numel()) if task.pooled else int((b.labels != IGNORE).sum())
                 for b in task.eval_set())
    assert task.eval_items() == scored > 0
    settings = {**knobs, "eval_batches": eval_batches}
    assert TASKS[name][1].planned_eval_items(settings, batch) == scored


def test_mlm_has_no_planned_count_its_masks_are_drawn():
    from attnbench.train.tasks import TASKS

    assert TASKS["mlm"][1].planned_eval_items({"eval_batches": 2}, 4) is None
