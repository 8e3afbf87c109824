"""attnbench: exact and efficient attention measured on one harness (time, memory, error)."""
from __future__ import annotations

__version__ = "0.1.0"

from attnbench.registry import (  # noqa: E402
    BuildContext,
    SharedScope,
    Unsupported,
    get_method,
    list_methods,
    register_method,
)


def run_suite(*args, **kwargs):
    """Run a suite and return its run directory; see :func:`attnbench.runner.run_suite`."""
    from attnbench.runner import run_suite as _run

    return _run(*args, **kwargs)


def load_results(run_dir):
    """Load a run directory's rows as a pandas DataFrame; see :func:`attnbench.store.load_results`."""
    from attnbench.store import load_results as _load

    return _load(run_dir)


__all__ = ["BuildContext", "SharedScope", "Unsupported", "get_method", "list_methods",
           "load_results", "register_method", "run_suite", "__version__"]
