"""Where registered methods come from: the built-in ``methods/`` package, the ``attnbench.methods``
entry-point group of installed packages, and ``--plugin FILE`` files (which a run's worker processes
load again, so the run records them).

The registry (:mod:`attnbench.registry`) hands itself to these functions; they never import it.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from pathlib import Path

from attnbench.errors import RegistryError

ENTRY_POINT_GROUP = "attnbench.methods"


def load_builtins() -> None:
    """Import every module of ``attnbench.methods`` (the repo's top-level ``methods/`` folder)."""
    import attnbench.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def load_entry_points(registry) -> None:
    """Import plugins installed under the ``attnbench.methods`` entry-point group.

    A broken plugin never hides the built-in methods: its error is kept in ``registry.plugin_errors``
    and shown by ``attnbench list``.
    """
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type) and not hasattr(obj, "spec"):
                obj()  # an entry point may name a function that registers methods
        except RegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin may fail in any way
            registry.plugin_errors.append(f"entry point {ep.name} ({ep.value}): "
                                          f"{type(exc).__name__}: {exc}")


def import_plugin_file(path: str | Path, registry) -> list[str]:
    """Import a Python file that registers methods into ``registry``; returns the names it added."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"--plugin {path}: no such file")
    if path.suffix != ".py":
        raise RegistryError(f"--plugin {path}: expected a .py file")
    registry.ensure_loaded()
    before = set(registry._specs)
    mod_name = f"attnbench_plugin_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        return []
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except RegistryError:
        del sys.modules[mod_name]
        raise
    except (Exception, SystemExit) as exc:  # a plugin that exits at import must not end the run
        del sys.modules[mod_name]
        what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else \
            f"{type(exc).__name__}: {exc}"
        raise RegistryError(f"--plugin {path}: failed to import: {what}") from None
    return sorted(set(registry._specs) - before)


def loaded_plugins() -> list[str]:
    """Files loaded with ``--plugin`` in this process (workers of an isolated run load them too)."""
    return sorted({m.__file__ for name, m in list(sys.modules.items())
                   if name.startswith("attnbench_plugin_") and getattr(m, "__file__", None)})
