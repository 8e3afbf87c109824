"""Run directories: append-only result rows, provenance, and loading them back.

Layout: ``<out>/<suite>/<run-id>/`` holding ``results.jsonl`` (one JSON row per finished cell, each
appended, flushed and fsynced at once), ``meta.json`` (provenance and run state, replaced atomically),
``suite.toml`` (a copy of the suite as run) and a ``.lock`` held while a run writes there.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import re
import secrets
import warnings
from pathlib import Path
from typing import Any, Iterator

from attnbench.checks import is_whole
from attnbench.errors import BadInput, RunDirError  # noqa: F401 (RunDirError re-exported)
from attnbench.schema import LIST_COLUMNS, STAT_PREFIX, STATS

RESULTS = "results.jsonl"
META = "meta.json"
# Path components built from data (suite name, device tag): never empty, '.', '..' or with a separator.
SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")




class TornRowWarning(UserWarning):
    """A results file whose last line was cut mid-write."""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def new_run_dir(out: Path, suite_name: str, device_tag: str) -> Path:
    """A fresh directory; never one that exists, so no run overwrites another."""
    if not SAFE_PART.match(suite_name) or not SAFE_PART.match(device_tag):
        raise RunDirError(f"unsafe run directory name {suite_name!r}/{device_tag!r}")
    parent = Path(out) / suite_name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"--out {out}: cannot create {parent}: {exc.strerror or exc}") from None
    for _ in range(100):
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run = parent / f"{stamp}-{device_tag}-{secrets.token_hex(2)}"
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunDirError(f"--out {out}: cannot create {run}: {exc.strerror or exc}") from None
    raise RunDirError(f"could not create a new run directory under {parent}")


class RunLock:
    """An exclusive lock on a run directory, so two runs can't interleave their rows."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:  # O_NOFOLLOW: a planted symlink named .lock can't make us write elsewhere
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise RunDirError(f"{self.path.parent}: cannot lock: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"{self.path.parent} is in use by a running attnbench (pid {holder}); "
                              "wait for it to finish or use another run directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_clean(data), f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / META
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path}: unreadable: expected a JSON object")
    return meta


class JsonlAppender:
    """Appends JSON lines to a file; each line is on disk (written unbuffered and fsynced) when
    ``append`` returns. A failed write raises OSError at once; at worst it leaves a torn last line.
    Non-finite floats are written as null."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict) -> None:
        data = (json.dumps(_clean(record), sort_keys=True, default=str) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass  # nothing buffered: every line was written or reported as failed


class ResultWriter(JsonlAppender):
    """Appends rows to ``results.jsonl``; each row is on disk before the next cell starts. A torn
    last line left by an earlier failure is set aside before the first append."""

    def __init__(self, run_dir: Path):
        path = results_path(Path(run_dir))
        repair_torn_tail(path)
        super().__init__(path)


def repair_torn_tail(path: Path) -> bool:
    """Move a last line cut mid-write (no newline) to ``results.jsonl.torn``; True if there was one.
    A last line that is a whole row and lacks only its newline is kept."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return False
        cut = data.rfind(b"\n") + 1
        if _is_row(data[cut:]):  # complete, only its newline is missing: keep it
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            return False
        with open(path.with_name(path.name + ".torn"), "ab") as torn:
            torn.write(data[cut:] + b"\n")
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return True


def _is_row(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def row_problem(row: Any) -> str | None:
    """Why a parsed line is not a usable result row, or None. Rows are data from disk: a line that
    is valid JSON may still lack what every reader relies on."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    for key in ("cell_id", "method", "status"):
        if not isinstance(row.get(key), str) or not row[key]:
            return f"no {key}" if key not in row else f"{key} = {row[key]!r} is not a name"
    n = row.get("n")
    if not is_whole(n) or n < 1:
        return "no n" if "n" not in row else f"n = {n!r} is not a length"
    for key in ("params", "input"):
        if row.get(key) is not None and not isinstance(row[key], dict):
            return f"{key} = {row[key]!r} is not a table"
    return None


_WARNED: set[tuple[str, int]] = set()  # (file, line) already warned about in this process


def _warn_once(path: Path, lineno: int, message: str) -> None:
    key = (str(path.resolve()), lineno)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, TornRowWarning, stacklevel=3)


def results_path(run_dir: Path) -> Path:
    """``results.jsonl`` of a run, which must be a file if it exists."""
    path = Path(run_dir) / RESULTS
    if path.exists() and not path.is_file():
        raise RunDirError(f"{path}: results.jsonl is not a file; is this a run directory written "
                          "by attnbench?")
    return path


def iter_rows(run_dir: Path, *, history: bool = False) -> Iterator[dict]:
    """Rows of a run, one per cell: a cell run again (``run --resume RUN --rerun STATUS``) has its
    earlier rows kept in results.jsonl, and only its latest is yielded, where that one stands in the
    file (``history=True`` yields every row). A torn or corrupt line, or valid JSON that is not a row
    (no cell_id, status, method or n), is set aside with a warning naming the line, once per process;
    its cell is re-run on resume."""
    rows = list(_read_rows(run_dir))
    if history:
        yield from rows
        return
    last = {r["cell_id"]: i for i, r in enumerate(rows)}
    for i, row in enumerate(rows):
        if last[row["cell_id"]] == i:
            yield row


def _read_rows(run_dir: Path) -> Iterator[dict]:
    path = results_path(run_dir)
    if not path.is_file():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                _warn_once(path, lineno, f"{path}:{lineno}: skipped a torn or corrupt row "
                                         f"({line[:60].strip()!r}...); --resume re-runs its cell")
                continue
            if (why := row_problem(row)) is not None:
                _warn_once(path, lineno, f"{path}:{lineno}: set aside a malformed row ({why}: "
                                         f"{line[:60].strip()!r}); --resume re-runs its cell")
                continue
            yield row


def done_cells(run_dir: Path) -> set[str]:
    return {r["cell_id"] for r in iter_rows(run_dir) if "cell_id" in r}


def load_results(run_dir) -> "pandas.DataFrame":  # noqa: F821
    """One row per cell with units in column names (:mod:`attnbench.schema` declares them); params
    flattened as ``param.<name>`` columns, input regime params as ``input.<name>`` and the method's
    own stats as ``stat.<name>`` (runs written before stats had their namespace keep them as plain
    columns)."""
    import pandas as pd

    if not isinstance(run_dir, (str, os.PathLike)):
        raise RunDirError(f"load_results({run_dir!r}): expected a run directory (a path holding "
                          f"{RESULTS} and {META})")
    run_dir = Path(run_dir)
    results_path(run_dir)
    if not (run_dir / RESULTS).is_file() and not (run_dir / META).is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {RESULTS} or {META})")
    rows = []
    for r in iter_rows(run_dir):
        flat = {k: v for k, v in r.items() if k not in ("params", "input", "train", STATS)}
        for k, v in (r.get("params") or {}).items():
            flat[f"param.{k}"] = tuple(v) if isinstance(v, list) else v
        for k, v in (r.get("input") or {}).items():
            flat[f"input.{k}"] = v
        stats = r.get(STATS)
        for k, v in (stats if isinstance(stats, dict) else {}).items():
            flat[f"{STAT_PREFIX}{k}"] = v
        for k, v in (r.get("train") or {}).items() if isinstance(r.get("train"), dict) else ():
            flat[f"train.{k}"] = tuple(v) if isinstance(v, list) else v
        rows.append(flat)
    df = pd.DataFrame(rows)
    for col in df.columns:
        if col in LIST_COLUMNS:  # a list per row
            continue
        if col.endswith(("_ms", "_mib", "_err", "_per_s", "_s", "iqr")) or col in ("cosine",):
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def check_out_dir(out_dir) -> None:
    """``--out`` must be a directory or a path that can become one."""
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise BadInput(f"--out {out_dir}: is a file; give a directory (it is created if missing)")
