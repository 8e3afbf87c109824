"""The declared row schema: every column a run writes is declared, method stats cannot shadow the
harness's columns, old runs load as before, and the README's column table matches the declaration."""
import json
import re

import pytest

from attnbench import load_results, run_suite
from attnbench.schema import BY_NAME, STATS, undeclared
from attnbench.store import read_meta
from conftest import REPO


@pytest.mark.parametrize("extra,methods", [
    ("", "[methods.sdpa]\n[methods.linformer]\nk = [16]\n[methods.lsh]\nbucket_size = [16]\n"),
    ('mode = ["fwd_bwd"]\nlevel = ["layer", "model"]\n', "[methods.sdpa]\n[methods.performer]\n"),
    ('level = ["train"]\n[train]\ntask = "mqar"\nlayers = 1\nd_model = 32\nheads = 2\n'
     'ffn_dim = 32\nsteps = 4\nbatch = 4\nlr = 1e-3\neval_every = 2\neval_batches = 1\n'
     '[train.mqar]\nnum_kv_pairs = 2\nvocab = 16\n', "[methods.sdpa]\n[methods.linformer]\nk = [8]\n"),
])
def test_every_column_a_run_writes_is_declared(write_suite, tmp_path, extra, methods):
    text = ('name = "s"\n[sweep]\nn = [64]\nheads = [2]\nhead_dim = [16]\n' + extra +
            '[timing]\nwarmup = 1\nwarmup_s = 0.0\nrepeats = 2\n[model]\nlayers = 2\nffn_dim = 32\n'
            + methods)
    outcome = run_suite(str(write_suite(text)), "cpu", out=tmp_path, progress=False, retry_noisy=1)
    rows = [json.loads(line) for line in (outcome.run_dir / "results.jsonl").read_text().splitlines()]
    assert rows and all(not undeclared(r) for r in rows), [undeclared(r) for r in rows]
    assert read_meta(outcome.run_dir)["schema_version"] == 2
    df = load_results(outcome.run_dir)
    assert any(c.startswith("stat.") for c in df.columns)


def test_a_stat_named_like_a_column_cannot_shadow_it(tmp_path, write_suite):
    from attnbench.registry import REGISTRY, load_plugin_file

    plugin = tmp_path / "shadow.py"
    plugin.write_text('''
import torch.nn.functional as F
from torch import nn
from attnbench.registry import NoParams, register_method

class Shadow(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    def stats(self):
        return {"n": -1, "status": "hacked", "time_ms": 0.0}

@register_method("t_shadow", family="other", exact=False, params=NoParams)
def build(p, ctx):
    return Shadow()
''')
    if "t_shadow" not in REGISTRY:
        load_plugin_file(plugin)
    suite = write_suite('name = "s"\n[sweep]\nn = [64]\nheads = [2]\nhead_dim = [16]\n'
                        '[timing]\nwarmup = 1\nwarmup_s = 0.0\nrepeats = 2\n[methods.t_shadow]\n')
    df = load_results(run_suite(str(suite), "cpu", out=tmp_path, progress=False).run_dir)
    row = df.iloc[0]
    assert row["n"] == 64 and row["status"] == "ok" and row["time_ms"] > 0
    assert row["stat.n"] == -1 and row["stat.status"] == "hacked"


def test_committed_runs_of_the_old_layout_keep_their_stat_columns():
    run = next((REPO / "results" / "h100" / "peers").iterdir())
    df = load_results(run)
    assert "stat.compiled" not in df and "compiled" in df  # as they were written


def test_readme_column_table_matches_the_schema():
    """The README's table documents the terminal/Markdown headers; each maps to a declared column
    (or a ratio reports derive), and every column the paragraph below it names is declared."""
    from attnbench.tables import COLUMNS as SHOWN

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Reading a results table")[1].split("\n## ")[0]
    headers = {h for row in re.findall(r"^\| (`.+?) \|", section, re.M)
               for h in re.findall(r"`([^`]+)`", row)}
    data_of = {h: c for c, h in SHOWN} | {c: c for c, _ in SHOWN}
    derived = {"speedup", "mem_ratio"}  # computed by reports from two rows, not stored
    for h in headers:
        name = data_of.get(h, h)
        assert name in BY_NAME or name in derived or name in ("B", "H", "D"), h
    assert {h for _, h in SHOWN} <= headers | {"level", "dtype", "mode", "causal"}
    more = section.split("results.jsonl` holds more")[1].split("`meta.json` beside")[0]
    for name in re.findall(r"`([a-z_]+)`", more):
        assert name in BY_NAME, name
    assert STATS in BY_NAME
