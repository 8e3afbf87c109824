"""``attnbench merge RUN_DIR... --out DIR``: join the shards of one suite (``run --shard I/N``) into one
run directory.

The sources must be runs of the same suite text (same sha256), on the same device type, with the same
``--only``/``--skip`` selection; anything else is refused (exit 2) naming the two that differ. Rows are
deduplicated by cell id (the first ``ok`` row wins, else the first row; the dropped ones are listed),
provenance is kept per source and unioned, and the cells of the whole plan that no source has are
listed. The merged directory is an ordinary run directory: reports read it, and
``attnbench run --resume DIR`` runs exactly its missing cells. Exit 0 when no cell is missing, 1 when
some are.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
from pathlib import Path

from attnbench.accounting import devices_from_rows
from attnbench.errors import BadInput, RunDirError
from attnbench.store import META, RESULTS, iter_rows, read_meta, write_json_atomic

SHOWN = 20  # duplicate and missing cells listed by name, at most
SHARD_KEYS = ("shard", "shard_cells", "shard_costs_from", "cells_in_suite")
SAME = (("suite_sha256", "suite"), ("device_type", "device type"), ("only", "--only selection"),
        ("skip", "--skip selection"))


def _sources(dirs: list[str]) -> list[tuple[Path, dict]]:
    out, seen = [], {}
    for d in dirs:
        path = Path(d)
        key = path.resolve()
        if key in seen:
            raise BadInput(f"merge: {d} is listed twice (also as {seen[key]})")
        seen[key] = d
        meta = read_meta(path)
        if not (path / "suite.toml").is_file():
            raise RunDirError(f"{path}: no suite.toml; is this a run directory written by attnbench?")
        out.append((path, meta))
    first, fmeta = out[0]
    for path, meta in out[1:]:
        for key, what in SAME:
            if meta.get(key) != fmeta.get(key):
                raise BadInput(f"merge: {first} and {path} are not shards of one run: their "
                               f"{what} differ ({key} {fmeta.get(key)!r} and {meta.get(key)!r}); "
                               "merge only run directories of the same suite")
    return out


def _check_idle(path: Path) -> None:
    """Refuse a run directory that a running attnbench holds (its .lock), without writing there."""
    lock = path / ".lock"
    if not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        raise RunDirError(f"merge: {path} is in use by a running attnbench (pid {holder}); wait for "
                          "it to finish") from None
    finally:
        os.close(fd)


def _check_out(out: Path, sources: list[tuple[Path, dict]]) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise BadInput(f"merge --out {out}: exists and is not an empty directory; name a new one")
    for path, _ in sources:
        if out.resolve() == path.resolve():
            raise BadInput(f"merge --out {out}: is one of the run directories being merged")


def _pick(rows_by_id: dict[str, list[dict]]) -> tuple[dict[str, dict], list[tuple[dict, int]]]:
    """The kept row of every cell (first ok, else first) and the cells that had duplicates."""
    kept, dups = {}, []
    for cell_id, rows in rows_by_id.items():
        kept[cell_id] = next((r for r in rows if r.get("status") == "ok"), rows[0])
        if len(rows) > 1:
            dups.append((kept[cell_id], len(rows) - 1))
    return kept, dups


def _union(provs: list[dict]) -> dict:
    """Provenance keys on which the sources differ -> their distinct values."""
    keys = sorted({k for p in provs for k in p})
    out = {}
    for k in keys:
        values = []
        for p in provs:
            v = p.get(k)
            if v not in values:
                values.append(v)
        if len(values) > 1:
            out[k] = values
    return out


def merge_runs(dirs: list[str], out: str | Path) -> dict:
    """Merge ``dirs`` into the new run directory ``out``; returns what happened (rows, duplicates,
    missing cells). Bad input raises before anything is written."""
    from attnbench.env import parse_device
    from attnbench.planning import plan
    from attnbench.resume import resumed_run

    if not dirs:
        raise BadInput("merge: name the run directories to merge")
    sources = _sources(dirs)
    out = Path(out)
    _check_out(out, sources)
    first, fmeta = sources[0]
    device = parse_device(str(fmeta.get("device_type") or "cpu"), present=False)
    for path, _ in sources:  # a shard still running is not merged half-done
        _check_idle(path)
    _, suite, _ = resumed_run(first, device)
    planned = [c.case for c in plan(suite, device, fmeta.get("only"), fmeta.get("skip"))]
    rows_by_id: dict[str, list[dict]] = {}
    per_source = []
    for path, _ in sources:
        n = 0
        for r in iter_rows(path):
            rows_by_id.setdefault(r["cell_id"], []).append(r)
            n += 1
        per_source.append(n)
    kept, dups = _pick(rows_by_id)
    order = {c.cell_id: i for i, c in enumerate(planned)}
    rows = sorted(kept.values(), key=lambda r: order.get(r["cell_id"], len(order)))
    missing = [c for c in planned if c.cell_id not in kept]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    meta = {k: v for k, v in fmeta.items() if k not in SHARD_KEYS}
    meta.update(
        state="complete" if not missing else "interrupted", cells_planned=len(planned),
        cells_missing=len(missing), counts=counts,
        command=shlex.join(["attnbench", "merge", *map(str, dirs), "--out", str(out)]),
        merged_from=[{"run_dir": str(p.resolve()), "shard": m.get("shard"), "rows": n,
                      "command": m.get("command"),
                      "state": m.get("state"), "started": m.get("started"),
                      "finished": m.get("finished"), "accounting": m.get("accounting"),
                      "provenance": m.get("provenance")} for (p, m), n in zip(sources, per_source)],
        provenance_union=_union([m.get("provenance") or {} for _, m in sources]),
        devices=devices_from_rows((), [d for _, m in sources for d in m.get("devices") or ()]),
        started=min((m.get("started") or "" for _, m in sources), default=None) or None,
        finished=max((m.get("finished") or "" for _, m in sources), default=None) or None)
    for key in ("accounting", "interrupted_by", "host_load_before", "host_load_after"):
        meta.pop(key, None)
    _write(out, first, rows, meta)
    return {"out": out, "rows": len(rows), "sources": len(sources), "duplicates": dups,
            "missing": missing, "planned": len(planned)}


def _write(out: Path, first: Path, rows: list[dict], meta: dict) -> None:
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first / "suite.toml", out / "suite.toml")
        with open(out / RESULTS, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_json_atomic(out / META, meta)
    except OSError as exc:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise RunDirError(f"merge --out {out}: cannot write: {exc.strerror or exc}") from None
