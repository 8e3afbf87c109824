"""attnbench: exact and efficient attention measured on one harness (time, memory, error).

The Python API: :func:`run_suite` runs a suite (a built-in name, a path, a :class:`Suite` or a dict)
and returns a :class:`RunOutcome`; :func:`load_results` reads a run directory back as a DataFrame;
:func:`register_method` adds a method.
"""
from __future__ import annotations

__version__ = "0.2.0"

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from attnbench.methodspec import BuildContext, SharedScope, Unsupported  # noqa: E402
from attnbench.registry import get_method, list_methods, register_method  # noqa: E402

if TYPE_CHECKING:  # imported lazily: `import attnbench` stays light
    import pandas
    import torch

    from attnbench.runner import RunOutcome
    from attnbench.suite_parse import Suite


def run_suite(suite: "Suite | dict | str | Path", device: "str | torch.device" = "cpu", *,
              out: str | Path = "results", only: str | Iterable[str] | None = None,
              skip: str | Iterable[str] | None = None, resume: str | Path | None = None,
              progress: bool = True, cuda_graphs: bool = False, capacity_limit_mib: float = 0.0,
              on_row: Callable[[dict], Any] | None = None, isolate: str | None = None,
              timeout_s: float | None = None, plugins: list[str | Path] | None = None,
              rounds: int | None = None, retry_noisy: int = 0, executor: str | None = None,
              workers: int | None = None, scheduler: str | None = None,
              shard: "str | tuple[int, int] | None" = None,
              costs_from: str | Path | None = None,
              rerun: str | Iterable[str] | None = None) -> "RunOutcome":
    """Run a suite and return its :class:`~attnbench.runner.RunOutcome` (``run_dir``, ``counts``,
    ``exit_code``).

    ``suite``: a built-in name (``"quick"``), a path to a TOML file, a :class:`Suite`, or a dict of
    the same tables (``{"name": "mine", "sweep": {"n": [512]}, "methods": {"sdpa": {}}}``).
    ``only``/``skip``: method names or wildcards (a list, or one comma-separated string); a name
    the suite lacks is added with its default params. ``resume``: a run directory to finish;
    ``rerun`` (statuses, with ``resume``) runs its cells of those statuses again, the new row
    superseding the old (kept in results.jsonl).
    ``isolate`` (``"method"`` or ``"cell"``) and ``timeout_s`` run cells in worker processes;
    ``rounds`` > 1 interleaves the timing of each shape's methods; ``retry_noisy`` re-times noisy
    cells. ``executor="dask"`` spreads the cells over ``workers`` local Dask worker processes (one
    per GPU) or the workers of the cluster at ``scheduler`` (call it under
    ``if __name__ == "__main__":`` in a script: local workers are spawned processes); ``shard="I/N"``
    runs one shard of a job array (``costs_from``: an earlier run whose wall times balance it).
    ``on_row(row)`` is called after each row is on disk. Bad arguments raise
    :class:`attnbench.errors.UserError` subclasses with one-line messages.
    """
    from attnbench.runner import run_suite as _run

    return _run(suite, device, out=out, only=only, skip=skip, resume=resume, progress=progress,
                cuda_graphs=cuda_graphs, capacity_limit_mib=capacity_limit_mib, on_row=on_row,
                isolate=isolate, timeout_s=timeout_s, plugins=plugins, rounds=rounds,
                retry_noisy=retry_noisy, executor=executor, workers=workers, scheduler=scheduler,
                shard=shard, costs_from=costs_from, rerun=rerun)


def load_results(run_dir: str | Path, baseline: str | None = None) -> "pandas.DataFrame":
    """A run directory's rows as a DataFrame, one row per cell: units in column names
    (``time_ms``, ``peak_mem_mib``), params as ``param.<name>``, input params as ``input.<name>``,
    every timing sample in ``time_samples_ms``.

    With ``baseline`` (an exact method's name or label, e.g. ``"sdpa"``) it adds ``speedup``
    (baseline time / this row's on the same cell), its range ``speedup_lo``..``speedup_hi`` from the
    two rows' timing quartiles, and ``mem_ratio`` (peak memory / the baseline's)."""
    from attnbench.store import load_results as _load

    df = _load(run_dir)
    if baseline is None:
        return df
    from attnbench.frame import add_baseline_columns, check_baseline

    check_baseline(df, baseline)
    return add_baseline_columns(df, baseline)


def __getattr__(name: str):
    if name == "Suite":  # attnbench.Suite.from_dict(...) without importing the suite module eagerly
        from attnbench.suite_parse import Suite

        return Suite
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")


__all__ = ["BuildContext", "SharedScope", "Suite", "Unsupported", "get_method", "list_methods",
           "load_results", "register_method", "run_suite", "__version__"]
