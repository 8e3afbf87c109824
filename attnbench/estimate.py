"""How long a planned run will take, for ``run --dry-run``: from the cells' wall times in earlier runs
of the same suite on the same kind of device, and for cells no earlier run has, from the suite's
timing budget (warm-up and sampling; building, compiling and error references not counted). A train
cell without history has no budget to go on (it runs its steps, however long they take): such cells
are counted apart and named, never passed off as a few seconds."""
from __future__ import annotations

import datetime as _dt
import statistics
from dataclasses import dataclass
from pathlib import Path

from attnbench.store import META, iter_rows, read_meta


@dataclass(frozen=True)
class Estimate:
    seconds: float       # the estimate for the cells that will run
    from_history: int    # cells timed in an earlier run
    from_budget: int     # cells counted at their timing budget
    source: Path | None  # the earlier run the history came from (the newest that had any)
    train_unknown: int = 0         # train cells without history, in none of the sums above
    train_steps: int = 0           # the optimizer steps those cells take, in all

    def describe(self) -> str:
        if not self.from_history and not self.from_budget:
            return (f"estimated run time unknown: {self._train_cells()}" if self.train_unknown
                    else "estimated run time 0 s: nothing to run")
        return self._timed() + (f"; plus {self._train_cells()}" if self.train_unknown else "")

    def _train_cells(self) -> str:
        return (f"{self.train_unknown} train cells that no earlier run of this suite has timed "
                f"({self.train_steps} optimizer steps in all, with their evaluations): they take as "
                "long as those steps do, which only a run can tell")

    def _timed(self) -> str:
        total = _clock(self.seconds)
        if self.from_history and not self.from_budget:
            return f"estimated run time {total} (every cell's wall time in {self.source})"
        if self.from_history:
            return (f"estimated run time {total}: {self.from_history} cells from {self.source}, "
                    f"{self.from_budget} without history at the others' median (at least their timing "
                    "budget)")
        return (f"estimated run time at least {total}: no earlier run of this suite here, so every "
                "cell counts its timing budget only (warm-up + sampling; builds, compiles and error "
                "references come on top)")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _seconds(row: dict) -> float | None:
    try:
        a = _dt.datetime.fromisoformat(row["started"])
        b = _dt.datetime.fromisoformat(row["finished"])
    except (KeyError, TypeError, ValueError):
        return None
    return max((b - a).total_seconds(), 0.0)


def history(out: Path, suite: str, device_type: str) -> tuple[dict[str, float], Path | None]:
    """cell id -> wall seconds from earlier runs of ``suite`` under ``out`` on ``device_type``
    (newest run first wins)."""
    parent = Path(out) / suite
    if not parent.is_dir():
        return {}, None
    times: dict[str, float] = {}
    source = None
    for run in sorted((p.parent for p in parent.glob(f"*/{META}")), reverse=True):
        try:
            if read_meta(run).get("device_type") != device_type:
                continue
        except Exception:  # noqa: BLE001 - an unreadable run just gives no history
            continue
        found = False
        for row in iter_rows(run):
            sec = _seconds(row)
            if sec is not None and row.get("status") not in ("unsupported", "oom-pruned"):
                found = True
                times.setdefault(row["cell_id"], sec)
        if found and source is None:
            source = run
    return times, source


def estimate(cells, timing: dict, out: Path, suite: str, device_type: str) -> Estimate:
    """``cells``: planned cells (those with a skip reason cost nothing)."""
    runnable = [c for c in cells if c.skip_reason is None]
    past, source = history(out, suite, device_type)
    budget = float(timing["warmup_s"]) + float(timing["max_time_s"])
    known = [past[c.case.cell_id] for c in runnable if c.case.cell_id in past]
    untimed_train = [c.case for c in runnable
                     if c.case.cell_id not in past and c.case.level == "train"]
    unknown = len(runnable) - len(known) - len(untimed_train)
    # a cell without history, in a run that has some: the median of the known ones is a better
    # guess than the budget alone, but never less than the budget
    fill = max(budget, statistics.median(known)) if known else budget
    return Estimate(sum(known) + unknown * fill, len(known), unknown, source, len(untimed_train),
                    sum(int(case.train_dict["steps"]) for case in untimed_train))
