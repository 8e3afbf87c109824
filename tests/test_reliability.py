"""Reliability: real faults (segfault, os._exit, hang, SIGINT, SIGTERM, SIGKILL, torn files, a second
writer, hostile input) and what survives them: the right status row, every finished row, no duplicates.

Each fault test records its figures in ``FIGURES``; with ``ATTNBENCH_RELIABILITY_JSON=path`` set they
are written there (the README's Reliability table is copied from that file).
"""
import ast
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench import run_suite
from attnbench.cli import main
from attnbench.store import RunDirError, iter_rows, new_run_dir, read_meta
from conftest import PLUGINS, REPO, cli_env

CRASHY = PLUGINS / "crashy.py"
FAULTY = PLUGINS / "faulty.py"
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def write_figures():
    yield
    target = os.environ.get("ATTNBENCH_RELIABILITY_JSON")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def plugins():
    from attnbench.registry import REGISTRY, load_plugin_file

    for path, name in ((FAULTY, "t_slow"), (CRASHY, "t_fault")):
        if name not in REGISTRY:
            load_plugin_file(path)


def record(kind: str, *, cases: int, finished_before: int, rows_lost: int, duplicates: int,
           **extra) -> None:
    FIGURES[kind] = {"cases": cases, "finished_before_fault": finished_before,
                     "rows_lost": rows_lost, "duplicates": duplicates, **extra}


def rows_of(run_dir) -> list[dict]:
    return list(iter_rows(run_dir))


def duplicates(rows) -> int:
    ids = [r["cell_id"] for r in rows]
    return len(ids) - len(set(ids))


def the_run_dir(out: Path) -> Path:
    (run_dir,) = [p.parent for p in out.glob("*/*/meta.json")]
    return run_dir


def clean_env(**extra: str) -> dict:
    """The environment for CLI subprocesses: the repo importable, and no empty PYTHONPATH entry
    (an empty entry means the working directory, which would put the traps below on the path)."""
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return {**env, **extra}


def cli(*args: str) -> list[str]:
    """The installed console script when there is one (what users run: the working directory is not
    on its import path), else the same through ``python -P``."""
    script = shutil.which("attnbench")
    return [script, *args] if script else [sys.executable, "-P", "-m", "attnbench.cli", *args]


def wait_for_rows(out: Path, at_least: int, timeout_s: float = 120) -> Path:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = list(out.glob("*/*/results.jsonl"))
        if found and sum(1 for _ in open(found[0])) >= at_least:
            return found[0].parent
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} rows after {timeout_s} s")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_dead(pids, timeout_s: float = 15) -> list[int]:
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


TRAP = """import os, pathlib
pathlib.Path(os.path.dirname(os.path.abspath(__file__)), "IMPORTED-" + __name__).write_text("")
"""
# names a loader might look for, and stdlib/torch names that would be shadowed if the directory were
# on the import path of the CLI or of its workers (ctypes and selectors are imported after start-up)
TRAP_NAMES = ("plugin.py", "plugins.py", "my_method.py", "attnbench_plugin.py", "methods.py",
              "crashy.py", "faulty.py", "ctypes.py", "selectors.py", "sitecustomize.py")


def plant_traps(where: Path) -> None:
    for name in TRAP_NAMES:
        (where / name).write_text(TRAP)


def SLOW_SUITE(name: str, ns=(16, 32, 48, 64, 80, 96)) -> str:
    return f"""
name = "{name}"
[sweep]
n = {list(ns)}
heads = [1]
head_dim = [8]
[timing]
warmup = 0
warmup_s = 0.0
repeats = 2
[error]
enabled = false
[methods.t_slow]
"""


FAULT_SUITE = """
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
fault = ["segv", "exit", "hang"]
n_fault = [128]
"""


def test_isolated_segfault_exit_and_hang_each_cost_one_row(tmp_path, write_suite, plugins):
    suite = write_suite(FAULT_SUITE)
    outcome = run_suite(str(suite), "cpu", out=tmp_path / "o", progress=False, isolate="method",
                        timeout_s=6)
    rows = rows_of(outcome.run_dir)
    by = {(r["params"]["fault"], r["n"]): r for r in rows}
    assert len(rows) == 9 and duplicates(rows) == 0
    for fault in ("segv", "exit", "hang"):
        assert by[fault, 64]["status"] == "ok", by[fault, 64]  # before the fault: kept
        assert by[fault, 256]["status"] == "ok", by[fault, 256]  # after it: a fresh worker ran it
    segv, exit_, hang = by["segv", 128], by["exit", 128], by["hang", 128]
    assert segv["status"] == "crashed" and segv["signal"] == "SIGSEGV" and segv["exit_code"] == -11
    assert "SIGSEGV" in segv["reason"] and segv["where"].startswith("crashy.py:")
    assert exit_["status"] == "crashed" and exit_["exit_code"] == 7 and "code 7" in exit_["reason"]
    assert hang["status"] == "timeout" and "6 s" in hang["reason"]
    assert outcome.exit_code == 1  # crashed and timeout cells are failures
    meta = read_meta(outcome.run_dir)
    assert meta["state"] == "complete" and meta["isolate"] == "method"
    assert meta["counts"] == {"ok": 6, "crashed": 2, "timeout": 1}
    assert meta["plugins"] and all(Path(p).is_file() for p in meta["plugins"])
    # a resume has nothing left to do: crashed and timeout rows are results, not gaps
    again = run_suite(None, "cpu", resume=outcome.run_dir, progress=False)
    assert rows_of(outcome.run_dir) == rows and again.counts == meta["counts"]
    # a worker computes the same error figures as the parent would (same seeds, same code)
    inproc = run_suite(str(write_suite(FAULT_SUITE.replace("[64, 128, 256]", "[64, 256]"),
                                       "inproc.toml")), "cpu", out=tmp_path / "p", progress=False)
    for r in rows_of(inproc.run_dir):
        iso = next(x for x in rows if x["cell_id"] == r["cell_id"])
        assert (iso["rel_err"], iso["max_abs_err"], iso["cosine"]) == \
               (r["rel_err"], r["max_abs_err"], r["cosine"])
    for fault, row in (("segfault (ctypes.string_at(0))", segv), ("os._exit(7)", exit_),
                       ("hang past --timeout-s", hang)):
        record(fault, cases=1, finished_before=1, rows_lost=0, duplicates=duplicates(rows),
               status=row["status"], continued_after=1)


def test_sigint_to_isolated_cli_kills_the_worker_and_resume_completes(tmp_path, write_suite,
                                                                       plugins, monkeypatch):
    suite = write_suite(SLOW_SUITE("sigint_iso"))
    out = tmp_path / "out"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    plant_traps(cwd)  # nothing in the working directory may be imported, by the CLI or its workers
    env = clean_env(ATTNBENCH_TEST_SLEEP="0.25")
    proc = subprocess.Popen(cli("--plugin", str(FAULTY), "run", str(suite), "--out", str(out),
                                "--isolate", "--no-progress", "--no-table"), env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = wait_for_rows(out, 2)
    workers = children(proc.pid)
    assert workers, "the isolated run has no worker process"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and str(run_dir) in stdout.replace("\n", "")
    assert wait_dead(workers) == [], "a worker outlived the interrupted run"
    meta = read_meta(run_dir)
    assert meta["state"] == "interrupted" and meta["interrupted_by"] == "SIGINT"
    before = rows_of(run_dir)
    assert 2 <= len(before) < 6 and {r["status"] for r in before} == {"ok"}
    assert not list(tmp_path.rglob("IMPORTED-*"))
    monkeypatch.setenv("ATTNBENCH_TEST_SLEEP", "0.01")
    assert main(["--plugin", str(FAULTY), "run", "--resume", str(run_dir), "--no-progress",
                 "--no-table"]) == 0
    after = rows_of(run_dir)
    assert len(after) == 6 and duplicates(after) == 0
    assert after[:len(before)] == before  # every finished row kept as it was
    assert read_meta(run_dir)["state"] == "complete"
    record("SIGINT to an isolated run", cases=1, finished_before=len(before), rows_lost=0,
           duplicates=duplicates(after), exit_code=proc.returncode)


def test_sigkill_to_isolated_cli_second_writer_refused_resume_completes(tmp_path, write_suite,
                                                                         plugins, capsys):
    suite = write_suite(SLOW_SUITE("sigkill_iso"))
    out = tmp_path / "out"
    env = clean_env(ATTNBENCH_TEST_SLEEP="0.25")
    proc = subprocess.Popen(cli("--plugin", str(FAULTY), "run", str(suite), "--out", str(out),
                                "--isolate", "--no-progress", "--no-table"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = wait_for_rows(out, 1)
    workers = children(proc.pid)
    assert workers
    # a second writer on the same run directory is refused, with the holder's pid, exit 2
    rc = main(["--plugin", str(FAULTY), "run", "--resume", str(run_dir), "--no-progress",
               "--no-table"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "in use" in err and str(proc.pid) in err
    wait_for_rows(out, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert wait_dead(workers) == [], "the worker outlived its SIGKILLed parent"
    before = rows_of(run_dir)
    assert 2 <= len(before) < 6
    plant_traps(run_dir)  # nor anything sitting in the run directory
    res = subprocess.run(cli("--plugin", str(FAULTY), "run", "--resume", str(run_dir),
                             "--no-progress", "--no-table"),
                         env={**env, "ATTNBENCH_TEST_SLEEP": "0.01"}, cwd=run_dir,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    after = rows_of(run_dir)
    assert len(after) == 6 and duplicates(after) == 0 and after[:len(before)] == before
    meta = read_meta(run_dir)
    assert meta["state"] == "complete" and meta["resumes"] == 1 and meta["isolate"] == "method"
    assert not list(tmp_path.rglob("IMPORTED-*"))
    record("SIGKILL to an isolated run", cases=1, finished_before=len(before), rows_lost=0,
           duplicates=duplicates(after), exit_code=-9)
    record("concurrent second writer", cases=1, finished_before=len(before), rows_lost=0,
           duplicates=duplicates(after), exit_code=rc)


def test_sigint_to_cli_without_isolation_exits_130_and_resume_completes(tmp_path, write_suite,
                                                                        plugins, monkeypatch):
    suite = write_suite(SLOW_SUITE("sigint"))
    out = tmp_path / "out"
    env = clean_env(ATTNBENCH_TEST_SLEEP="0.25")
    proc = subprocess.Popen(cli("--plugin", str(FAULTY), "run", str(suite), "--out", str(out),
                                "--no-progress", "--no-table"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = wait_for_rows(out, 2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    hint = next(line for line in stdout.splitlines() if "--resume" in line)
    assert f"--plugin {FAULTY}" in hint and str(run_dir) in hint
    meta = read_meta(run_dir)
    assert meta["state"] == "interrupted" and meta["isolate"] is None
    before = rows_of(run_dir)
    monkeypatch.setenv("ATTNBENCH_TEST_SLEEP", "0.01")
    assert main(["--plugin", str(FAULTY), "run", "--resume", str(run_dir), "--no-progress",
                 "--no-table"]) == 0
    after = rows_of(run_dir)
    assert len(after) == 6 and duplicates(after) == 0 and after[:len(before)] == before
    record("SIGINT without --isolate", cases=1, finished_before=len(before), rows_lost=0,
           duplicates=duplicates(after), exit_code=proc.returncode)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_sweep_in_process(tmp_path, write_suite, plugins, monkeypatch, signum):
    monkeypatch.setenv("ATTNBENCH_TEST_SLEEP", "0.0")
    suite = write_suite(SLOW_SUITE("sigterm"))
    seen = []

    def on_row(row):
        seen.append(row["cell_id"])
        if len(seen) == 3:
            os.kill(os.getpid(), signum)

    outcome = run_suite(str(suite), "cpu", out=tmp_path / "o", progress=False, on_row=on_row)
    assert outcome.interrupted and outcome.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is not None  # handlers restored
    meta = read_meta(outcome.run_dir)
    assert meta["state"] == "interrupted" and meta["interrupted_by"] == signum.name
    assert [r["cell_id"] for r in rows_of(outcome.run_dir)] == seen
    run_suite(None, "cpu", resume=outcome.run_dir, progress=False)
    after = rows_of(outcome.run_dir)
    assert len(after) == 6 and duplicates(after) == 0
    record(f"{signum.name} in process", cases=1, finished_before=3, rows_lost=0,
           duplicates=duplicates(after), exit_code=130)


TORN_SUITE = """
name = "torn"
[sweep]
n = [32, 64]
heads = [1]
head_dim = [8]
[timing]
warmup = 0
warmup_s = 0.0
repeats = 2
[methods.sdpa]
[methods.naive]
"""


def test_torn_and_corrupt_rows_at_every_kind_of_cut(tmp_path, write_suite):
    suite = str(write_suite(TORN_SUITE))
    base = run_suite(suite, "cpu", out=tmp_path / "o", progress=False).run_dir
    lines = (base / "results.jsonl").read_bytes().splitlines(keepends=True)
    last = lines[-1]
    cuts = {  # name: (file bytes, cells that must be re-run)
        "one byte of the last row": (b"".join(lines[:-1]) + last[:1], 1),
        "half the last row": (b"".join(lines[:-1]) + last[: len(last) // 2], 1),
        "last row without its newline": (b"".join(lines[:-1]) + last[:-1], 0),
        "garbage in the middle": (b"".join(lines[:1]) + b'{"cell_id": "x\x00\xff\n' +
                                  b"".join(lines[2:]), 1),
        "empty file": (b"", 4),
    }
    for name, (data, rerun) in cuts.items():
        run_dir = tmp_path / name.replace(" ", "_")
        shutil.copytree(base, run_dir)
        (run_dir / "results.jsonl").write_bytes(data)
        kept = [json.loads(x) for x in lines if x.rstrip(b"\n") in data.splitlines()]
        if 0 < rerun < 4:
            with pytest.warns(UserWarning, match="torn or corrupt"):
                assert len(rows_of(run_dir)) == 4 - rerun, name
        outcome = run_suite(None, "cpu", resume=run_dir, progress=False)
        rows = rows_of(run_dir)
        assert len(rows) == 4 and duplicates(rows) == 0, name
        assert len(kept) == 4 - rerun and all(r in rows for r in kept), name  # never rewritten
        assert sum(outcome.counts.values()) == 4 and read_meta(run_dir)["resumes"] == 1
        torn = run_dir / "results.jsonl.torn"
        assert torn.is_file() == (name in ("one byte of the last row", "half the last row")), name
        record(f"torn results file: {name}", cases=1, finished_before=4 - rerun, rows_lost=0,
               duplicates=duplicates(rows), rerun=rerun)


BAD_NAMES = ["../../x", "/tmp/abs", "a/b", "..", ".", "", "x" * 65, "a\\\\b", "nul\\u0000",
             "-rf", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_hostile_suite_names_never_reach_the_filesystem(tmp_path, write_suite, capsys, name):
    suite = write_suite(f'name = "{name}"\n[sweep]\nn = [16]\n[methods.sdpa]\n')
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 2
    assert "name" in capsys.readouterr().err
    assert not out.exists()
    assert main(["validate", str(suite)]) == 2


def test_paths_from_data_are_checked_again_where_they_are_built(tmp_path):
    for suite_name, tag in (("../x", "cpu"), ("ok", "../../cpu"), ("..", "cpu"), ("ok", "")):
        with pytest.raises(RunDirError):
            new_run_dir(tmp_path / "out", suite_name, tag)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_out_and_hostile_run_directories_exit_2(tmp_path, write_suite, capsys):
    suite = str(write_suite('name = "ok"\n[sweep]\nn = [16]\nheads = [1]\nhead_dim = [8]\n'
                            '[methods.sdpa]\n'))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["run", suite, "--out", str(blocker), "--no-progress"]) == 2
    assert "cannot create" in " ".join(capsys.readouterr().err.split())
    bad_meta = {"list": "[1, 2]", "only": '{"only": "sdpa", "device_type": "cpu"}',
                "isolate": '{"isolate": "everything"}', "timeout": '{"timeout_s": -1}',
                "binary": "\udcff"}
    for key, text in bad_meta.items():
        run_dir = tmp_path / f"run_{key}"
        run_dir.mkdir()
        (run_dir / "meta.json").write_text(text, errors="surrogateescape")
        (run_dir / "suite.toml").write_text(Path(suite).read_text())
        assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2, key
        assert "error:" in capsys.readouterr().err
        assert not (run_dir / "results.jsonl").exists()
    run_dir = tmp_path / "run_suite"
    run_dir.mkdir()
    (run_dir / "meta.json").write_text("{}")
    (run_dir / "suite.toml").write_text('name = "../../x"\n[sweep]\nn = [16]\n[methods.sdpa]\n')
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2


def test_hostile_strings_stay_data_and_are_escaped_in_reports(tmp_path, write_suite, plugins,
                                                              monkeypatch):
    from attnbench.registry import REGISTRY

    hostile = REGISTRY.get("t_hostile").factory.__globals__["HOSTILE"]
    cwd = tmp_path / "a" / "b" / "c"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)  # a path built from "../../t_escape" would land inside tmp_path: we'd see it
    suite = write_suite('name = "hostile"\n[sweep]\nn = [16]\nheads = [1]\nhead_dim = [8]\n'
                        '[timing]\nwarmup = 0\nrepeats = 2\n[methods.sdpa]\n[methods.t_hostile]\n'
                        '[methods."../../t_escape<b>|"]\n')
    before = {p for p in tmp_path.rglob("*")}
    assert main(["run", str(suite), "--out", "out", "--no-progress", "--no-table"]) == 1
    (run_dir,) = [p.parent for p in (cwd / "out").glob("*/*/meta.json")]
    assert main(["report", str(run_dir)]) == 0
    html = importlib.util.find_spec("attnbench.html") is not None
    if html:
        assert main(["report", str(run_dir), "--format", "html"]) == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p.is_relative_to(cwd / "out") for p in created), sorted(created)
    rows = {r["method"]: r for r in rows_of(run_dir)}
    assert rows["t_hostile"]["status"] == "error"
    assert rows["t_hostile"]["reason"] == f"ValueError: {hostile}"  # kept as data, verbatim
    assert rows["../../t_escape<b>|"]["status"] == "error"
    md = (run_dir / "report.md").read_text()
    assert "t_hostile" in md and "t_escape" in md
    for raw in ("<script>", "<b>"):
        assert raw not in md, raw
    assert re.search(r"(?<!\\)\]\(javascript:", md) is None  # a live Markdown link
    tables = re.findall(r"(?m)(?:^\|.*\n?)+", md)
    assert tables and sum(len(t.splitlines()) for t in tables) >= 5
    for table in tables:  # no '|' from data splits a row: every row has its header's columns
        widths = {len(re.findall(r"(?<!\\)\|", ln)) for ln in table.splitlines()}
        assert len(widths) == 1, (widths, table)
    if html:
        page = (run_dir / "report.html").read_text()
        assert "t_hostile" in page and "&lt;script&gt;" in page
        assert "<script>alert" not in page and "<b>|" not in page


def test_no_code_from_data_is_evaluated_or_unpickled():
    """Suites are TOML, results JSON, the isolate protocol JSON lines: nothing in the package evaluates
    strings, unpickles, or loads tensors with full pickle."""
    banned_calls = {"eval", "exec", "compile", "__import__"}
    banned_modules = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "yaml"}
    found = []
    for path in sorted((REPO / "attnbench").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                    else None
                literal = node.args and isinstance(node.args[0], ast.Constant)
                if isinstance(f, ast.Name) and name in banned_calls and not (
                        name == "__import__" and literal):  # __import__("types") names a module
                    found.append(f"{where} {name}()")
                if name == "load" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") \
                        == "torch" and not any(k.arg == "weights_only" and getattr(k.value, "value",
                                                                                  None) is True
                                               for k in node.keywords):
                    found.append(f"{where} torch.load without weights_only=True")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""]
                found += [f"{where} import {n}" for n in names if n.split(".")[0] in banned_modules]
    assert found == []


DETERMINISM_SUITE = """
name = "determinism"
seed = 7
[sweep]
n = [64, 128]
batch = [2]
heads = [2]
head_dim = [16]
[timing]
warmup = 0
warmup_s = 0.0
repeats = 2
[methods.sdpa]
[methods.naive]
[methods.performer]
nb_features = [32]
[methods.linformer]
k = [16]
projection = ["linear"]
[methods.lsh]
bucket_size = [16]
n_hashes = [2]
[methods.nystrom]
num_landmarks = [16]
[methods.local]
window = [16]
"""
ERROR_FIGURES = ("rel_err", "max_abs_err", "cosine", "baseline_rel_err")


def test_same_suite_and_seed_give_bit_identical_errors(tmp_path, write_suite):
    suite = str(write_suite(DETERMINISM_SUITE))
    runs = [rows_of(run_suite(suite, "cpu", out=tmp_path / f"o{i}", progress=False).run_dir)
            for i in range(2)]
    a, b = ({r["cell_id"]: r for r in rows} for rows in runs)
    assert a.keys() == b.keys() and len(a) == 14
    ok = [cid for cid, r in a.items() if r["status"] == "ok"]
    assert {a[cid]["method"] for cid in ok} >= {"performer", "linformer", "lsh", "nystrom"}
    for cid in a:
        assert a[cid]["status"] == b[cid]["status"], a[cid]["label"]
        for col in ERROR_FIGURES:
            assert a[cid].get(col) == b[cid].get(col), (a[cid]["label"], col)  # ==, not isclose
    assert all(a[cid]["rel_err"] > 0 for cid in ok if not a[cid]["exact"])
    record("determinism (same suite and seed, CPU)", cases=len(a), finished_before=len(ok),
           rows_lost=0, duplicates=0, differing_error_figures=0)


@pytest.mark.gpu
def test_isolated_device_side_assert_poisons_one_worker_not_the_sweep(tmp_path, write_suite, plugins):
    suite = write_suite(FAULT_SUITE.replace('[methods.t_fault]\nfault = ["segv", "exit", "hang"]\n'
                                            'n_fault = [128]\n',
                                            "[methods.t_device_assert]\n[methods.sdpa]\n"))
    outcome = run_suite(str(suite), "cuda", out=tmp_path / "o", progress=False, isolate="method",
                        timeout_s=120)
    rows = rows_of(outcome.run_dir)
    status = {(r["method"], r["n"]): r["status"] for r in rows}
    assert len(rows) == 6 and duplicates(rows) == 0
    assert status == {("t_device_assert", 64): "ok", ("t_device_assert", 128): "crashed",
                      ("t_device_assert", 256): "ok", ("sdpa", 64): "ok", ("sdpa", 128): "ok",
                      ("sdpa", 256): "ok"}, status
    crashed = next(r for r in rows if r["status"] == "crashed")
    assert "CUDA" in crashed["reason"] or "worker" in crashed["reason"]
