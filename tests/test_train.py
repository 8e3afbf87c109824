"""The train level: suites, cells, rows, curves, divergence, sharing, reports."""
import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from attnbench.cli import main
from attnbench.registry import REGISTRY
from attnbench.suite import Case, expand, load_suite, parse_suite
from attnbench.train.loop import Schedule, train
from attnbench.train.cell import quality_vs_exact
from attnbench.train.model import build_model, method_modules, parameter_counts
from attnbench.train.tasks import make_task, loss_fn
from conftest import PLUGINS, REPO

TINY = {
    "name": "tiny_train",
    "sweep": {"n": [16], "level": ["train"], "seed": [0]},
    "train": {"task": "mqar", "layers": 2, "d_model": 16, "heads": 2, "ffn_dim": 32, "steps": 6,
              "batch": 4, "lr": 1e-3, "eval_every": 3, "eval_batches": 1,
              "mqar": {"num_kv_pairs": 2, "vocab": 16}},
    "methods": {"sdpa": {}},
}


def suite_of(**changes):
    data = copy.deepcopy(TINY)
    for key, value in changes.items():
        data[key] = value if not isinstance(value, dict) or key not in data else {**data[key], **value}
    return parse_suite(data, "<test>")


# --- suites ------------------------------------------------------------------------------------

def test_committed_runs_keep_their_cell_ids():
    """New Case fields stay out of the identity of cells that don't use them."""
    runs = sorted((REPO / "results" / "h100" / "quick").glob("*/results.jsonl"))
    assert runs
    run = runs[0].parent
    ids = {c.cell_id for c in expand(load_suite(str(run / "suite.toml")), "cuda")}
    rows = [json.loads(line) for line in (run / "results.jsonl").open()]
    assert {r["cell_id"] for r in rows} == ids
    assert all("train" not in c.identity() for c in expand(load_suite("quick"), "cpu"))


def test_committed_train_runs_keep_their_cell_ids():
    """Train keys added later (token_shift) stay out of the identity of cells at their default."""
    run = REPO / "results" / "h200" / "linformer_quality" / "20261203-135304-h200-a553"
    ids = {c.cell_id for c in expand(load_suite(str(run / "suite.toml")), "cuda")}
    done = {json.loads(line)["cell_id"] for line in (run / "results.jsonl").open()}
    assert done and done <= ids


def test_train_cells_take_their_shape_from_the_train_table():
    s = suite_of(sweep={"n": [16, 32], "level": ["train"], "seed": [0, 1, 2], "heads": [8, 4],
                        "batch": [1, 2]})
    cases = expand(s, "cpu")
    assert len(cases) == 2 * 3  # n × seeds: the sweep's heads and batch do not apply
    c = cases[0]
    assert (c.level, c.mode, c.causal, c.heads, c.head_dim, c.batch, c.layers) == \
        ("train", "fwd_bwd", False, 2, 8, 4, 2)
    assert c.train_dict["task"] == "mqar" and c.train_dict["num_kv_pairs"] == 2
    assert len({x.cell_id for x in cases}) == 6
    assert Case.from_identity(json.loads(json.dumps(c.identity()))).cell_id == c.cell_id


def test_batch_tokens_keeps_tokens_per_step():
    s = suite_of(sweep={"n": [16, 64], "level": ["train"]}, train={"batch_tokens": 256})
    assert [c.batch * c.n for c in expand(s, "cpu")] == [256, 256]


def test_task_tables_and_per_task_overrides():
    s = suite_of(train={"task": ["mqar", "listops"], "listops": {"max_depth": 3, "steps": 9}})
    by_task = {c.train_dict["task"]: c.train_dict for c in expand(s, "cpu")}
    assert by_task["listops"]["steps"] == 9 and by_task["mqar"]["steps"] == 6
    assert by_task["listops"]["max_depth"] == 3 and "max_depth" not in by_task["mqar"]


@pytest.mark.parametrize("changes, message", [
    ({"train": {"d_model": 10, "heads": 4}}, "divisible by heads"),
    ({"train": {"lr": 0.0}}, "learning rate > 0"),
    ({"train": {"mqar": {"num_kv": 3}}}, "unknown param"),
    ({"train": {"listops": {"max_depth": 3}}}, "not in train.task"),
    ({"train": {"task": "wikitext"}}, "allowed: mqar, listops, mlm"),
    ({"sweep": {"n": [16], "level": ["core"]}}, "applies to level"),
    ({"sweep": {"n": [16], "level": ["train"], "batching": ["capacity"]}}, "capacity mode"),
    ({"timing": {"cuda_graphs": True}}, "CUDA graphs do not apply"),
    ({"seed": 3}, "give seeds in one place"),
])
def test_bad_train_suites_name_the_problem(changes, message, write_suite):
    from attnbench.suite import SuiteError
    from attnbench.tomlwrite import dumps

    data = copy.deepcopy(TINY)
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(SuiteError, match=message):
        parse_suite(data, "<test>")
    path = write_suite(dumps(data))
    assert main(["validate", str(path)]) == 2


def test_builtin_train_suites_validate():
    for name, device, cells in (("train_quick", "cpu", None), ("linformer_quality", "cuda", 54),
                                ("lra_lite", "cuda", 60), ("lra_lite_4k", "cuda", 60),
                                ("lra_pilot", "cuda", 12), ("listops_long", "cuda", 10),
                                ("lra_causal", "cuda", 30), ("mlm_plateau", "cuda", 3),
                                ("linformer_quality2", "cuda", 4), ("linformer_n", "cpu", 8),
                                ("linformer_k", "cpu", 4)):
        cases = expand(load_suite(name), device)
        assert all(c.level == "train" for c in cases)
        if cells:
            assert len(cases) == cells
    quality = expand(load_suite("linformer_quality"), "cuda")
    assert {c.seed for c in quality} == {0, 1, 2}
    assert {c.dtype for c in quality} == {"bf16"}
    assert {(c.n, c.params_dict["k"]) for c in quality if c.method == "linformer"} >= \
        {(512, 64), (512, 128), (512, 256), (1024, 128), (1024, 256), (4096, 256)}
    for name, n, batch in (("lra_lite", 1024, 32), ("lra_lite_4k", 4096, 8)):
        lra = expand(load_suite(name), "cuda")
        assert {(c.n, c.batch, c.seed) for c in lra} == {(n, batch, s) for s in (0, 1, 2)}
        assert all(dict(c.train)["token_shift"] is True for c in lra)
    # the recurrent family trains causally beside causal exact attention, with the same model
    causal = expand(load_suite("lra_causal"), "cuda")
    assert all(c.causal for c in causal)
    assert {"sdpa", "uniform", "fla_linear", "gla_layer", "deltanet_layer", "retnet"} <= {c.method for c in causal}


def test_quality_vs_exact_is_oriented_so_one_is_as_good():
    assert quality_vs_exact("accuracy", 0.45, 0.9) == pytest.approx(0.5)
    assert quality_vs_exact("perplexity", 8.0, 4.0) == pytest.approx(0.5)
    assert quality_vs_exact("accuracy", 0.5, 0.0) is None
    assert quality_vs_exact("perplexity", None, 4.0) is None


# --- the model ---------------------------------------------------------------------------------

def _model(method, n=32, layers=3, causal=False, token_shift=False, positions="learned", **params):
    spec = REGISTRY.get(method)
    return build_model(spec, spec.params(**params), vocab=16, outputs=16, n=n, d_model=16, heads=2,
                       layers=layers, ffn_dim=32, pooled=False, pad=None,
                       device=torch.device("cpu"), seed=0, batch=2, causal=causal,
                       token_shift=token_shift, positions=positions)


def test_token_shift_gives_each_position_the_previous_token_and_nothing_later():
    """A causal model with token_shift: the output at position i depends on token i-1 (the shift;
    the same model without it is checked to differ) and never on tokens after i."""
    torch.manual_seed(0)
    ids = torch.randint(0, 16, (2, 12))
    later, earlier = ids.clone(), ids.clone()
    later[:, 7:] = (later[:, 7:] + 5) % 16   # change tokens 7..11
    earlier[:, 5] = (earlier[:, 5] + 5) % 16  # change token 5 only
    for shift in (True, False):
        model = _model("sdpa", n=12, layers=1, causal=True, token_shift=shift).eval()
        with torch.no_grad():
            out, out_later = model(ids), model(later)
        assert torch.equal(out[:, :7], out_later[:, :7])  # no leak from the future
        assert not torch.equal(out[:, 7:], out_later[:, 7:])
    shifted = _model("sdpa", n=12, layers=1, causal=True, token_shift=True)
    assert shifted.shift is not None and _model("sdpa", n=12).shift is None
    # position 6 sees token 5 through attention as well; the shift alone: zero the attention path
    for layer in shifted.layers:
        layer.attn = _Zero()
    with torch.no_grad():
        a, b = shifted(ids), shifted(earlier)
    assert not torch.equal(a[:, 6], b[:, 6])  # token 5 reaches position 6 by the shift
    assert torch.equal(a[:, 7:], b[:, 7:]) and torch.equal(a[:, :5], b[:, :5])  # and no other


class _Zero(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_token_shift_is_a_train_key_left_out_of_identities_at_its_default():
    from attnbench.train.config import case_fields

    base = suite_of().train[0]
    assert "token_shift" not in dict(case_fields(base, 16)["train"])
    on = suite_of(train={"token_shift": True}).train[0]
    assert dict(case_fields(on, 16)["train"])["token_shift"] is True


def test_sinusoidal_positions_are_fixed_sin_cos_with_one_learned_gain():
    import math

    from attnbench.train.config import case_fields
    from attnbench.train.model import sinusoids

    table = sinusoids(50, 16)
    pos, i = 7, 3  # feature pair i: sin and cos of pos / 10000^(2i/d)
    angle = pos / 10000 ** (2 * i / 16)
    assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)
    model = _model("sdpa", n=12, layers=1, positions="sinusoidal")
    learned = _model("sdpa", n=12, layers=1)
    names = {name for name, _ in model.named_parameters()}
    assert "pos_gain" in names and not any(name.startswith("pos.") for name in names)
    assert parameter_counts(learned)["n_params"] - parameter_counts(model)["n_params"] == 12 * 16 - 1
    # the positions reach the output: the same token at two places gives two outputs
    ids = torch.full((1, 12), 3)
    with torch.no_grad():
        out = model.eval()(ids)
    assert not torch.allclose(out[0, 2], out[0, 9])
    model.pos_gain.data.zero_()  # and only through the table: without it the places are alike
    with torch.no_grad():
        out = model(ids)
    assert torch.allclose(out[0, 2], out[0, 9], atol=1e-6)
    # a key added later: out of the identity at its default, in it otherwise; bad values named
    assert "positions" not in dict(case_fields(suite_of().train[0], 16)["train"])
    on = suite_of(train={"positions": "sinusoidal"}).train[0]
    assert dict(case_fields(on, 16)["train"])["positions"] == "sinusoidal"
    from attnbench.suite import SuiteError

    with pytest.raises(SuiteError, match="sinusoidal"):
        suite_of(train={"positions": "rope"})


def test_layerwise_linformer_holds_one_E_whose_gradient_is_the_sum_over_layers():
    from attnbench.methods.linformer import projection_matrices

    model = _model("linformer", k=8, sharing="layerwise").double()
    mods = method_modules(model)
    assert all(m.E is mods[0].E and m.F is mods[0].E for m in mods)
    assert parameter_counts(model)["n_attn_params"] == 8 * 32  # one (k, n) matrix for the model
    ids = torch.randint(0, 16, (2, 32), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 16, (2, 32), generator=torch.Generator().manual_seed(1))
    shared = mods[0].E
    (grad,) = torch.autograd.grad(loss_fn(model(ids), labels), [shared])
    untied = copy.deepcopy(model)
    own = []
    for m in method_modules(untied):  # the same values, one Parameter per layer
        m.E = m.F = nn.Parameter(m.E.detach().clone())
        own.append(m.E)
    per_layer = torch.autograd.grad(loss_fn(untied(ids), labels), own)
    assert all(g.abs().sum() > 0 for g in per_layer)
    torch.testing.assert_close(grad, sum(per_layer), rtol=1e-10, atol=1e-12)
    # trained, it still holds exactly one matrix
    task = make_task("mqar", {"num_kv_pairs": 2, "vocab": 16}, n=32, batch=2, seed=0, eval_batches=1)
    model = _model("linformer", k=8, sharing="layerwise")
    before = mods[0].E.detach().clone()
    train(model, task, Schedule(steps=3, lr=1e-2, eval_every=3), torch.device("cpu"), None)
    assert len(projection_matrices(*method_modules(model))) == 1
    assert not torch.equal(method_modules(model)[0].E.detach(), before.float())


def test_headwise_and_none_hold_more_projections():
    for sharing, expected in (("headwise", 2 * 3), ("kv", 3), ("none", 2 * 3 * 2)):
        from attnbench.methods.linformer import projection_matrices

        assert len(projection_matrices(*method_modules(_model("linformer", k=8, sharing=sharing)))) \
            == expected


# --- cells through the runner ------------------------------------------------------------------

def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").open()]


def test_same_seed_same_final_loss_bit_for_bit(tmp_path):
    from attnbench.context import CellContext
    from attnbench.dispatch import run_cell

    suite = suite_of()
    case = expand(suite, "cpu")[0]
    rows = [run_cell(CellContext(suite=suite, device=torch.device("cpu")), case) for _ in range(2)]
    assert rows[0]["status"] == "ok", rows[0]
    assert rows[0]["train_loss_last"] == rows[1]["train_loss_last"]
    assert rows[0]["eval_loss_last"] == rows[1]["eval_loss_last"]
    other = expand(suite_of(sweep={"n": [16], "level": ["train"], "seed": [1]}), "cpu")[0]
    row = run_cell(CellContext(suite=suite, device=torch.device("cpu")), other)
    assert row["train_loss_last"] != rows[0]["train_loss_last"]


def test_a_nan_becomes_a_diverged_row_and_the_sweep_goes_on(tmp_path):
    from attnbench import run_suite

    data = copy.deepcopy(TINY)
    data["train"]["steps"] = 30
    data["methods"] = {"t_nan_after": {"calls": 2}, "sdpa": {}}
    outcome = run_suite(data, "cpu", out=tmp_path, progress=False,
                        plugins=[PLUGINS / "train_faults.py"])
    rows = {r["method"]: r for r in _rows(outcome.run_dir)}
    bad = rows["t_nan_after"]
    # each layer makes 2 good training calls (steps 1, 2; evaluation runs in eval mode, uncounted):
    # step 3's loss is the first NaN, seen at the evaluation after it
    assert bad["status"] == "diverged" and bad["diverged_step"] == 3, bad
    assert bad["accuracy"] is None and bad["steps_run"] == 3 and "step 3" in bad["reason"]
    assert rows["sdpa"]["status"] == "ok" and outcome.exit_code == 0
    points = [json.loads(line) for line in (outcome.run_dir / "curves.jsonl").open()]
    assert {p["cell_id"] for p in points} == {rows["sdpa"]["cell_id"]}  # diverged before evaluating
    assert main(["report", str(outcome.run_dir), "--table", "none"]) == 0
    assert "diverged" in (outcome.run_dir / "report.md").read_text()


def test_rows_curves_and_reports(tmp_path, capsys):
    from attnbench import run_suite
    from attnbench.train.curves import read_curves

    data = copy.deepcopy(TINY)
    data["sweep"]["seed"] = [0, 1]
    data["methods"] = {"sdpa": {}, "linformer": {"k": [4, 8]}, "uniform": {}}
    outcome = run_suite(data, "cpu", out=tmp_path, progress=False)
    rows = _rows(outcome.run_dir)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    r = next(r for r in rows if r["method"] == "linformer")
    for col in ("accuracy", "eval_best", "eval_last", "time_ms", "tokens_per_s",
                "peak_mem_mib", "n_params", "n_attn_params", "chance", "curve_attempt"):
        assert r.get(col) is not None, col
    assert r["eval_items"] == 4 * 1 * 2  # batch x eval_batches x one query per key-value pair
    exact = next(x for x in rows if x["method"] == "sdpa" and x["seed"] == r["seed"])
    assert r["quality_vs_exact"] == quality_vs_exact("accuracy", r["accuracy"], exact["accuracy"])
    curves = read_curves(outcome.run_dir)
    mine = curves[curves["cell_id"] == r["cell_id"]]
    assert list(mine["step"]) == [3, 6] and set(mine["attempt"]) == {r["curve_attempt"]}
    assert mine["accuracy"].iloc[-1] == r["accuracy"]
    md = (outcome.run_dir / "report.md")
    assert main(["report", str(outcome.run_dir), "--table", "none"]) == 0
    text = md.read_text()
    assert "## Quality after training" in text and "linformer(k=4)" in text
    assert main(["report", str(outcome.run_dir), "--grid", "accuracy", "--rows", "n", "--cols", "k",
                 "--out", str(tmp_path / "g")]) == 0
    grid = next((tmp_path / "g").glob("grid-accuracy-linformer*.csv")).read_text()
    assert "exact" in grid and ",16,4," in grid and ",16,8," in grid
    assert main(["plot", str(outcome.run_dir), "--kind", "curves,quality", "--format", "png",
                 "--out", str(tmp_path / "p")]) == 0
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == ["curves-mqar-n16.png", "quality-mqar-n16.png"]


def test_quality_table_places_each_accuracy_against_chance_with_its_sample_size():
    import pandas as pd

    from attnbench.train_report import quality_table, versus_chance

    # binomial: chance 0.1 over 900 predictions has a standard error of 0.01
    assert versus_chance("accuracy", 0.115, 0.1, 900, 1) == "≈ chance"
    assert versus_chance("accuracy", 0.125, 0.1, 900, 1) == "above"
    assert versus_chance("accuracy", 0.075, 0.1, 900, 1) == "below"
    assert versus_chance("accuracy", 0.115, 0.1, 900, 4) == "above"  # seeds add predictions
    assert versus_chance("perplexity", 20.0, 26.0, 900, 1) == "—"
    assert versus_chance("accuracy", 0.5, 0.1, float("nan"), 1) == "—"

    def rows(method, accuracy, **extra):  # MQAR rows: 8 pairs, batch 16, 2 evaluation batches
        return [{"level": "train", "status": "ok", "method": method, "label": method, "n": 64,
                 "seed": s, "batch": 16, "metric": "accuracy", "task": "mqar", "accuracy": a,
                 "chance": 0.125, "train.task": "mqar", "train.eval_batches": 2,
                 "train.num_kv_pairs": 8, **extra} for s, a in enumerate(accuracy)]
    # rows written before eval_items: the count is planned from the settings (16 x 2 x 8 = 256)
    old = pd.DataFrame(rows("sdpa", [0.9, 0.95]) + rows("uniform", [0.13, 0.12]) +
                       rows("linear", [0.16, 0.17]))
    heads, body, _ = quality_table(old, "sdpa")
    table = {r[heads.index("method")]: r for r in body}
    assert {r[heads.index("held-out")] for r in body} == {"256"}
    verdict = {m: r[heads.index("vs chance")] for m, r in table.items()}
    assert verdict == {"sdpa": "above", "uniform": "≈ chance", "linear": "above"}
    # a row's own count wins: 16 predictions make 0.165 indistinguishable from chance
    few = pd.DataFrame(rows("sdpa", [0.9, 0.95], eval_items=16) + rows("linear", [0.16, 0.17], eval_items=16))
    heads, body, _ = quality_table(few, "sdpa")
    table = {r[heads.index("method")]: r for r in body}
    assert table["linear"][heads.index("held-out")] == "16"
    assert table["linear"][heads.index("vs chance")] == "≈ chance"


def test_validate_and_dry_run_say_when_a_held_out_set_is_too_small_to_read(write_suite, capsys):
    from attnbench.tomlwrite import dumps
    from attnbench.train.config import FEW_EVAL_ITEMS, small_eval_notes

    few = write_suite(dumps(TINY))  # 4 sequences x 1 batch x 2 pairs = 8 predictions
    for argv in (["validate", str(few)], ["run", str(few), "--dry-run"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "mqar at n=16: an evaluation scores 8 held-out predictions" in out, argv
        assert "standard error up to 0.177" in out
    data = copy.deepcopy(TINY)
    data["train"]["eval_batches"] = FEW_EVAL_ITEMS // 8  # exactly enough
    enough = write_suite(dumps(data))
    assert main(["validate", str(enough)]) == 0
    assert "held-out predictions" not in capsys.readouterr().out
    # perplexity has no binomial count: mlm cells are never flagged
    data = copy.deepcopy(TINY)
    data["train"] = {**{k: v for k, v in data["train"].items() if k != "mqar"}, "task": "mlm"}
    assert small_eval_notes(expand(parse_suite(data, "<test>"), "cpu")) == []


def test_dry_run_never_passes_untimed_train_cells_off_as_seconds(tmp_path, write_suite, capsys):
    from attnbench import run_suite
    from attnbench.tomlwrite import dumps

    data = copy.deepcopy(TINY)
    data["methods"] = {"sdpa": {}, "uniform": {}}
    path = write_suite(dumps(data))
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "estimated run time unknown: 2 train cells that no earlier run of this suite has timed " \
           "(12 optimizer steps in all" in out
    run_suite(data, "cpu", out=tmp_path, progress=False)
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "every cell's wall time in" in out and "train cells that no earlier run" not in out


def test_resume_reruns_only_unfinished_train_cells_and_curves_follow_the_row(tmp_path):
    from attnbench import run_suite
    from attnbench.train.curves import read_curves

    data = copy.deepcopy(TINY)
    data["methods"] = {"sdpa": {}, "uniform": {}}
    outcome = run_suite(data, "cpu", out=tmp_path, progress=False)
    results = outcome.run_dir / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text(lines[0] + "\n")  # the second cell "never finished" (its curve points stay)
    gone = json.loads(lines[1])
    again = run_suite(None, "cpu", resume=outcome.run_dir, progress=False)
    rows = _rows(again.run_dir)
    assert [r["cell_id"] for r in rows] == [json.loads(lines[0])["cell_id"], gone["cell_id"]]
    assert rows[1]["curve_attempt"] != gone["curve_attempt"]
    points = read_curves(outcome.run_dir)
    assert set(points[points["cell_id"] == gone["cell_id"]]["attempt"]) == \
        {gone["curve_attempt"], rows[1]["curve_attempt"]}  # append-only: both attempts are there


def test_interleaved_and_unsupported_train_cells(tmp_path):
    from attnbench import run_suite

    data = copy.deepcopy(TINY)
    data["sweep"]["dtype"] = ["fp32", "fp16"]
    data["methods"] = {"sdpa": {}, "linformer": {"k": [32]}}
    outcome = run_suite(data, "cpu", out=tmp_path, progress=False, rounds=2)
    rows = {(r["method"], r["dtype"]): r for r in _rows(outcome.run_dir)}
    assert rows[("sdpa", "fp32")]["status"] == "ok"
    assert rows[("sdpa", "fp16")]["status"] == "unsupported"
    assert "loss scaling" in rows[("sdpa", "fp16")]["reason"]
    assert rows[("linformer", "fp32")]["status"] == "unsupported"  # k >= n, from the planner
    assert "smaller than n" in rows[("linformer", "fp32")]["reason"]
