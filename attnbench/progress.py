"""Progress of a sweep on stderr: a live bar on a terminal, plain lines everywhere else.

A live bar means nothing in a log file (``| tee``, nohup, SLURM, CI): there each finished cell is one
line with done/total, elapsed time and ETA, flushed at once, at most one line every
``min_interval_s`` seconds (the last cell always prints).
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``start(text)`` before a cell runs, ``finish(text, status)`` after its row is written."""

    def __init__(self, total: int, done: int = 0, *, enabled: bool = True,
                 stream: TextIO | None = None, live: bool | None = None,
                 min_interval_s: float = 2.0):
        self.total, self.done = total, done
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.live = (getattr(self.stream, "isatty", lambda: False)() if live is None else live)
        self.min_interval_s = min_interval_s
        self.t0 = time.monotonic()
        self.first_done = done  # cells done before this session (resume): not in the ETA's rate
        self._last_line = -1e9
        self._bar = self._task = None
        self.per_worker: Counter[str] = Counter()  # cells finished by each worker (distributed runs)

    def __enter__(self) -> "Progress":
        if self.enabled and self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(file=self.stream), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=self.total, completed=self.done)
        return self

    def start(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text[:60])

    def finish(self, text: str, status: str, worker: str | None = None) -> None:
        self.done += 1
        if worker:
            self.per_worker[worker] += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.advance(self._task)
            if self.per_worker:
                self._bar.update(self._task, description=f"{self.workers_text()} · {text}"[:80])
            return
        now = time.monotonic()
        if now - self._last_line < self.min_interval_s and self.done < self.total:
            return
        self._last_line = now
        self.stream.write(self.line(text, status, now) + "\n")
        self.stream.flush()

    def line(self, text: str, status: str, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self.t0
        ran = self.done - self.first_done
        eta = _clock(elapsed / ran * (self.total - self.done)) if ran else "?"
        width = len(str(self.total))
        workers = f" · {self.workers_text()}" if self.per_worker else ""
        return (f"[{self.done:>{width}}/{self.total}] {_clock(elapsed)} elapsed, ETA {eta} · "
                f"{status}: {text}{workers}")

    def workers_text(self) -> str:
        """Cells per worker, e.g. ``cells per worker: gpu0 12, gpu1 11``."""
        return "cells per worker: " + ", ".join(f"{w} {k}" for w, k in sorted(self.per_worker.items()))

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            if exc[0] is None:
                self._bar.update(self._task, description="done")
            self._bar.__exit__(*exc)
        return False
