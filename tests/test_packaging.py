"""The wheel holds every package: each directory of Python files under attnbench/ and methods/ is a
package (an ``__init__.py``) listed in pyproject.toml (an editable install hides a missing one; a
wheel would not)."""
import tomllib

from conftest import REPO


def _listed_dirs() -> dict[str, str]:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = tool["package-dir"]
    out = {}
    for name in tool["packages"]:
        base = max((p for p in roots if name == p or name.startswith(p + ".")), key=len)
        rest = name[len(base):].lstrip(".").replace(".", "/")
        out[name] = (roots[base] + ("/" + rest if rest else "")).strip("/")
    return out


def test_every_package_directory_is_listed():
    listed = set(_listed_dirs().values())
    found = {str(p.parent.relative_to(REPO)) for top in ("attnbench", "methods")
             for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"


def test_every_listed_package_exists():
    for name, path in _listed_dirs().items():
        assert (REPO / path).is_dir(), f"{name} -> {path} does not exist"


def test_every_package_directory_has_an_init():
    for path in _listed_dirs().values():
        assert (REPO / path / "__init__.py").is_file(), path
