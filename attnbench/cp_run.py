"""Run a suite in a process group of G ranks, for ``sdpa_cp`` (:mod:`attnbench.context_parallel`):

    torchrun --nproc-per-node G -m attnbench.cp_run SUITE --device cuda [--only ...] [--out DIR]

Every rank plans and runs the same cells in the same order (rank r on ``cuda:LOCAL_RANK``; gloo on
the CPU, NCCL on CUDA), so the collectives inside ``sdpa_cp``'s forward meet; other methods run on
every rank too, each on its own GPU. Rank 0 alone writes the run directory (results.jsonl, meta.json,
reports); the other ranks write to a scratch directory that is removed at the end. So that every
rank makes exactly as many calls, timing is by count: ``warmup`` calls then ``repeats`` timed calls,
the suite's ``warmup_s`` and ``max_time_s`` (which stop on the clock, differently on each rank) set
aside; meta.json says so under ``context_parallel``. After the sweep each rank's time and memory per
cell go to ``ranks.jsonl`` in the run directory (rows carry rank 0's).

Not supported here: ``--resume`` (start the run again), isolation, interleaved rounds, CUDA graphs.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from attnbench.errors import BadInput, UserError

RANK_COLUMNS = ("status", "time_ms", "peak_mem_mib", "extra_mem_mib", "reserved_mem_mib")
RANKS_FILE = "ranks.jsonl"
TIMEOUT_MIN = 60  # a collective waits this long for a rank still busy with an earlier cell


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m attnbench.cp_run",
        description="Run a suite on every rank of a process group (for sdpa_cp); start it with "
                    "torchrun --nproc-per-node G -m attnbench.cp_run SUITE --device cuda. Rank 0 "
                    "writes the run directory.")
    ap.add_argument("suite", help="built-in suite name or path to a .toml file")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cpu (gloo) or cuda (NCCL; rank r uses cuda:LOCAL_RANK); default cpu")
    ap.add_argument("--only", help="comma-separated method names or wildcards to keep")
    ap.add_argument("--skip", help="comma-separated method names or wildcards to leave out")
    ap.add_argument("--out", default="results", help="base directory for rank 0's run directory "
                    "(default results)")
    ap.add_argument("--plugin", action="append", default=[], metavar="FILE",
                    help="a Python file that registers methods (repeatable)")
    ap.add_argument("--no-progress", action="store_true", help="no progress lines on rank 0")
    ap.add_argument("--table", choices=["summary", "full", "none"], default="summary",
                    help="what rank 0 prints after the run (default summary)")
    ap.add_argument("--init-method", default="env://",
                    help="how the ranks meet (default env://, which torchrun sets up; "
                         "file:///PATH for processes started otherwise, with RANK and WORLD_SIZE)")
    return ap


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.isdigit():
        raise BadInput(f"{name}={value!r} in the environment: cp_run is started by torchrun "
                       "(torchrun --nproc-per-node G -m attnbench.cp_run SUITE), which sets RANK, "
                       "WORLD_SIZE and LOCAL_RANK")
    return int(value)


def count_timing(timing: dict) -> dict:
    """The suite's timing with the clock-based limits set aside: every rank makes the same calls."""
    return {**timing, "warmup_s": 0.0, "max_time_s": math.inf, "rounds": 1}


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _rank_record(row: dict, rank: int) -> dict:
    """What ranks.jsonl keeps of one rank's row (JSON without NaN: a missing value is null)."""
    return {"cell_id": row.get("cell_id"), "rank": rank, "label": row.get("label"),
            "n": row.get("n"), **{k: _finite(row.get(k)) for k in RANK_COLUMNS}}


def run(args, *, rank: int, world: int, backend: str, device) -> int:
    """The sweep on this rank, in an initialised process group; rank 0 writes, the others discard."""
    import torch.distributed as dist

    from attnbench.runner import run_suite
    from attnbench.store import META, read_meta, write_json_atomic
    from attnbench.suite import load_suite

    suite = load_suite(args.suite)
    if suite.timing.get("cuda_graphs"):
        raise BadInput(f"{suite.path}: [timing] cuda_graphs = true; cp_run times eager calls only "
                       "(a collective inside a captured graph is not supported here)")
    suite = dataclasses.replace(suite, timing=count_timing(suite.timing))
    scratch = None if rank == 0 else tempfile.mkdtemp(prefix=f"attnbench-cp-rank{rank}-")
    records: list[dict] = []
    try:
        outcome = run_suite(suite, device, out=args.out if rank == 0 else scratch,
                            only=args.only, skip=args.skip, rounds=1, plugins=args.plugin or None,
                            progress=rank == 0 and not args.no_progress,
                            on_row=lambda row: records.append(_rank_record(row, rank)),
                            command=["python", "-m", "attnbench.cp_run", *sys.argv[1:]])
        everyone: list = [None] * world
        dist.all_gather_object(everyone, records)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if rank == 0:
        run_dir = outcome.run_dir
        with open(run_dir / RANKS_FILE, "w", encoding="utf-8") as f:
            for rec in sorted((r for recs in everyone for r in recs),
                              key=lambda r: (str(r["cell_id"]), r["rank"])):
                f.write(json.dumps(rec, default=str) + "\n")
        meta = read_meta(run_dir)
        meta["context_parallel"] = {
            "world_size": world, "backend": backend, "ranks_file": RANKS_FILE,
            "timing": "by count on every rank: warmup calls, then repeats timed calls (the suite's "
                      "warmup_s and max_time_s set aside); rows carry rank 0's measurements"}
        write_json_atomic(run_dir / META, meta)
        _print_results(run_dir, outcome, args.table)
    dist.barrier()
    return outcome.exit_code


def _print_results(run_dir: Path, outcome, table: str) -> None:
    from rich.console import Console

    from attnbench.report import render_terminal, write_reports

    console = Console()
    if outcome.complete:
        write_reports(run_dir)
        if table != "none":
            render_terminal(run_dir, console, table=table)
    console.print(f"results: {run_dir}/results.jsonl (every rank: {run_dir}/{RANKS_FILE})",
                  highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Exit codes as ``attnbench run``: 0 ok, 1 failed cells, 2 bad input, 3 write failure, 130."""
    import torch
    import torch.distributed as dist

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    started_here = False
    try:
        from attnbench.registry import load_plugin_file
        from attnbench.suite import load_suite

        for path in args.plugin:  # bad input fails on every rank before any rank waits for another
            load_plugin_file(path)
        load_suite(args.suite)
        backend = "nccl" if args.device == "cuda" else "gloo"
        if dist.is_initialized():  # started from Python with a group already made (tests)
            rank, world = dist.get_rank(), dist.get_world_size()
            backend = str(dist.get_backend())
            local = int(os.environ.get("LOCAL_RANK", rank))
        else:
            rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
            local = int(os.environ.get("LOCAL_RANK", rank))
        if args.device == "cuda":
            if not torch.cuda.is_available() or local >= torch.cuda.device_count():
                raise BadInput(f"--device cuda: rank {rank} wants cuda:{local}, and this machine "
                               f"has {torch.cuda.device_count()} CUDA device(s)")
            torch.cuda.set_device(local)
        device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method=args.init_method, rank=rank,
                                    world_size=world,
                                    timeout=_dt.timedelta(minutes=TIMEOUT_MIN))
            started_here = True
        return run(args, rank=rank, world=world, backend=backend, device=device)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if started_here and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
