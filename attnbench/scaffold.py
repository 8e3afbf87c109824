"""``attnbench new-method NAME``: a plugin, a suite and a test for a new method, which pass
``attnbench check`` as written.

The plugin (``NAME.py``) registers NAME with a params dataclass, its capabilities, a constraint, a
budget knob and a limiting case: a small but real method (softmax attention over the first k keys,
exact at k = n) to replace with one's own. ``NAME.toml`` is a CPU-sized suite running it beside
``sdpa``; ``test_NAME.py`` asserts the limiting case and the conformance check under pytest.
"""
from __future__ import annotations

import importlib.util
import keyword
import re
import sys
from importlib import resources
from pathlib import Path
from string import Template

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
FILES = {"method.py.tmpl": "{name}.py", "suite.toml.tmpl": "{name}.toml", "test.py.tmpl": "test_{name}.py"}


def class_name(name: str) -> str:
    """``my_attn`` -> ``MyAttn``: the prefix of the generated params and module classes."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a new method, or None."""
    from attnbench.registry import REGISTRY

    if not NAME.match(name):
        return (f"method name {name!r} must start with a letter and hold only letters, digits and "
                f"underscores (at most 64)")
    if keyword.iskeyword(name):
        return f"method name {name!r} is a Python keyword"
    if name in REGISTRY:
        return f"method name {name!r} is taken by {REGISTRY.get(name).origin}"
    if name in sys.stdlib_module_names or importlib.util.find_spec(name) is not None:
        # pytest puts the test's folder on sys.path, where NAME.py would shadow that module
        return f"method name {name!r} is also an importable module, which {name}.py would shadow"
    return None


def render(name: str) -> dict[str, str]:
    """The generated files' names and contents."""
    folder = resources.files("attnbench") / "templates"
    values = {"name": name, "Class": class_name(name)}
    return {out.format(name=name): Template((folder / tmpl).read_text(encoding="utf-8")).substitute(values)
            for tmpl, out in FILES.items()}


def write_method(name: str, folder: str | Path = ".") -> list[Path]:
    """Write the three files into ``folder``; nothing is written if any of them exists."""
    from attnbench.errors import BadInput

    if (why := name_problem(name)) is not None:
        raise BadInput(f"new-method: {why}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"new-method: --dir {folder} is a file, not a directory")
    files = {folder / fname: text for fname, text in render(name).items()}
    if existing := [str(p) for p in files if p.exists()]:
        raise BadInput(f"new-method: refusing to overwrite {', '.join(existing)} "
                       f"(choose another name or --dir)")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)
