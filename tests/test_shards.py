"""Shards and merge for job arrays (no Dask needed): a deterministic, balanced partition of whole
chains; shard runs merged equal a serial run's cell set; mixed suites refused; duplicates and missing
cells reported; a merged directory resumes. Also the run summary's accounting and the mixed-GPU note."""
import json
import random
from pathlib import Path

import pytest

from attnbench.accounting import Accounting, devices_from_rows, mixed_devices_note
from attnbench.cli import main
from attnbench.env import parse_device
from attnbench.planning import plan
from attnbench.progress import Progress
from attnbench.shards import cell_costs, chain_key, partition, parse_shard, shard_ids
from attnbench.store import iter_rows, read_meta
from attnbench.suite import load_suite

SUITE = """
name = "shardy"
baseline = "sdpa"
[sweep]
n = [64, 128]
batch = [1]
heads = [2]
head_dim = [16]
mode = ["fwd"]
[timing]
warmup = 1
warmup_s = 0.0
repeats = 2
[methods.sdpa]
[methods.naive]
[methods.linformer]
k = [32]
[methods.local]
window = [32]
"""


def quick_cases():
    return [c.case for c in plan(load_suite("quick"), parse_device("cpu"))]


def costs_of(cases, device="cpu"):
    suite = load_suite("quick")
    return cell_costs(cases, suite.timing, suite.error, device)


@pytest.mark.parametrize("rounds", [1, 3])
def test_partition_is_exact_deterministic_whole_chains_and_balanced(rounds):
    cases = quick_cases()
    costs = costs_of(cases)
    for n in range(1, 8):
        parts = partition(cases, n, rounds, costs)
        ids = [c.cell_id for p in parts for c in p]
        assert sorted(ids) == sorted(c.cell_id for c in cases)  # every cell exactly once
        # the same split from the cells in another order: every job of an array agrees
        shuffled = list(cases)
        random.Random(n).shuffle(shuffled)
        again = partition(shuffled, n, rounds, costs)
        assert [{c.cell_id for c in p} for p in again] == [{c.cell_id for c in p} for p in parts]
        # whole chains: an OOM family (and with rounds > 1 an interleaved group) is in one shard
        owner = {}
        for i, p in enumerate(parts):
            for c in p:
                assert owner.setdefault(chain_key(c, rounds), i) == i
                if rounds > 1:
                    assert owner.setdefault(("group", c.n, c.mode), i) == i
                assert owner.setdefault(("family", c.family_key()), i) == i
        # balanced as greedy longest-first promises: no shard exceeds another by more than a chain
        loads = [sum(costs[c.cell_id] for c in p) for p in parts]
        biggest = max(sum(costs[c.cell_id] for c in cases if chain_key(c, rounds) == k)
                      for k in {chain_key(c, rounds) for c in cases})
        assert max(loads) - min(loads) <= biggest + 1e-9
    two = partition(cases, 2, 1, costs)
    assert all(two)  # quick's 26 families fill both halves


def test_costs_rank_bigger_cells_first_and_history_wins():
    cases = quick_cases()
    costs = costs_of(cases)
    sdpa = {(c.n, c.mode): costs[c.cell_id] for c in cases if c.method == "sdpa"}
    assert sdpa[1024, "fwd"] > sdpa[256, "fwd"] and sdpa[1024, "fwd_bwd"] > sdpa[1024, "fwd"]
    first = cases[0].cell_id
    assert costs_of(cases)[first] != 99.0
    suite = load_suite("quick")
    assert cell_costs(cases, suite.timing, suite.error, "cpu", {first: 99.0})[first] == 99.0


def test_parse_shard_accepts_i_of_n_only():
    assert parse_shard("0/3") == (0, 3) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "a/b", "1/0", "1", "1/2/3", ""):
        with pytest.raises(Exception, match="--shard"):
            parse_shard(bad)


def run_cli(*args) -> int:
    return main(["run", *args, "--no-progress", "--no-table"])


def the_run(out: Path) -> Path:
    (run_dir,) = [p.parent for p in out.glob("*/*/meta.json")]
    return run_dir


def ids_of(run_dir) -> list[str]:
    return [r["cell_id"] for r in iter_rows(run_dir)]


@pytest.fixture
def shardy(write_suite):
    return write_suite(SUITE, "shardy.toml")


def test_shards_merged_equal_the_serial_cell_set(shardy, tmp_path, capsys):
    assert run_cli(str(shardy), "--out", str(tmp_path / "serial")) == 0
    serial = the_run(tmp_path / "serial")
    shard_dirs = []
    for i in range(3):
        out = tmp_path / f"s{i}"
        assert run_cli(str(shardy), "--out", str(out), "--shard", f"{i}/3") == 0
        shard_dirs.append(the_run(out))
        meta = read_meta(shard_dirs[-1])
        assert meta["shard"] == [i, 3] and meta["cells_in_suite"] == 8
        assert meta["suite_sha256"] == read_meta(serial)["suite_sha256"]
        assert sorted(ids_of(shard_dirs[-1])) == sorted(meta["shard_cells"])
    sizes = [len(ids_of(d)) for d in shard_dirs]
    assert sum(sizes) == 8 and all(sizes)  # a partition with no shard left empty
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, shard_dirs), "--out", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "merged 8 cells of 8 planned from 3 run directories" in " ".join(out.split())
    rows = ids_of(merged)
    assert sorted(rows) == sorted(ids_of(serial)) and len(rows) == len(set(rows))
    meta = read_meta(merged)
    assert meta["state"] == "complete" and meta["cells_missing"] == 0 and "shard" not in meta
    assert [m["shard"] for m in meta["merged_from"]] == [[0, 3], [1, 3], [2, 3]]
    assert all(m["provenance"]["hostname"] for m in meta["merged_from"])
    # the merged directory is a run directory: reports read it, resume finds nothing to do
    assert main(["report", str(merged)]) == 0
    assert run_cli("--resume", str(merged)) == 0 and ids_of(merged) == rows


def test_merge_reports_missing_cells_and_the_merged_run_resumes_them(shardy, tmp_path, capsys):
    dirs = []
    for i in (0, 2):  # shard 1 of 3 never ran
        assert run_cli(str(shardy), "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3") == 0
        dirs.append(the_run(tmp_path / f"s{i}"))
    missing = 8 - sum(len(ids_of(d)) for d in dirs)
    assert missing > 0
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, dirs), "--out", str(merged)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"{missing} cells missing" in out and f"attnbench run --resume {merged}" in out
    assert read_meta(merged)["state"] == "interrupted"
    assert run_cli("--resume", str(merged)) == 0
    rows = ids_of(merged)
    assert len(rows) == 8 == len(set(rows)) and read_meta(merged)["state"] == "complete"


def test_merge_dedupes_keeping_the_first_ok_row(shardy, tmp_path, capsys):
    assert run_cli(str(shardy), "--out", str(tmp_path / "a"), "--shard", "0/2") == 0
    a = the_run(tmp_path / "a")
    assert run_cli(str(shardy), "--out", str(tmp_path / "b")) == 0
    b = the_run(tmp_path / "b")
    # a's first row says error: b's ok row of that cell must win although a comes first
    lines = (a / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first.update(status="error", reason="made up")
    (a / "results.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    capsys.readouterr()
    merged = tmp_path / "m"
    assert main(["merge", str(a), str(b), "--out", str(merged)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    dup = len(lines)
    assert f"{dup} duplicate rows dropped ({dup} cells" in out and first["cell_id"] in out
    rows = {r["cell_id"]: r for r in iter_rows(merged)}
    assert len(rows) == 8 and rows[first["cell_id"]]["status"] == "ok"
    others = [json.loads(x) for x in lines[1:]]
    for r in others:  # both ok: the first source's row is kept
        assert rows[r["cell_id"]]["started"] == r["started"]
        assert rows[r["cell_id"]]["time_ms"] == r["time_ms"]


def test_merging_different_suites_exits_2_naming_both_and_writes_nothing(shardy, write_suite,
                                                                         tmp_path, capsys):
    other = write_suite(SUITE.replace("repeats = 2", "repeats = 3"), "other.toml")
    assert run_cli(str(shardy), "--out", str(tmp_path / "a"), "--shard", "0/2") == 0
    assert run_cli(str(other), "--out", str(tmp_path / "b"), "--shard", "1/2") == 0
    a, b = the_run(tmp_path / "a"), the_run(tmp_path / "b")
    capsys.readouterr()
    merged = tmp_path / "m"
    assert main(["merge", str(a), str(b), "--out", str(merged)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(a) in err and str(b) in err and "suite" in err
    assert read_meta(a)["suite_sha256"][:12] in err
    assert not merged.exists()
    # an --out that holds something, and a run directory listed twice, are refused too
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["merge", str(a), "--out", str(tmp_path / "full")]) == 2
    assert main(["merge", str(a), str(a), "--out", str(merged)]) == 2
    assert not merged.exists()


def test_a_resumed_shard_runs_only_its_own_missing_cells(shardy, tmp_path):
    assert run_cli(str(shardy), "--out", str(tmp_path / "s"), "--shard", "1/3") == 0
    run_dir = the_run(tmp_path / "s")
    mine = sorted(ids_of(run_dir))
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text(lines[0] + "\n")  # as if killed after one row
    assert run_cli("--resume", str(run_dir)) == 0
    assert sorted(ids_of(run_dir)) == mine  # its cells again, none of the other shards'
    assert run_cli("--resume", str(run_dir), "--shard", "0/3") == 2  # a shard stays what it was


@pytest.mark.parametrize("args, words", [
    (["--shard", "3/3"], "--shard"),
    (["--workers", "2"], "--executor dask"),
    (["--scheduler", "tcp://x:1"], "--executor dask"),
    (["--executor", "dask", "--workers", "0"], "--workers"),
    (["--costs-from", "nowhere"], "--costs-from"),
    (["--shard", "0/2", "--costs-from", "nowhere"], "nowhere: not a run directory"),
])
def test_bad_scale_out_options_exit_2_and_write_nothing(shardy, tmp_path, capsys, args, words):
    assert run_cli(str(shardy), "--out", str(tmp_path / "o"), *args) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_dask_missing_is_a_clear_exit_2(shardy, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "distributed" else real(name, *a))
    assert run_cli(str(shardy), "--out", str(tmp_path / "o"), "--executor", "dask") == 2
    assert "pip install 'attnbench[dist]'" in capsys.readouterr().err


def test_run_summary_accounting_and_the_mixed_gpu_warning_in_reports(shardy, tmp_path, capsys):
    from attnbench.report import to_markdown
    from attnbench.store import write_json_atomic

    assert main(["run", str(shardy), "--out", str(tmp_path / "o"), "--no-progress",
                 "--table", "none"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    run_dir = the_run(tmp_path / "o")
    acc = read_meta(run_dir)["accounting"]
    assert acc["workers"] == 1 and acc["cells"] == 8
    assert 0 < acc["cell_time_s"] <= acc["makespan_s"] + 1e-6  # serial cells never overlap
    assert acc["parallel_efficiency"] == pytest.approx(acc["cell_time_s"] / acc["makespan_s"])
    assert "makespan" in out and "parallel efficiency" in out
    # reports warn when the rows come from more than one GPU model
    assert "mixes GPU models" not in to_markdown(run_dir)
    meta = read_meta(run_dir)
    meta["devices"] = [{"worker": "gpu0", "gpu_uuid": "GPU-a", "gpu_name": "NVIDIA H100"},
                       {"worker": "gpu1", "gpu_uuid": "GPU-b", "gpu_name": "NVIDIA A100"}]
    write_json_atomic(run_dir / "meta.json", meta)
    assert "mixes GPU models (NVIDIA A100, NVIDIA H100)" in to_markdown(run_dir)
    assert main(["report", str(run_dir)]) == 0
    assert "mixes GPU models" in " ".join(capsys.readouterr().out.split())


def test_accounting_and_devices_arithmetic():
    acc = Accounting(makespan_s=10.0, cell_time_s=15.0, workers=2, cells=4)
    assert acc.parallel_efficiency == 0.75 and "parallel efficiency 75%" in acc.describe()
    rows = [{"worker": "gpu0", "worker_host": "h", "gpu_index": 0, "gpu_uuid": "GPU-a",
             "gpu_name": "H100"}] * 3 + [{"worker": "gpu1", "worker_host": "h", "gpu_index": 1,
                                           "gpu_uuid": "GPU-b", "gpu_name": "A100"}]
    devices = devices_from_rows(rows)
    assert [(d["gpu_uuid"], d["cells"]) for d in devices] == [("GPU-a", 3), ("GPU-b", 1)]
    # a resume adds to what the earlier session found
    again = devices_from_rows(rows[:1], devices)
    assert {d["gpu_uuid"]: d["cells"] for d in again} == {"GPU-a": 4, "GPU-b": 1}
    assert "A100, H100" in mixed_devices_note({"devices": devices})
    assert mixed_devices_note({"devices": devices[:1]}) is None


def test_progress_lines_show_cells_per_worker():
    import io

    stream = io.StringIO()
    bar = Progress(3, enabled=True, stream=stream, live=False, min_interval_s=0)
    bar.finish("a", "ok", worker="gpu0")
    bar.finish("b", "ok", worker="gpu1")
    bar.finish("c", "ok", worker="gpu0")
    assert stream.getvalue().splitlines()[-1].endswith("cells per worker: gpu0 2, gpu1 1")
