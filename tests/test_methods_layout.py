"""How the method families are laid out (issue #20, "methods own their specifics"): every module under
methods/ opens with a short docstring naming its paper or what it is, no source file of methods/ or
attnbench/ grows past MAX_LINES, Triton kernels live with their family, and every family package is
listed for the wheel. Each check is a function of its inputs, and a test plants a violation of each."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from conftest import REPO

from attnbench.registry import REGISTRY

METHODS = REPO / "methods"
MAX_LINES = 450
MAX_DOC_LINES = 15
ARXIV = re.compile(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}")

# Files allowed past MAX_LINES, each with its reason. An entry whose file no longer needs it fails
# test_no_source_file_is_too_long: drop it then.
LONG_FILES: dict[str, str] = {}  # path -> why it may stay over the limit (none today)


def sources(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if ".venv" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def families(root: Path = METHODS) -> list[str]:
    """The families: the modules and packages directly under ``root``."""
    return sorted({p.stem for p in root.glob("*.py") if p.name != "__init__.py"}
                  | {p.parent.name for p in root.glob("*/__init__.py")})


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def too_long(paths: list[Path], limit: int = MAX_LINES, allowed: dict[str, str] = {},
             base: Path = REPO) -> list[str]:
    """Files over ``limit`` lines that ``allowed`` does not name, and names in ``allowed`` that are
    within the limit (or gone): both must be fixed. Names are relative to ``base``."""
    over = {p.relative_to(base).as_posix(): line_count(p) for p in paths if line_count(p) > limit}
    return ([f"{name}: {count} lines > {limit}" for name, count in sorted(over.items())
             if name not in allowed]
            + [f"{name}: listed in LONG_FILES but within {limit} lines (or gone): drop the entry"
               for name in sorted(allowed) if name not in over])


def doc_problem(path: Path, names: tuple[str, ...] = ()) -> str | None:
    """What is wrong with a module's docstring: missing, longer than MAX_DOC_LINES, or naming no arXiv
    paper (``names``: the words a module without a paper of its own must contain instead)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not doc:
        return "no module docstring"
    if (lines := len(doc.splitlines())) > MAX_DOC_LINES:
        return f"docstring of {lines} lines > {MAX_DOC_LINES}: notes and timings go to results/README.md"
    if names:
        missing = [n for n in names if n not in doc]
        return f"docstring does not name {missing}" if missing else None
    return None if ARXIV.search(doc) else "docstring names no paper (https://arxiv.org/abs/...)"


def doc_problems(root: Path = METHODS) -> list[str]:
    """Every module under ``root``; its ``__init__.py`` lists the families instead of a paper."""
    out = []
    for path in sources(root):
        names = tuple(families(root)) if path == root / "__init__.py" else ()
        if (why := doc_problem(path, names)) is not None:
            out.append(f"{rel(path)}: {why}")
    return out


def test_method_modules_have_short_docstrings_naming_their_paper():
    assert not doc_problems(), "\n".join(doc_problems())


def test_a_module_wrapping_a_package_names_it():
    """A built-in whose method needs an optional package (the peers, xformers, fla) names the package
    it wraps in its module's docstring (as pip spells it, or as it is imported)."""
    import sys

    missing = []
    for spec in REGISTRY.specs():
        module = spec.factory.__module__
        if not module.startswith("attnbench.methods.") or not spec.requires:
            continue
        doc = sys.modules[module].__doc__ or ""
        package = spec.requires[0]
        if package not in doc and package.replace("_", "-") not in doc:
            missing.append(f"{spec.name} ({module}) does not name {package}")
    assert not missing, missing


def test_no_source_file_is_too_long():
    problems = too_long(sources(REPO / "attnbench", METHODS), allowed=LONG_FILES)
    assert not problems, "\n".join(problems)


def test_triton_kernels_live_with_their_family():
    """Triton kernels belong to a method family (methods/<family>/): attnbench/ keeps only the shared
    availability checks (attnbench.kernels), which never import Triton at module level."""
    offenders = [rel(p) for p in sources(REPO / "attnbench")
                 if re.search(r"^\s*import triton|^\s*from triton", p.read_text(encoding="utf-8"), re.M)]
    assert not offenders, offenders
    kernel_modules = [p for p in sources(METHODS)
                      if "import triton.language" in p.read_text(encoding="utf-8")]
    assert kernel_modules and all(p.parent != METHODS for p in kernel_modules)


def test_every_family_package_ships_in_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {"attnbench.methods." + p.parent.name for p in METHODS.glob("*/__init__.py")}
    assert packages and packages <= listed, sorted(packages - listed)


# the checks catch what they are for (planted violations)

def test_the_checks_catch_a_grown_file_a_stale_exception_and_a_bad_docstring(tmp_path):
    short = tmp_path / "short.py"
    short.write_text('"""A method (https://arxiv.org/abs/2006.04768)."""\n' + "x = 1\n" * 10)
    grown = tmp_path / "grown.py"
    grown.write_text("x = 1\n" * MAX_LINES)
    assert too_long([short, grown], base=tmp_path) == []
    grown.write_text(grown.read_text() + "x = 2\n")  # one line more
    assert too_long([short, grown], base=tmp_path) == [f"grown.py: {MAX_LINES + 1} lines > {MAX_LINES}"]
    assert too_long([short, grown], base=tmp_path, allowed={"grown.py": "why"}) == []
    assert too_long([short, grown], base=tmp_path, allowed={"short.py": "why", "grown.py": "why"}) == [
        f"short.py: listed in LONG_FILES but within {MAX_LINES} lines (or gone): drop the entry"]

    assert doc_problem(short) is None
    long_doc = tmp_path / "long_doc.py"
    title = '"""Title https://arxiv.org/abs/2006.04768\n'
    long_doc.write_text(title + "more\n" * (MAX_DOC_LINES - 1) + '"""\n')
    assert doc_problem(long_doc) is None
    long_doc.write_text(title + "more\n" * MAX_DOC_LINES + '"""\n')  # one line more
    assert f"docstring of {MAX_DOC_LINES + 1} lines" in doc_problem(long_doc)
    no_paper = tmp_path / "no_paper.py"
    no_paper.write_text('"""A method without a link to https://arxiv.org/."""\n')
    assert "names no paper" in doc_problem(no_paper)
    assert "does not name" in doc_problem(no_paper, ("performer-pytorch",))
    assert doc_problem(no_paper, ("method",)) is None
    (tmp_path / "bare.py").write_text("x = 1\n")
    assert doc_problem(tmp_path / "bare.py") == "no module docstring"


def test_too_long_reports_real_files_past_the_limit_and_stale_entries():
    """On this repository's own files: a limit below the longest file flags it, and an exception for
    a file within the limit is reported as stale."""
    paths = sources(METHODS)
    longest = max(paths, key=line_count)
    assert any(rel(longest) in p for p in too_long(paths, limit=line_count(longest) - 1))
    assert too_long(paths, limit=line_count(longest)) == []
    stale = too_long(paths, allowed={rel(longest): "test"})
    assert stale == [f"{rel(longest)}: listed in LONG_FILES but within {MAX_LINES} lines (or gone): drop "
                     "the entry"]
