"""The train_quick suite as CI runs it: exact attention learns tiny MQAR, the uniform control does not.

One run of the built-in suite (a few hundred steps per cell) serves every assertion here, so CI pays
for it once.
"""
import json

import pytest

from attnbench.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_quick")
    assert main(["run", "train_quick", "--out", str(out), "--no-progress", "--table", "none"]) == 0
    (run_dir,) = (out / "train_quick").iterdir()
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").open()]
    return run_dir, {(r["method"], r["causal"]): r for r in rows}


def test_exact_attention_learns_mqar_and_uniform_stays_at_chance(run):
    _, rows = run
    exact, control = rows[("sdpa", True)], rows[("uniform", True)]
    assert exact["status"] == control["status"] == "ok"
    assert exact["chance"] == pytest.approx(0.25)
    assert exact["accuracy"] >= 0.9, exact["accuracy"]
    assert abs(control["accuracy"] - control["chance"]) <= 0.1, control["accuracy"]
    assert control["quality_vs_exact"] == pytest.approx(control["accuracy"] / exact["accuracy"])


def test_every_cell_has_a_row_a_curve_and_a_report(run):
    run_dir, rows = run
    assert set(rows) == {("sdpa", True), ("sdpa", False), ("uniform", True), ("linformer", False)}
    assert all(r["status"] == "ok" and r["steps_run"] == 400 for r in rows.values())
    points = [json.loads(line) for line in (run_dir / "curves.jsonl").open()]
    assert len(points) == 4 * 4  # an evaluation every 100 steps
    report = (run_dir / "report.md").read_text()
    assert "## Quality after training" in report
    assert main(["plot", str(run_dir), "--kind", "quality", "--format", "png"]) == 0
    assert {p.name for p in (run_dir / "plots").iterdir()} == {
        "quality-mqar-n12-causal=True.png", "quality-mqar-n12-causal=False.png"}
