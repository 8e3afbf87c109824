"""The CLI verbs end to end, as a user calls them."""
import json

from attnbench.cli import main
from attnbench.registry import REGISTRY


def test_list_shows_every_method_with_availability(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY.names():
        assert name in out
    if REGISTRY.get("xformers").unavailable_reason():
        assert "xformers not installed" in " ".join(out.split())


def test_list_suites_shows_quick(capsys):
    assert main(["list", "suites"]) == 0
    assert "quick" in capsys.readouterr().out


def test_env_prints_provenance(capsys):
    assert main(["env"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["torch"] and data["attnbench_version"]


def test_run_then_report_writes_markdown_and_csv(tiny_suite, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tiny_suite("[methods.sdpa]\n[methods.naive]\n")), "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "time_ms" in printed and "naive" in printed
    run_dir = next((out / "tiny").iterdir())
    assert main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| method |" in md and "naive" in md
    assert (tmp_path / "rep" / "report.csv").read_text().count("\n") == 5


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["run"]) == 2
    assert main(["run", "quick", "--device", "tpu"]) == 2
    assert main(["run", "quick", "--only", "linformr", "--dry-run"]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert main(["frobnicate"]) == 2
