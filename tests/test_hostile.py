"""Reliability, round two: the hostile cases a probe found, each with its clear outcome.

Numbering follows the reliability issue (#26): 1-2 in test_contract.py, 8 in test_terminal.py /
test_plots_paper.py (read-only run directories), the rest here. Each fault test records its figures in
``FIGURES``; with ``ATTNBENCH_HOSTILE_JSON=path`` they are written there (the README's reliability
table is copied from that file and test_reliability.py's).
"""
import errno
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from attnbench import load_results, run_suite
from attnbench.cli import main
from attnbench.errors import BadInput, RegistryError, RunDirError
from attnbench.store import iter_rows, read_meta
from conftest import PLUGINS, TINY, cli_cmd, cli_env

HOSTILE = PLUGINS / "hostile.py"
FAULTY = PLUGINS / "faulty.py"
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def write_figures():
    yield
    target = os.environ.get("ATTNBENCH_HOSTILE_JSON")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def record(kind: str, *, cases: int, rows_lost: int = 0, duplicates: int = 0, outcome: str) -> None:
    FIGURES[kind] = {"cases": cases, "rows_lost": rows_lost, "duplicates": duplicates,
                     "outcome": outcome}


@pytest.fixture
def hostile():
    from attnbench.registry import REGISTRY, load_plugin_file

    for path, name in ((HOSTILE, "t_sysexit"), (FAULTY, "t_boom")):
        if name not in REGISTRY:
            load_plugin_file(path)


def ids(run_dir) -> list[str]:
    return [r["cell_id"] for r in iter_rows(run_dir)]


def only_run(tmp_path) -> Path:
    (run,) = [p.parent for p in tmp_path.rglob("meta.json")]
    return run


# 3. repeated axis and param values ---------------------------------------------------------------

@pytest.mark.parametrize("extra,methods,what", [
    ("", "[methods.sdpa]\n", None),
    ("", "[methods.linformer]\nk = [32, 32]\n", "32 is listed twice"),
    ("", "[methods.sdpa]\n[inputs.g]\nregime = \"gaussian\"\nqk_scale = [0.5, 0.5]\n", "listed twice"),
    ("", "[[methods.sdpa]]\n[[methods.sdpa]]\n", "planned twice"),
])
def test_repeated_values_are_bad_input(write_suite, tmp_path, capsys, extra, methods, what):
    text = TINY + methods
    if what is None:  # the batch axis, repeated
        text = text.replace("batch = [1]", "batch = [1, 1]")
        what = "1 is listed twice"
    suite = write_suite(text)
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert what in err, err
    assert not (tmp_path / "o").exists()
    record("repeated axis or param values", cases=4, outcome="exit 2 naming the value; nothing "
           "written")


# 4. BaseExceptions from a method, and a raising on_row ------------------------------------------

@pytest.mark.parametrize("method,kind", [("t_sysexit", "SystemExit"), ("t_homemade", "HomeMade")])
def test_base_exception_in_a_method_is_an_error_row(tiny_suite, tmp_path, hostile, method, kind):
    suite = tiny_suite(f"[methods.{method}]\n[methods.sdpa]\n")
    outcome = run_suite(str(suite), "cpu", out=tmp_path, progress=False)
    rows = {(r["method"], r["n"]): r for r in iter_rows(outcome.run_dir)}
    assert rows[(method, 64)]["status"] == "ok"
    assert rows[(method, 128)]["status"] == "error" and kind in rows[(method, 128)]["reason"]
    assert rows[("sdpa", 128)]["status"] == "ok"  # the sweep went on
    meta = read_meta(outcome.run_dir)
    assert meta["state"] == "complete" and meta["cells_missing"] == 0 and outcome.exit_code == 1
    record(f"{kind} raised by a method, no --isolate", cases=1,
           outcome="error row naming it; the sweep goes on; exit 1")


def test_keyboard_interrupt_from_a_method_interrupts_the_run_resumably(tiny_suite, tmp_path,
                                                                        hostile):
    suite = tiny_suite("[methods.t_keyboard]\n[methods.sdpa]\n")
    outcome = run_suite(str(suite), "cpu", out=tmp_path, progress=False)
    meta = read_meta(outcome.run_dir)
    assert outcome.interrupted and outcome.exit_code == 130
    assert meta["state"] == "interrupted" and meta["cells_missing"] == 3
    assert len(ids(outcome.run_dir)) == 1


def test_raising_on_row_never_leaves_a_complete_run_with_cells_missing(tiny_suite, tmp_path):
    suite = tiny_suite("[methods.sdpa]\n[methods.naive]\n")

    def on_row(row):
        raise ValueError("callback bug")

    with pytest.raises(ValueError, match="callback bug"):
        run_suite(str(suite), "cpu", out=tmp_path, progress=False, on_row=on_row)
    run = only_run(tmp_path)
    meta = read_meta(run)
    assert meta["state"] == "interrupted" and "callback bug" in meta["interrupted_by"]
    assert meta["cells_missing"] == 3 and len(ids(run)) == 1
    done = run_suite(None, "cpu", resume=run, progress=False)
    assert done.exit_code == 0 and sorted(ids(run)) == sorted(set(ids(run))) and len(ids(run)) == 4
    record("raising on_row callback (API)", cases=1, outcome="exception re-raised; meta "
           "interrupted; resume completes")


# 5. any number of signals ends as one ------------------------------------------------------------

def _start_cli(args, tmp_path):
    return subprocess.Popen(cli_cmd(*args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("isolate", [True, False])
def test_a_burst_of_sigints_ends_as_one_interruption(write_suite, tmp_path, isolate):
    suite = write_suite(TINY.replace("n = [64, 128]", "n = [64, 128, 256, 512]") +
                        "[methods.t_slow]\n[methods.sdpa]\n")
    out = tmp_path / "out"
    args = ["--plugin", str(FAULTY), "run", str(suite), "--out", str(out), "--no-progress"]
    proc = _start_cli(args + (["--isolate"] if isolate else []), tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.rglob("results.jsonl")):
        time.sleep(0.1)
    results = list(out.rglob("results.jsonl"))
    assert results, "the run never started"
    while time.monotonic() < deadline and not results[0].read_text():
        time.sleep(0.1)  # one cell done: workers exist (isolated) and a sweep is under way
    for _ in range(5):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    assert "run --resume" in stdout
    run = results[0].parent
    assert read_meta(run)["state"] == "interrupted"
    rc = subprocess.run(cli_cmd("--plugin", str(FAULTY), "run", "--resume", str(run),
                                "--no-progress"), cwd=tmp_path, env=cli_env(),
                        capture_output=True, text=True, timeout=300).returncode
    assert rc == 0 and len(ids(run)) == len(set(ids(run))) == 8
    record(f"five SIGINTs 10 ms apart{', --isolate' if isolate else ''}", cases=1,
           outcome="exit 130, meta interrupted, hint printed; resume completes")


# 6. resume refuses another suite ------------------------------------------------------------------

def test_resume_refuses_a_swapped_suite_file(tiny_suite, tmp_path, capsys):
    outcome = run_suite(str(tiny_suite("[methods.sdpa]\n")), "cpu", out=tmp_path, progress=False)
    saved = outcome.run_dir / "suite.toml"
    saved.write_text(saved.read_text().replace("n = [64, 128]", "n = [64, 128, 256]"))
    before = ids(outcome.run_dir)
    assert main(["run", "--resume", str(outcome.run_dir), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is not the suite this run started with" in err and "meta.json records" in err
    assert ids(outcome.run_dir) == before
    record("--resume with a swapped suite.toml", cases=1, outcome="exit 2 naming both hashes")


# 7. a full disk ----------------------------------------------------------------------------------

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_mid_sweep_stops_resumably_with_exit_3(tiny_suite, tmp_path, monkeypatch):
    from attnbench.store import ResultWriter

    suite = tiny_suite("[methods.sdpa]\n[methods.naive]\n")
    real_append, calls = ResultWriter.append, []

    def append(self, row):
        calls.append(row["cell_id"])
        if len(calls) == 3:
            _enospc()
        return real_append(self, row)

    monkeypatch.setattr(ResultWriter, "append", append)
    outcome = run_suite(str(suite), "cpu", out=tmp_path, progress=False)
    assert outcome.exit_code == 3 and "No space left" in outcome.write_failed
    meta = read_meta(outcome.run_dir)
    assert meta["state"] == "interrupted" and meta["cells_missing"] == 2
    monkeypatch.setattr(ResultWriter, "append", real_append)
    done = run_suite(None, "cpu", resume=outcome.run_dir, progress=False)
    assert done.exit_code == 0 and len(ids(outcome.run_dir)) == len(set(ids(outcome.run_dir))) == 4
    record("disk full after 2 rows (ENOSPC injected)", cases=1,
           outcome="exit 3, meta interrupted, hint; resume completes")


def test_disk_full_before_the_run_leaves_nothing_behind(tiny_suite, tmp_path, monkeypatch):
    import attnbench.runner as runner

    monkeypatch.setattr(runner, "write_json_atomic", _enospc)
    with pytest.raises(RunDirError, match="No space left on device; nothing was run"):
        run_suite(str(tiny_suite("[methods.sdpa]\n")), "cpu", out=tmp_path, progress=False)
    assert not list((tmp_path / "tiny").iterdir())  # the half-made run directory is gone


def test_a_report_that_cannot_be_written_never_fails_a_finished_run(tiny_suite, tmp_path,
                                                                   monkeypatch, capsys):
    import attnbench.report as report

    monkeypatch.setattr(report, "write_reports", _enospc)
    suite = tiny_suite("[methods.sdpa]\n")
    assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "report files not written: No space left on device" in out
    record("report files unwritable after a finished run", cases=1, outcome="warning, exit 0")


def test_file_size_limit_in_a_real_process(write_suite, tmp_path):
    """A real write failure: RLIMIT_FSIZE makes every write past 3,000 bytes of a file fail (EFBIG),
    as a full disk would, in a real process (SIGXFSZ ignored so the write returns the error). Rows
    are about 1.3 KB: two fit, the third does not; meta.json (1.5 KB) stays writable."""
    suite = write_suite(TINY + "[methods.sdpa]\n[methods.naive]\n")
    out = tmp_path / "out"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    proc = subprocess.run(cli_cmd("run", str(suite), "--out", str(out), "--no-progress"),
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "File too large" in proc.stdout and "run --resume" in proc.stdout
    run = only_run(out)
    assert read_meta(run)["state"] == "interrupted" and 1 <= len(ids(run)) <= 2
    done = subprocess.run(cli_cmd("run", "--resume", str(run), "--no-progress"), cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = ids(run)
    assert len(rows) == len(set(rows)) == 4
    record("file-size limit (RLIMIT_FSIZE 3,000 B: a real EFBIG on the third row)", cases=1,
           outcome="exit 3, meta interrupted, hint; resume completes")


# 9. huge and deeply nested suites --------------------------------------------------------------

def test_dry_run_of_a_huge_suite_prints_a_count_and_a_bounded_preview(write_suite, capsys):
    ns = ", ".join(str(64 * i) for i in range(1, 201))
    suite = write_suite(f'name = "huge"\n[sweep]\nn = [{ns}]\nbatch = [1, 2, 3, 4, 5]\n'
                        "heads = [1, 2, 4, 8]\nhead_dim = [16, 32]\n[methods.sdpa]\n[methods.naive]\n")
    assert main(["run", str(suite), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "16000 cells on cpu" in " ".join(out.split())
    assert "15976 more cells" in " ".join(out.split())
    assert len(out.splitlines()) < 60
    record("dry run of a 16,000-cell suite", cases=1, outcome="count and a 24-row preview")


def test_deeply_nested_values_are_bad_input(write_suite, capsys):
    suite = write_suite('name = "deep"\n[sweep]\nn = ' + "[" * 600 + "1" + "]" * 600 +
                        "\n[methods.sdpa]\n")
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and len(err.splitlines()) <= 3


# 10. valid JSON, malformed rows ------------------------------------------------------------------

MALFORMED = ['{"hello": 1}', '{"cell_id": "x", "method": "sdpa", "n": 64}',
             '{"cell_id": "y", "status": "ok", "method": "sdpa", "n": "abc"}', '[1, 2]', '"row"']


def test_malformed_rows_are_set_aside_and_nothing_crashes(tiny_suite, tmp_path, capsys):
    outcome = run_suite(str(tiny_suite("[methods.sdpa]\n[methods.linformer]\nk = [32]\n")), "cpu",
                        out=tmp_path, progress=False)
    results = outcome.run_dir / "results.jsonl"
    lines = results.read_text().splitlines()
    victim = json.loads(lines[1])
    broken = {k: v for k, v in victim.items() if k != "status"}  # a real row without its status
    results.write_text("\n".join([lines[0], *MALFORMED, json.dumps(broken), *lines[2:]]) + "\n")
    with pytest.warns(UserWarning, match=r"results.jsonl:2: .*set aside"):
        df = load_results(outcome.run_dir)
    assert len(df) == 3 and df["n"].dtype.kind == "i"
    for argv in (["report", str(outcome.run_dir)], ["report", str(outcome.run_dir), "--format",
                                                     "html"],
                 ["plot", str(outcome.run_dir), "--kind", "scaling", "--format", "png"],
                 ["compare", str(outcome.run_dir), str(outcome.run_dir)]):
        assert main(argv) == 0, argv
    capsys.readouterr()
    done = run_suite(None, "cpu", resume=outcome.run_dir, progress=False)
    assert done.exit_code == 0
    good = [r for r in iter_rows(outcome.run_dir)]
    assert sorted(r["cell_id"] for r in good) == sorted({r["cell_id"] for r in good})
    assert victim["cell_id"] in {r["cell_id"] for r in good} and len(good) == 4
    record("valid-JSON malformed rows (7 kinds) in results.jsonl", cases=7,
           outcome="set aside with a warning naming the line; reports, plots, compare work; "
                   "resume re-runs the damaged cell")


def test_results_file_that_is_a_directory_is_bad_input(tiny_suite, tmp_path, capsys):
    outcome = run_suite(str(tiny_suite("[methods.sdpa]\n")), "cpu", out=tmp_path, progress=False)
    results = outcome.run_dir / "results.jsonl"
    results.unlink()
    results.mkdir()
    for argv in (["run", "--resume", str(outcome.run_dir)], ["report", str(outcome.run_dir)]):
        assert main(argv) == 2
        assert "results.jsonl is not a file" in " ".join(capsys.readouterr().err.split())


def test_torn_row_warning_is_printed_once(tiny_suite, tmp_path):
    outcome = run_suite(str(tiny_suite("[methods.sdpa]\n")), "cpu", out=tmp_path, progress=False)
    path = outcome.run_dir / "results.jsonl"
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0], text[1][:40], text[1]]) + "\n")  # a corrupt middle line
    proc = subprocess.run(cli_cmd("report", str(outcome.run_dir)), env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stderr.count("results.jsonl:2") == 1, proc.stderr


# 11. bad input that used to be accepted ----------------------------------------------------------

@pytest.mark.parametrize("edit,methods,what", [
    (None, "[methods.linformer]\nk = [0]", "expected a value >= 1"),
    (None, "[methods.linformer]\nk = [-4]", "expected a value >= 1"),
    (None, "[methods.local]\nwindow = [0]", "expected a value >= 1"),
    (("n = [64, 128]", "n = {}"), "[methods.sdpa]", "no values for cpu"),
    (("n = [64, 128]", "n = {cuda = [64]}"), "[methods.sdpa]", "no values for cpu"),
    (("[sweep]", "seed = 100000000000000000000000\n[sweep]"), "[methods.sdpa]", "seed = "),
    (("heads = [2]", "heads = [9223372036854775807]"), "[methods.sdpa]", "at most 2147483647"),
])
def test_bad_values_are_exit_2(write_suite, tmp_path, capsys, edit, methods, what):
    suite = write_suite((TINY.replace(*edit) if edit else TINY) + methods + "\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert what in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "o").exists()
    record("bad values: k <= 0, window 0, empty or other-device n, huge seed and heads", cases=7,
           outcome="exit 2 naming the value and what is allowed")


@pytest.mark.parametrize("value", ["-5", "nan", "inf"])
def test_bad_capacity_limit_is_exit_2(tiny_suite, tmp_path, capsys, value):
    suite = tiny_suite("[methods.sdpa]\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"),
                 f"--capacity-limit-mib={value}"]) == 2
    assert "--capacity-limit-mib" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["", "a,b", "two\nlines", "x y", "lin*"])
def test_unusable_method_names_are_refused(name):
    from attnbench.registry import NoParams, Registry, register_method

    with pytest.raises(RegistryError, match="printable characters"):
        register_method(name, family="other", exact=False, params=NoParams,
                        registry=Registry())(lambda p, ctx: None)


# 12. silent no-ops ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,what", [
    (["--only", ""], "empty method name"),
    (["--only", "sdpa,"], "empty method name"),
    (["--only", "sdpa", "--skip", "sdpa"], "select no cell"),
    (["--only", "nosuch"], "Unknown method 'nosuch'"),
    (["--only", "nosuch*"], "matches no method"),
])
def test_selections_that_select_nothing_are_exit_2(tiny_suite, tmp_path, capsys, flags, what):
    suite = tiny_suite("[methods.sdpa]\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--no-progress", *flags]) == 2
    assert what in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "o").exists()
    record("--only '' / 'x,' / X --skip X / unknown / unmatched wildcard", cases=5,
           outcome="exit 2 naming what exists; nothing written")


def test_only_names_a_method_the_suite_lacks_and_it_runs(tiny_suite, tmp_path, capsys):
    suite = tiny_suite("[methods.sdpa]\n")
    assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress", "--only",
                 "sdpa,naive"]) == 0
    df = load_results(only_run(tmp_path))
    assert sorted(set(df["method"])) == ["naive", "sdpa"] and len(df) == 4


def test_plugin_exiting_at_import_is_exit_2(tiny_suite, tmp_path, capsys):
    suite = tiny_suite("[methods.sdpa]\n")
    assert main(["--plugin", str(PLUGINS / "exits_at_import.py"), "run", str(suite), "--out",
                 str(tmp_path / "o")]) == 2
    assert "called sys.exit(0)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# 13. the Python API ----------------------------------------------------------------------------------

def test_api_arguments_get_clear_errors(tiny_suite, tmp_path, monkeypatch):
    suite = str(tiny_suite("[methods.sdpa]\n[methods.naive]\n"))
    outcome = run_suite(suite, "cpu", out=tmp_path / "a", only="sdpa", progress=False)
    assert set(load_results(outcome.run_dir)["method"]) == {"sdpa"}
    with pytest.raises(BadInput, match="timeout-s '5'"):
        run_suite(suite, "cpu", out=tmp_path / "b", timeout_s="5")
    with pytest.raises(RegistryError, match="no such file"):
        run_suite(suite, "cpu", out=tmp_path / "c", plugins=["/nope.py"], isolate="method")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    monkeypatch.chdir(tmp_path)
    assert run_suite(suite, "cpu", out=None, progress=False).run_dir.parts[-3] == "results"
    with pytest.raises(RunDirError, match="expected a run directory"):
        load_results(None)
    record("API: only='sdpa', timeout_s='5', out=None, load_results(None), missing plugin",
           cases=5, outcome="works as meant, or one clear error before anything runs")


# 14. smaller ---------------------------------------------------------------------------------------

def test_error_lines_stay_one_line_in_logs(tmp_path):
    proc = subprocess.run(cli_cmd("run", "x" * 150 + ".toml"), env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_resume_without_plugin_names_the_plugin_files(tmp_path, write_suite, capsys):
    suite = write_suite(TINY + "[methods.t_boom]\n")
    proc = subprocess.run(cli_cmd("--plugin", str(FAULTY), "run", str(suite), "--out",
                                  str(tmp_path / "o"), "--no-progress"),
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = only_run(tmp_path / "o")
    proc = subprocess.run(cli_cmd("run", "--resume", str(run)), env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert f"--plugin {FAULTY}" in " ".join(proc.stderr.split())


@pytest.mark.parametrize("flags,what", [(["--rounds", "0"], "--rounds 0"),
                                        (["--timeout-s", "-1"], "--timeout-s -1"),
                                        (["--retry-noisy", "500"], "--retry-noisy 500")])
def test_dry_run_rejects_the_options_a_run_rejects(flags, what, capsys):
    """A dry run answers "what would this command do": for options the run refuses, that is exit 2
    with the same message, not a plan."""
    assert main(["run", "quick", "--dry-run", *flags]) == 2
    assert what in capsys.readouterr().err
