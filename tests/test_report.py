"""Reports on synthetic run directories with known answers: formats, escaping, baselines, --all.

``make_run`` and ``row`` build run directories the way the runner does (``ResultWriter`` rows and a
``meta.json``); the other report tests import them from here.
"""
import csv
import io
import json
import re

import pytest

from attnbench.cli import main
from attnbench.report import escape_latex, escape_md, to_latex, to_markdown, with_baseline
from attnbench.store import ResultWriter, load_results, write_json_atomic

BUDGETS = {"linformer": "k", "performer": "nb_features", "nystrom": "num_landmarks", "local": "window"}


# axes of a synthetic row beyond those its base cell id names, at their defaults
IDENTITY_DEFAULTS = {"level": "core", "batch": 1, "heads": 2, "head_dim": 16, "causal": False,
                     "batching": "fixed", "layers": 1, "ffn_dim": 0}


def row(method, n, time_ms=1.0, mem=1.0, *, status="ok", exact=None, iqr=None, samples=None,
        **kw) -> dict:
    """A result row as the runner writes it; ``params`` may hold the method's knobs."""
    params = kw.pop("params", {})
    budget = BUDGETS.get(method)
    label = method + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
    r = {"cell_id": f"{label}-{n}-{kw.get('mode', 'fwd')}-{kw.get('seed', 0)}-{kw.get('dtype', 'fp32')}",
         "suite": "synthetic", "label": label, "method": method,
         "family": "exact" if exact or method in ("sdpa", "naive") else "approx",
         "exact": method in ("sdpa", "naive") if exact is None else exact, "device": "cpu",
         "budget": budget, "budget_value": params.get(budget), "params": params, "level": "core",
         "n": n, "batch": 1, "heads": 2, "head_dim": 16, "dtype": "fp32", "mode": "fwd",
         "causal": False, "batching": "fixed", "input": {"regime": "gaussian", "qk_scale": 1.0},
         "seed": 0, "layers": 1, "ffn_dim": 0, "status": status, "reason": "", "n_samples": 5}
    r.update(kw)
    if "cell_id" not in kw:  # as the runner's ids, every axis that differs tells cells apart
        r["cell_id"] += "".join(f"-{k}={r[k]}" for k, v in IDENTITY_DEFAULTS.items() if r[k] != v)
    if status == "ok":
        r.setdefault("time_ms", time_ms)
        r.setdefault("peak_mem_mib", mem)
        r["time_ms_iqr"] = 0.02 * time_ms if iqr is None else iqr
        r["time_samples_ms"] = samples if samples is not None else [
            r["time_ms"] * f for f in (0.99, 0.995, 1.0, 1.005, 1.01)]
        r.setdefault("rel_err", 1e-7 if r["exact"] else 0.1)
    return r


def make_run(path, rows, suite="synthetic", baseline="sdpa", **meta):
    path.mkdir(parents=True, exist_ok=True)
    w = ResultWriter(path)
    for r in rows:
        w.append({**r, "suite": suite})
    w.close()
    write_json_atomic(path / "meta.json", {
        "suite": suite, "baseline": baseline, "device_type": "cpu", "state": "complete",
        "command": "attnbench run synthetic", "provenance": {"device_name": "Test CPU",
                                                             "hostname": "box", "torch": "2.x"},
        **meta})
    return path


def simple_rows(reason="", label_extra=None):
    rows = []
    for n in (256, 512, 1024):
        rows.append(row("sdpa", n, time_ms=1e-5 * n * n, mem=1e-3 * n))
        rows.append(row("naive", n, time_ms=2e-5 * n * n, mem=1e-4 * n * n))
        rows.append(row("linformer", n, time_ms=1e-3 * n, mem=5e-4 * n, params={"k": 64}))
    rows.append(row("naive", 2048, status="oom", reason=reason or "CUDA out of memory"))
    return rows


def test_default_report_prints_table_and_writes_md_csv(tmp_path, capsys):
    run = make_run(tmp_path / "run", simple_rows())
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "linformer(k=64)" in out and "crossover" in out
    md = (run / "report.md").read_text()
    assert "| method |" in md and "## Crossover against sdpa" in md
    rows = list(csv.DictReader(io.StringIO((run / "report.csv").read_text())))
    assert len(rows) == 10
    lin = [r for r in rows if r["label"] == "linformer(k=64)" and r["n"] == "1024"][0]
    assert float(lin["speedup"]) == pytest.approx(1e-5 * 1024 / 1e-3)


def test_speedup_and_mem_ratio_against_the_chosen_baseline(tmp_path):
    run = make_run(tmp_path / "run", simple_rows())
    df = with_baseline(load_results(run), "naive")
    r = df[(df["method"] == "sdpa") & (df["n"] == 512)].iloc[0]
    assert r["speedup"] == pytest.approx(2.0)
    assert r["mem_ratio"] == pytest.approx(1e-3 * 512 / (1e-4 * 512 * 512))


def test_capacity_rows_compare_per_sequence_and_max_batch(tmp_path):
    rows = [row("sdpa", 1024, time_ms=80.0, batching="capacity", max_batch=8, time_per_seq_ms=10.0),
            row("linformer", 1024, time_ms=64.0, batching="capacity", max_batch=32,
                time_per_seq_ms=2.0, params={"k": 128})]
    df = with_baseline(load_results(make_run(tmp_path / "run", rows)), "sdpa")
    lin = df[df["method"] == "linformer"].iloc[0]
    assert lin["speedup"] == pytest.approx(5.0)
    assert lin["mem_ratio"] == pytest.approx(8 / 32)


def test_unknown_baseline_is_bad_input(tmp_path, capsys):
    run = make_run(tmp_path / "run", simple_rows())
    assert main(["report", str(run), "--baseline", "flash"]) == 2
    assert "baseline 'flash' has no rows" in capsys.readouterr().err


EVIL = "<script>alert(1)</script> a|b \\ & % $ # _ { } ~ ^ *x* `c` [l](u)"


def test_markdown_escapes_markup_and_pipes(tmp_path):
    run = make_run(tmp_path / "run", simple_rows(reason=EVIL))
    md = to_markdown(run)
    assert "<script>" not in md and "&lt;script&gt;" in md
    table = md.split("\n\n")[2].splitlines()  # the results table
    assert len(table) == 12 and any("alert" in ln for ln in table)
    widths = {len(re.findall(r"(?<!\\)\|", ln)) for ln in table}
    assert len(widths) == 1, "an unescaped | broke a table row"
    assert escape_md("a|b") == "a\\|b" and escape_md("x\ny") == "x y"
    assert escape_md("time_ms") == "time_ms" and escape_md("_em_") == "\\_em\\_"


def test_latex_escapes_every_special():
    assert escape_latex("\\&%$#_{}~^") == ("\\textbackslash{}\\&\\%\\$\\#\\_\\{\\}"
                                            "\\textasciitilde{}\\textasciicircum{}")


def test_latex_report_has_no_raw_specials_from_data(tmp_path):
    run = make_run(tmp_path / "run", simple_rows(reason=EVIL))
    tex = to_latex(run)
    line = next(ln for ln in tex.splitlines() if "alert" in ln)
    assert "\\textless{}script\\textgreater{}" in line
    body = re.sub(r"\\(textbackslash|textasciitilde|textasciicircum|textless|textgreater)\{\}", "",
                  line)
    body = re.sub(r"\\[&%$#_{}]", "", body)
    assert not re.search(r"[%$#_{}~^]", body.replace(" & ", " ").rstrip("\\ ")), body
    assert "\\begin{tabular}" in tex and "\\toprule" in tex


@pytest.mark.parametrize("fmt,name", [("md", "report.md"), ("csv", "report.csv"),
                                      ("latex", "report.tex")])
def test_each_format_writes_its_file(tmp_path, capsys, fmt, name):
    run = make_run(tmp_path / "run", simple_rows())
    assert main(["report", str(run), "--format", fmt, "--out", str(tmp_path / "o")]) == 0
    text = (tmp_path / "o" / name).read_text()
    assert "linformer" in text
    if fmt != "html":
        assert "linformer" in capsys.readouterr().out


def test_table_format_prints_only(tmp_path, capsys):
    run = make_run(tmp_path / "run", simple_rows())
    assert main(["report", str(run), "--format", "table"]) == 0
    assert "linformer(k=64)" in capsys.readouterr().out
    assert not (run / "report.md").exists()


def test_all_regenerates_every_run(tmp_path, capsys):
    a = make_run(tmp_path / "res" / "s" / "a", simple_rows())
    b = make_run(tmp_path / "res" / "t" / "b", simple_rows())
    assert main(["report", "--all", str(tmp_path / "res"), "--format", "latex"]) == 0
    for run in (a, b):
        assert {p.name for p in run.iterdir()} >= {"report.md", "report.csv", "report.tex"}
    assert main(["report", "--all", str(tmp_path / "empty-nothing")]) == 2
    assert main(["report"]) == 2


def test_meta_round_trip(tmp_path):
    run = make_run(tmp_path / "run", [row("sdpa", 64)])
    assert json.loads((run / "meta.json").read_text())["baseline"] == "sdpa"


def test_speedup_range_comes_from_the_quartiles_of_both_sides(tmp_path):
    from attnbench.report import add_baseline_columns

    rows = [row("sdpa", 512, time_ms=10.0, samples=[8.0, 9.0, 10.0, 11.0, 12.0]),
            row("linformer", 512, time_ms=2.0, samples=[1.0, 1.5, 2.0, 2.5, 3.0], params={"k": 64}),
            row("local", 512, time_ms=4.0, iqr=1.0, samples=[], params={"window": 64})]
    df = add_baseline_columns(load_results(make_run(tmp_path / "run", rows)), "sdpa")
    lin = df[df["method"] == "linformer"].iloc[0]
    assert lin["speedup"] == pytest.approx(5.0)
    assert lin["speedup_lo"] == pytest.approx(9.0 / 2.5)  # baseline q1 / method q3
    assert lin["speedup_hi"] == pytest.approx(11.0 / 1.5)  # baseline q3 / method q1
    loc = df[df["method"] == "local"].iloc[0]  # no samples: median ± half its IQR
    assert loc["speedup_lo"] == pytest.approx(9.0 / 4.5) and loc["speedup_hi"] == pytest.approx(11.0 / 3.5)
    assert set(add_baseline_columns(df.iloc[:0], "sdpa").columns) >= {
        "speedup", "speedup_lo", "speedup_hi", "mem_ratio"}


def test_a_wide_speedup_range_is_marked_and_error_rows_show_no_time(tmp_path):
    from attnbench.report import table_rows

    rows = [row("sdpa", n, time_ms=10.0) for n in (256, 512)]
    rows.append(row("linformer", 256, time_ms=2.0, samples=[1.0, 1.2, 2.0, 3.0, 3.5], params={"k": 64}))
    rows.append(row("linformer", 512, time_ms=2.0, params={"k": 64}))
    bad = row("naive", 256, status="error", reason="failed after timing")
    bad.update(time_ms=5.0, time_ms_iqr=0.1, time_samples_ms=[5.0, 5.0, 5.1], tokens_per_s=1e5)
    rows.append(bad)
    df = with_baseline(load_results(make_run(tmp_path / "run", rows)), "sdpa")
    heads, body = table_rows(df)
    by = {(r[0], r[heads.index("n")]): dict(zip(heads, r)) for r in body}
    assert by[("linformer(k=64)", "256")]["speedup"] == "5~"  # 9.9/3 .. 10.1/1.2: over 1.5×
    assert by[("linformer(k=64)", "512")]["speedup"] == "5"
    err = by[("naive", "256")]
    assert err["time_ms"] == "—" and err["speedup"] == "—" and err["±iqr"] == "—"
    assert df[df["method"] == "naive"]["speedup"].isna().all()
    assert "~ the speed-up's range" in to_markdown(make_run(tmp_path / "r2", rows))


def test_out_that_is_a_file_is_bad_input_and_writes_nothing(tmp_path, capsys):
    run = make_run(tmp_path / "run", simple_rows())
    target = tmp_path / "taken"
    target.write_text("mine")
    before = sorted(p.name for p in run.iterdir())
    assert main(["report", str(run), "--out", str(target)]) == 2
    cap = capsys.readouterr()
    err = " ".join(cap.err.split())  # one message (the console wraps it at its width)
    assert cap.err.count("error:") == 1 and "is a file; give a directory" in err
    assert "Traceback" not in cap.err
    assert cap.out == ""  # nothing printed before the refusal
    assert target.read_text() == "mine" and sorted(p.name for p in run.iterdir()) == before


def test_report_on_a_read_only_run_prints_then_fails_with_a_hint(tmp_path, capsys, monkeypatch):
    import pathlib

    run = make_run(tmp_path / "run", simple_rows())
    real = pathlib.Path.write_text

    def refuse(self, *a, **kw):  # tests run as root, where chmod does not stop a write
        if self.parent == run:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "write_text", refuse)
    assert main(["report", str(run)]) == 2
    cap = capsys.readouterr()
    assert "linformer(k=64)" in cap.out and "crossover" in cap.out  # the table came first
    err = " ".join(cap.err.split())
    assert "could not write the report files to" in err and "Permission denied" in err
    assert "--out DIR" in err and "Traceback" not in cap.err
    assert not (run / "report.md").exists()
    assert main(["report", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").is_file()
