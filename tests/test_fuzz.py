"""Fuzzing suite files: generated and mutated TOML goes to ``validate`` and ``run --dry-run``. The
outcome is always a valid plan (exit 0) or one clear line with exit 2, never a traceback.

Two tests of 300 examples each (600 suites, both verbs on every one) run in well under a minute.
"""
import contextlib
import dataclasses
import io
import json
import math
import re
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnbench.cli import main
from attnbench.inputs import REGIMES
from attnbench.registry import REGISTRY
from conftest import REPO

EXAMPLES = 300
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
STATS = {"generated": 0, "mutated": 0, "valid": 0, "rejected": 0}


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_str(key)


def toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            out.append("?")  # not a Unicode scalar: TOML can't hold it
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_doc(doc: dict) -> str:
    """Scalars first, then one ``[table]`` per dict (nested dicts inline), as people write suites."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_key(k)}]")
            lines += [f"{toml_key(a)} = {toml_value(b)}" for a, b in v.items()]
    return "\n".join(lines) + "\n"


scalar = st.one_of(st.integers(-3, 2**40), st.booleans(), st.floats(allow_nan=True),
                   st.text(max_size=6), st.sampled_from(["fp32", "cuda", "core", "fwd", "sdpa"]))
# containers first: hypothesis draws the first alternatives of one_of more often
junk = st.one_of(st.lists(scalar, max_size=3), st.dictionaries(st.text(max_size=4), scalar,
                                                               max_size=2), scalar)


def rare(k: int) -> st.SearchStrategy:
    """True about once in k + 1 draws (hypothesis favours the ends of a range: use its middle)."""
    return st.integers(0, k).map(lambda i: i == k // 2)


AXES = {"n": [16, 32, 64, 100, 0, -1], "batch": [1, 2], "heads": [1, 2], "head_dim": [8, 16, 7],
        "dtype": ["fp32", "bf16", "fp16", "fp64", "int8"], "mode": ["fwd", "fwd_bwd", "bwd"],
        "causal": [False, True, 0], "level": ["core", "layer", "model", "token"],
        "batching": ["fixed", "capacity"]}
# Each example spoils at most two places and keeps the rest valid, so that every check of the
# validator (they run in order and stop at the first problem) is reached about equally often.
PLACES = ("name", "version", "seed", "description", "baseline", "sweep", "axis", "device_axis",
          "methods", "method_name", "params", "param_grid", "inputs", "regime", "regime_params",
          "timing", "error", "model", "top")


def axis(valid: list, spoil: bool, per_device: bool) -> st.SearchStrategy:
    anything = st.sampled_from(valid)
    if per_device:
        return st.fixed_dictionaries({}, optional={
            "cpu": st.lists(anything if spoil else st.sampled_from(valid[:2]), min_size=1,
                            max_size=2), "cuda": junk if spoil else st.lists(anything, max_size=2)})
    if spoil:
        return st.one_of(anything, st.lists(anything, max_size=2), junk)
    return st.lists(st.sampled_from(valid[:2]), min_size=1, max_size=2)


def param_values(tp, spoil: bool) -> st.SearchStrategy:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        good = st.sampled_from(typing.get_args(tp))
    elif tp is bool:
        good = st.booleans()
    elif tp is int:
        good = st.integers(1, 64)
    elif tp is float:
        good = st.floats(0.1, 10)
    elif origin in (tuple, list):
        good = st.lists(st.integers(1, 64), max_size=3)
    else:
        good = scalar
    if spoil:
        return st.one_of(junk, st.integers(-2**63, 2**63 - 1), st.just(math.nan),
                         st.lists(junk, max_size=2), st.lists(st.lists(good, max_size=2), max_size=2))
    return st.one_of(good, st.lists(good, min_size=1, max_size=2))


@st.composite
def params_for(draw, cls, spoil: bool = False, grid: bool = False) -> dict:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=3)) if names else []
    table = {k: draw(param_values(hints[k], spoil)) for k in chosen}
    if grid and spoil:
        table[draw(st.sampled_from(["zz", "", "k k"]))] = draw(junk)
    return table


@st.composite
def suites(draw) -> dict:
    bad = draw(st.sets(st.sampled_from(PLACES), max_size=2))

    def pick(place, good, spoilt=junk):
        return draw(spoilt if place in bad else good)

    names = [n for n in REGISTRY.names() if not n.startswith(("t_", "../"))]
    doc: dict = {"name": pick("name", st.sampled_from(["fuzz", "a.b-c_1"]), st.one_of(
        st.sampled_from(["../x", "", ".", "a/b", "-x", "x" * 65]), st.text(max_size=70), junk))}
    for key, value in (("version", st.integers(0, 3)), ("seed", st.integers(0, 2**63 - 1)),
                       ("description", st.text(max_size=10)),
                       ("baseline", st.sampled_from(["sdpa", "naive"]))):
        if key in bad or draw(st.booleans()):
            doc[key] = pick(key, value, st.one_of(junk, st.sampled_from(["nope", "linformer", -1])))
    sweep = {k: draw(axis(v, "axis" in bad, "device_axis" in bad and k != "n"))
             for k, v in AXES.items() if k == "n" or draw(rare(3))}
    doc["sweep"] = pick("sweep", st.just(sweep), st.one_of(junk, st.just({"batch": [1]})))
    methods = {}
    for mname in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        params = REGISTRY.get(mname).params
        if "param_grid" in bad:
            methods[mname] = draw(st.lists(params_for(params, "params" in bad), max_size=2))
        else:
            methods[mname] = draw(params_for(params, "params" in bad, grid=True))
    if "method_name" in bad:
        methods[draw(st.sampled_from(["nope", "../../x", "", "SDPA"]))] = draw(junk)
    doc["methods"] = pick("methods", st.just(methods), st.one_of(junk, st.just({})))
    if {"inputs", "regime", "regime_params"} & bad or draw(rare(2)):
        regime = pick("regime", st.sampled_from(sorted(REGIMES)), st.one_of(junk, st.just("nope")))
        table = {"regime": regime}
        if isinstance(regime, str) and regime in REGIMES:
            table.update(draw(params_for(REGIMES[regime].params, "regime_params" in bad, grid=True)))
        label = draw(st.sampled_from(["g", "x y", ""]))
        doc["inputs"] = pick("inputs", st.just({label: table}), st.one_of(
            junk, st.just({label: 3}), st.just({})))
    for key, fields in (("timing", ["warmup", "warmup_s", "repeats", "max_time_s", "cuda_graphs"]),
                        ("error", ["enabled", "max_n"]), ("model", ["layers", "ffn_dim"])):
        if key in bad:
            doc[key] = draw(st.one_of(junk, st.dictionaries(st.sampled_from(fields + ["zz"]), junk,
                                                            max_size=2)))
        elif draw(rare(3)):
            doc[key] = {f: (True if f in ("enabled",) else False if f == "cuda_graphs" else 1)
                        for f in draw(st.lists(st.sampled_from(fields), max_size=2))}
    if "top" in bad:
        doc[draw(st.text(max_size=5))] = draw(junk)
    return doc


# small built-in suites (a dry run prints every cell: the 1000-cell ones would only slow fuzzing down)
SEEDS = [p.read_text() for p in sorted((REPO / "suites").glob("*.toml"))
         if p.stem in ("quick", "peers", "linformer_table3")] + ["""
name = "seed"
baseline = "sdpa"
[sweep]
n = [64, 128]
dtype = {cpu = ["fp32"], cuda = ["bf16"]}
[inputs.peaked]
regime = "peaked"
planted = [2, 4]
[[methods.linformer]]
k = [16]
[[methods.linformer]]
sharing = "layerwise"
[methods.performer]
nb_features = [8]
"""]
TOKENS = ["[", "]", "[[", "]]", "{", "}", "=", '"', "'", ",", "\n", "#", ".", "-", "0", "1e400",
          "nan", "true", "[methods.", "n = ", "\\u0000", "\x00", "é", "🙂", "\\", "  ", "[sweep]"]


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 12)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "dup_line", "swap_lines"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op in ("insert", "replace"):
            tok = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)))
            text = text[:i] + tok + (text[i:] if op == "insert" else text[j:])
        else:
            lines = text.splitlines(keepends=True)
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "dup_line":
                lines.insert(a, lines[b])
            else:
                lines[a], lines[b] = lines[b], lines[a]
            text = "".join(lines)
    return text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def check(path: Path, out: Path) -> None:
    """Both verbs agree, exit 0 or 2, and a 2 is one ``error:`` message, not a traceback."""
    codes = []
    for argv in (["validate", str(path)], ["run", str(path), "--dry-run", "--out", str(out)]):
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = main(argv)  # an exception escaping main is the failure hypothesis reports
        err = stderr.getvalue()
        assert rc in (0, 2), (argv[0], rc, err)
        assert "Traceback" not in err + stdout.getvalue()
        if rc == 2:
            assert err.startswith("error: ") and len(err) < 4000, err
        codes.append(rc)
    assert codes[0] == codes[1], codes  # validate and the dry run judge a suite the same way
    assert not out.exists()  # a dry run writes nothing
    STATS["valid" if codes[0] == 0 else "rejected"] += 1


@SETTINGS
@given(doc=suites())
def test_generated_suites_validate_or_fail_cleanly(workdir, doc):
    path = workdir / "gen.toml"
    path.write_text(toml_doc(doc), encoding="utf-8")
    check(path, workdir / "out")
    STATS["generated"] += 1


@SETTINGS
@given(text=mutated())
def test_mutated_suite_files_validate_or_fail_cleanly(workdir, text):
    path = workdir / "mut.toml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    check(path, workdir / "out")
    STATS["mutated"] += 1


def test_fuzzing_reached_both_outcomes():
    """The fuzzers above must have produced valid suites and rejected ones, not only one kind
    (run after them; alone it checks nothing and is skipped)."""
    if STATS["generated"] + STATS["mutated"] == 0:
        pytest.skip("run with the fuzz tests")
    assert STATS["generated"] >= EXAMPLES and STATS["mutated"] >= EXAMPLES, STATS
    assert STATS["valid"] >= 20 and STATS["rejected"] >= 100, STATS
    print(json.dumps(STATS))
