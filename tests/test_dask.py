"""Scale-out on Dask (issue 24) on CPU with local clusters of 2 worker processes: the same cells as a
serial run, no duplicate, rows naming their worker; a worker killed mid-cell costs that cell a
``crashed`` row and the sweep goes on; a scheduler that retries still times a cell once; SIGKILL or
SIGINT to the driver, then ``--resume`` (with or without Dask) gives every cell exactly once; OOM
pruning and interleaved groups as in a serial run; shards of ``quick`` merged equal the serial cells.

Needs the ``dist`` extra (``pip install 'attnbench[dist]'``); CI does not install it, so these skip
there. They start several clusters and run ``quick`` three ways: minutes, not seconds.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="Dask is not installed: pip install 'attnbench[dist]' "
                                          "(the optional extra; CI does not install it)")

from attnbench import run_suite  # noqa: E402
from attnbench.cli import main  # noqa: E402
from attnbench.store import iter_rows, read_meta  # noqa: E402
from conftest import PLUGINS, cli_env  # noqa: E402

HOLDING = PLUGINS / "holding.py"
FAULTY = PLUGINS / "faulty.py"
CRASHY = PLUGINS / "crashy.py"

HOLD_SUITE = """
name = "hold"
[sweep]
n = [32, 64, 96]
heads = [1]
head_dim = [8]
[timing]
warmup = 0
warmup_s = 0.0
repeats = 2
[error]
enabled = false
[methods.t_hold]
[methods.sdpa]
"""

SLOW_SUITE = """
name = "slow"
[sweep]
n = [16, 32, 48, 64, 80, 96]
heads = [1]
head_dim = [8]
mode = ["fwd", "fwd_bwd"]
[timing]
warmup = 0
warmup_s = 0.0
repeats = 2
[error]
enabled = false
[methods.t_slow]
"""


def rows_of(run_dir) -> list[dict]:
    return list(iter_rows(run_dir))


def ids(rows) -> list[str]:
    return [r["cell_id"] for r in rows]


def the_run_dir(out: Path) -> Path:
    (run_dir,) = [p.parent for p in out.glob("*/*/meta.json")]
    return run_dir


def cli(*args: str) -> list[str]:
    script = shutil.which("attnbench")
    return [script, *args] if script else [sys.executable, "-P", "-m", "attnbench.cli", *args]


def env(**extra: str) -> dict:
    e = cli_env()
    e["PYTHONPATH"] = os.pathsep.join(p for p in e["PYTHONPATH"].split(os.pathsep) if p)
    return {**e, **extra}


def wait_for(predicate, what: str, timeout_s: float = 240):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if (got := predicate()):
            return got
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout_s} s")


def rows_at_least(out: Path, n: int):
    def check():
        found = list(out.glob("*/*/results.jsonl"))
        return found[0].parent if found and len(found[0].read_text().splitlines()) >= n else None
    return check


def descendants(pid: int) -> list[int]:
    kids = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def wait_dead(pids, timeout_s: float = 30) -> list[int]:
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


@pytest.fixture(scope="module")
def serial_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    outcome = run_suite("quick", "cpu", out=out, progress=False)
    assert outcome.exit_code == 0
    return outcome.run_dir


def test_quick_on_two_workers_gives_the_serial_cells_each_once_naming_its_worker(serial_quick,
                                                                                 tmp_path):
    outcome = run_suite("quick", "cpu", out=tmp_path, progress=False, executor="dask", workers=2)
    assert outcome.exit_code == 0
    rows, serial = rows_of(outcome.run_dir), rows_of(serial_quick)
    assert sorted(ids(rows)) == sorted(ids(serial)) and len(set(ids(rows))) == len(rows)
    status = {r["cell_id"]: r["status"] for r in serial}
    assert {r["cell_id"]: r["status"] for r in rows} == status
    ran = [r for r in rows if r["status"] != "unsupported"]
    assert {r["worker"] for r in ran} == {"cpu0", "cpu1"}  # both workers took cells
    assert all(r["worker_host"] and r["worker_pid"] != os.getpid() and r["cell_s"] >= 0
               and r["gpu_index"] is None and r["gpu_uuid"] is None for r in ran)
    meta = read_meta(outcome.run_dir)
    assert meta["executor"] == "dask" and meta["state"] == "complete"
    assert sorted(d["worker"] for d in meta["devices"]) == ["cpu0", "cpu1"]
    assert sum(d["cells"] for d in meta["devices"]) == len(ran)
    acc = meta["accounting"]
    assert acc["workers"] == 2 and acc["cells"] == len(rows) and acc["parallel_efficiency"] > 0
    # the two workers ran cells at the same time: together more cell time than wall time
    assert acc["cell_time_s"] > acc["makespan_s"]


def test_quick_shards_merged_equal_the_serial_cells(serial_quick, tmp_path, capsys):
    dirs = []
    for i in range(3):
        assert main(["run", "quick", "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3",
                     "--no-progress", "--no-table"]) == 0
        dirs.append(the_run_dir(tmp_path / f"s{i}"))
    assert main(["merge", *map(str, dirs), "--out", str(tmp_path / "m")]) == 0
    merged = rows_of(tmp_path / "m")
    assert sorted(ids(merged)) == sorted(ids(rows_of(serial_quick)))
    assert len(set(ids(merged))) == len(merged)
    # a shard of another suite is refused
    assert main(["run", "quick", "--only", "sdpa", "--out", str(tmp_path / "x"), "--shard", "0/3",
                 "--no-progress", "--no-table"]) == 0
    capsys.readouterr()
    assert main(["merge", str(dirs[0]), str(the_run_dir(tmp_path / "x")), "--out",
                 str(tmp_path / "bad")]) == 2
    assert "--only selection" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_worker_killed_mid_cell_gives_a_crashed_row_and_the_rest_completes(tmp_path, write_suite):
    suite = write_suite(HOLD_SUITE, "hold.toml")
    hold = tmp_path / "hold"
    hold.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen(cli("--plugin", str(HOLDING), "run", str(suite), "--out", str(out),
                                "--executor", "dask", "--workers", "2", "--no-progress",
                                "--no-table"), env=env(ATTNBENCH_TEST_HOLD_DIR=str(hold)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (marker,) = wait_for(lambda: list(hold.iterdir()), "held cell")
        pid = int(marker.name)
        assert pid in descendants(proc.pid)  # a worker process of this run, mid-cell
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr  # a crashed cell is a failure of the run
    rows = rows_of(the_run_dir(out))
    by = {(r["method"], r["n"]): r for r in rows}
    assert len(rows) == 6 == len(set(ids(rows)))
    held = by["t_hold", 64]
    assert held["status"] == "crashed" and "died" in held["reason"] and held["worker"]
    assert all(r["status"] == "ok" for k, r in by.items() if k != ("t_hold", 64))
    assert "Traceback" not in stderr


def test_a_scheduler_that_retries_still_times_a_cell_once(tmp_path, write_suite, monkeypatch):
    from distributed import LocalCluster

    suite = write_suite(HOLD_SUITE, "hold.toml")
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv("ATTNBENCH_TEST_HOLD_DIR", str(hold))  # the workers inherit it
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0, scheduler_kwargs={"allowed_failures": 3}) as cluster:
        out = tmp_path / "out"
        proc = subprocess.Popen(cli("--plugin", str(HOLDING), "run", str(suite), "--out", str(out),
                                    "--executor", "dask", "--scheduler", cluster.scheduler_address,
                                    "--workers", "2", "--no-progress", "--no-table"),
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            (marker,) = wait_for(lambda: list(hold.iterdir()), "held cell")
            os.kill(int(marker.name), signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            proc.kill()
    assert proc.returncode == 1, stderr
    assert len(list(hold.iterdir())) == 1  # the retried task did not run the cell again
    rows = rows_of(the_run_dir(out))
    held = next(r for r in rows if r["method"] == "t_hold" and r["n"] == 64)
    assert held["status"] == "crashed" and "not timed twice" in held["reason"]
    assert len(rows) == 6 and sum(r["status"] == "ok" for r in rows) == 5
    meta = read_meta(the_run_dir(out))
    assert meta["scheduler"] == cluster.scheduler_address and meta["state"] == "complete"


def test_sigkill_to_the_driver_then_resume_gives_every_cell_once(tmp_path, write_suite):
    suite = write_suite(SLOW_SUITE, "slow.toml")
    out = tmp_path / "out"
    proc = subprocess.Popen(cli("--plugin", str(FAULTY), "run", str(suite), "--out", str(out),
                                "--executor", "dask", "--workers", "2", "--no-progress",
                                "--no-table"), env=env(ATTNBENCH_TEST_SLEEP="0.3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = wait_for(rows_at_least(out, 2), "two rows")
    workers = descendants(proc.pid)
    assert workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert wait_dead(workers) == [], "a Dask worker outlived its SIGKILLed driver"
    before = rows_of(run_dir)
    assert 2 <= len(before) < 12
    res = subprocess.run(cli("--plugin", str(FAULTY), "run", "--resume", str(run_dir),
                             "--executor", "dask", "--workers", "2", "--no-progress", "--no-table"),
                         env=env(ATTNBENCH_TEST_SLEEP="0.01"), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    after = rows_of(run_dir)
    assert len(after) == 12 == len(set(ids(after))) and after[:len(before)] == before
    meta = read_meta(run_dir)
    assert meta["state"] == "complete" and meta["resumes"] == 1


def test_sigint_to_the_driver_prints_the_resume_command_and_a_serial_resume_completes(
        tmp_path, write_suite, monkeypatch):
    suite = write_suite(SLOW_SUITE, "slow.toml")
    out = tmp_path / "out"
    proc = subprocess.Popen(cli("--plugin", str(FAULTY), "run", str(suite), "--out", str(out),
                                "--executor", "dask", "--workers", "2", "--no-progress",
                                "--no-table"), env=env(ATTNBENCH_TEST_SLEEP="0.3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = wait_for(rows_at_least(out, 2), "two rows")
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    hint = " ".join(stdout.split())
    assert f"run --resume {run_dir} --executor dask --workers 2" in hint
    assert wait_dead(workers) == [], "a Dask worker outlived the interrupted run"
    assert "Traceback" not in stderr
    meta = read_meta(run_dir)
    assert meta["state"] == "interrupted" and meta["interrupted_by"] == "SIGINT"
    before = rows_of(run_dir)
    monkeypatch.setenv("ATTNBENCH_TEST_SLEEP", "0.01")
    assert main(["--plugin", str(FAULTY), "run", "--resume", str(run_dir), "--no-progress",
                 "--no-table"]) == 0  # without the executor: in this process
    after = rows_of(run_dir)
    assert len(after) == 12 == len(set(ids(after))) and after[:len(before)] == before
    assert not any(r.get("worker") for r in after[len(before):])


def test_oom_pruning_and_interleaved_groups_keep_their_serial_meaning(tmp_path, write_suite,
                                                                      faulty_plugin):
    text = """
name = "oomy"
baseline = "sdpa"
[sweep]
n = [64, 128, 256, 512]
batch = [1]
heads = [2]
head_dim = [16]
mode = ["fwd", "fwd_bwd"]
[timing]
warmup = 1
warmup_s = 0.0
repeats = 4
[error]
enabled = false
[methods.t_oom]
n_fail = [128]
[methods.sdpa]
"""
    outcome = run_suite(str(write_suite(text, "oomy.toml")), "cpu", out=tmp_path / "a",
                        progress=False, executor="dask", workers=2)
    rows = rows_of(outcome.run_dir)
    for mode in ("fwd", "fwd_bwd"):
        oom = {r["n"]: r["status"] for r in rows if r["method"] == "t_oom" and r["mode"] == mode}
        assert oom == {64: "ok", 128: "oom", 256: "oom-pruned", 512: "oom-pruned"}
    # interleaved: each comparison group is one task, timed on one worker in one go
    outcome = run_suite(str(write_suite(text, "oomy.toml")), "cpu", out=tmp_path / "b",
                        progress=False, executor="dask", workers=2, rounds=2)
    rows = rows_of(outcome.run_dir)
    groups = {}
    for r in rows:
        if r["status"] != "oom-pruned":
            groups.setdefault((r["n"], r["mode"]), set()).add((r["worker_pid"], r["started"]))
    assert len(groups) == 8 and all(len(g) == 1 for g in groups.values())
    assert all(r.get("timing_rounds") == 2 for r in rows if r["status"] == "ok")
    oom = {(r["n"], r["mode"]): r["status"] for r in rows if r["method"] == "t_oom"}
    assert oom[256, "fwd"] == oom[512, "fwd_bwd"] == "oom-pruned"


def test_isolated_cells_in_workers_segfault_and_hang_cost_one_row_each(tmp_path, write_suite):
    from attnbench.registry import REGISTRY, load_plugin_file

    if "t_fault" not in REGISTRY:
        load_plugin_file(CRASHY)
    text = """
name = "faults"
[sweep]
n = [64, 128, 256]
batch = [1]
heads = [2]
head_dim = [16]
[timing]
warmup = 1
warmup_s = 0.0
repeats = 2
[methods.t_fault]
fault = ["segv", "hang"]
n_fault = [128]
"""
    outcome = run_suite(str(write_suite(text, "faults.toml")), "cpu", out=tmp_path, progress=False,
                        executor="dask", workers=2, timeout_s=8)
    rows = rows_of(outcome.run_dir)
    by = {(r["params"]["fault"], r["n"]): r for r in rows}
    assert len(rows) == 6
    assert by["segv", 128]["status"] == "crashed" and by["segv", 128]["signal"] == "SIGSEGV"
    assert by["hang", 128]["status"] == "timeout" and "8 s" in by["hang", 128]["reason"]
    assert all(by[f, n]["status"] == "ok" for f in ("segv", "hang") for n in (64, 256))
    # the cell subprocess died, not the Dask worker: the same two workers ran every cell
    assert len({r["worker_pid"] for r in rows}) <= 2
    assert read_meta(outcome.run_dir)["isolate"] == "method"
