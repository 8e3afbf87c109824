"""``attnbench validate`` and ``attnbench run``: plan a suite, run it (or dry-run it), then write the
reports and print the summary, or the resume hint of a run that stopped early."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from attnbench.cli import EXAMPLES
from attnbench.errors import BadInput, UserError

TABLES = ("summary", "full", "none")


def add_cli(sub) -> None:
    p = sub.add_parser("validate", help="check a suite and show how many cells it expands to")
    p.add_argument("suite", help="built-in suite name or path to a .toml file")
    p.add_argument("--device", default="cpu", help="the device to plan for: cpu, cuda or cuda:N; "
                   "a GPU suite is checked without a GPU (default cpu)")
    p.add_argument("--only", help="comma-separated method names or wildcards to keep")
    p.add_argument("--skip", help="comma-separated method names or wildcards to leave out")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run a suite", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", help="built-in suite name or path (omit with --resume)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--only", help="comma-separated method names or wildcards (linformer*); a "
                   "registered method the suite does not list is added with its default params")
    p.add_argument("--skip", help="comma-separated method names or wildcards to leave out")
    p.add_argument("--out", default="results", help="base directory for run directories "
                   "(default results)")
    p.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run: exactly the "
                   "cells without a row (with --rerun, also those of the given statuses)")
    p.add_argument("--rerun", metavar="STATUS[,STATUS]",
                   help="with --resume: also run again the cells whose row has one of these "
                        "statuses (e.g. unsupported,error once the environment is fixed); the new "
                        "row supersedes the old, which stays in results.jsonl")
    p.add_argument("--dry-run", action="store_true", help="print the plan, a preview of its cells "
                   "and an estimated run time; run nothing (works for a GPU suite without a GPU)")
    p.add_argument("--cuda-graphs", action="store_true", help="time CUDA-graph replays (rows keep "
                   "the eager time beside them)")
    p.add_argument("--rounds", type=int, metavar="R",
                   help="time the methods of each shape interleaved, in R rounds (default: the "
                        "suite's [timing] rounds, 1)")
    p.add_argument("--retry-noisy", type=int, default=0, metavar="N",
                   help="time a cell whose IQR exceeds 10%% of its median again, up to N times, "
                        "and keep the steadiest attempt (default 0)")
    p.add_argument("--capacity-limit-mib", type=float, default=0.0, metavar="MIB",
                   help="memory limit for capacity mode (default: the device's own)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--table", choices=TABLES, default="summary",
                   help="what to print after the run: a summary that fits the terminal "
                        "(default), every row, or nothing; report.md/csv always hold every row")
    p.add_argument("--columns", help="with --table full: the columns to show, comma-separated")
    p.add_argument("--no-table", action="store_true", help="the same as --table none")
    p.add_argument("--isolate", action="store_true",
                   help="run cells in a worker process: a crash or a hang becomes a crashed or "
                        "timeout row and the sweep goes on in a fresh worker")
    p.add_argument("--isolate-per", choices=["method", "cell"],
                   help="a worker per method (default) or per cell (implies --isolate)")
    p.add_argument("--timeout-s", type=float, metavar="S",
                   help="per-cell time limit in seconds (implies --isolate)")
    _add_scaleout_options(p)
    p.set_defaults(func=cmd_run)


def _add_scaleout_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out (README: Scale-out)")
    g.add_argument("--executor", choices=["serial", "dask"], default=None,
                   help="serial: this process (default); dask: the cells spread over Dask workers, "
                        "one per GPU (pip install 'attnbench[dist]')")
    g.add_argument("--workers", type=int, metavar="N",
                   help="with --executor dask: start a local cluster of N worker processes, one "
                        "per GPU (on CPU N processes sharing the cores); with --scheduler: wait "
                        "for N workers to join (default 1)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --executor dask: use the workers of the Dask cluster at ADDRESS "
                        "(e.g. tcp://10.0.0.5:8786) instead of starting one")
    g.add_argument("--shard", metavar="I/N",
                   help="run shard I of N (0 <= I < N) into its own run directory: a fixed "
                        "partition of the cells balanced by estimated cost, for job arrays; "
                        "join the shards with attnbench merge")
    g.add_argument("--costs-from", metavar="RUN_DIR",
                   help="an earlier run whose cell wall times balance --shard and order "
                        "--executor dask (default: estimates from the plan)")


def cmd_validate(args, console) -> int:
    from rich.text import Text

    from attnbench.env import parse_device
    from attnbench.planning import added_note, plan
    from attnbench.suite import load_suite

    suite = load_suite(args.suite)
    device = parse_device(args.device, present=False)
    cells = plan(suite, device, args.only, args.skip)
    skipped = sum(c.skip_reason is not None for c in cells)
    console.print(Text(f"{suite.path}: valid suite {suite.name!r} v{suite.version}: {len(cells)} cells "
                       f"on {device.type} ({len(cells) - skipped} to run, {skipped} unsupported), "
                       f"baseline {suite.baseline}"), soft_wrap=True)
    if (note := added_note(suite, args.only, args.skip)) is not None:
        console.print(Text(note), soft_wrap=True)
    _eval_size_notes(console, cells)
    return 0


def _eval_size_notes(console, cells) -> None:
    from rich.text import Text

    from attnbench.train.config import small_eval_notes

    for note in small_eval_notes(c.case for c in cells if c.skip_reason is None):
        console.print(Text(f"note: {note}"), soft_wrap=True)


PREVIEW = 12  # cells shown at each end of a dry run's plan


def _plan_table(cells, title: str):
    from rich.table import Table
    from rich.text import Text

    shown = list(enumerate(cells))
    caption = None
    if len(cells) > 2 * PREVIEW:
        caption = (f"showing {2 * PREVIEW} of {len(cells)} cells: {len(cells) - 2 * PREVIEW} more "
                   f"cells between #{PREVIEW - 1} and #{len(cells) - PREVIEW}")
        shown = shown[:PREVIEW] + [None] + shown[-PREVIEW:]
    varying = _varying_train_keys(cells)  # train cells: the [train] settings that tell them apart
    extra = ("train",) if varying else ()
    table = Table("#", "method", "level", "n", "B", "H", "D", "dtype", "mode", *extra, "planned",
                  title=Text(title), title_justify="left", caption=caption, caption_justify="left")
    for item in shown:
        if item is None:
            table.add_row("…", *[""] * (9 + len(extra)))
            continue
        i, c = item
        k = c.case
        train = {**dict(k.train or ()), "seed": k.seed}
        setting = (" ".join(f"{key}={train[key]}" for key in varying if key in train),) if extra else ()
        table.add_row(*map(Text, (str(i), k.label(), k.level, str(k.n), str(k.batch), str(k.heads),
                                  str(k.head_dim), k.dtype, k.mode, *setting,
                                  "run" if c.skip_reason is None
                                  else f"unsupported: {c.skip_reason}")))
    return table


def _varying_train_keys(cells) -> list[str]:
    """The [train] keys (and the seed) whose value differs between the plan's train cells (task
    always)."""
    values: dict[str, set] = {}
    for c in cells:
        if c.case.train:
            values.setdefault("seed", set()).add(c.case.seed)
        for key, value in c.case.train or ():
            values.setdefault(key, set()).add(value)
    if not values:
        return []
    return [key for key in values if key == "task" or len(values[key]) > 1]


def cmd_run(args, console) -> int:
    from attnbench.env import parse_device
    from attnbench.resume import check_rerun
    from attnbench.runner import check_options, run_suite

    if not args.suite and not args.resume:
        raise BadInput("run: name a suite (built-in name or path) or --resume RUN_DIR")
    if args.suite and args.resume:
        raise BadInput("run: give either a suite or --resume RUN_DIR, not both")
    table = "none" if args.no_table else args.table
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    if columns and table != "full":
        raise BadInput("--columns chooses the columns of --table full; add --table full")
    isolate = args.isolate_per or ("method" if args.isolate else None)
    if args.dry_run:  # the options are checked as a real run checks them, then nothing runs
        rerun = check_rerun(args.rerun, args.resume)
        check_options(args.out, args.timeout_s, args.capacity_limit_mib, isolate, args.rounds,
                      args.retry_noisy, args.plugin or None, True, None)
        return _dry_run(args, console, parse_device(args.device, present=False), rerun)
    device = parse_device(args.device, present=args.scheduler is None)
    plugins = args.plugin  # main() merged those given before and after the verb
    outcome = run_suite(args.suite, device, out=args.out, only=args.only, skip=args.skip,
                        resume=args.resume, progress=not args.no_progress,
                        command=["attnbench", *sys.argv[1:]] if sys.argv else None,
                        cuda_graphs=args.cuda_graphs, capacity_limit_mib=args.capacity_limit_mib,
                        isolate=isolate,
                        timeout_s=args.timeout_s, rounds=args.rounds, retry_noisy=args.retry_noisy,
                        plugins=plugins or None, executor=args.executor, workers=args.workers,
                        scheduler=args.scheduler, shard=args.shard, costs_from=args.costs_from,
                        rerun=args.rerun)
    if outcome.complete:
        _reports(outcome.run_dir, console, table, columns)
    console.print(f"results: {outcome.run_dir}/results.jsonl", highlight=False, soft_wrap=True)
    if outcome.accounting is not None and outcome.accounting.cells:
        console.print(outcome.accounting.describe(), highlight=False, soft_wrap=True)
    if not outcome.complete:  # no report of a partial run: `attnbench report RUN_DIR` makes one
        extra = [a for flag, v in (("--executor", args.executor), ("--workers", args.workers),
                                   ("--scheduler", args.scheduler), ("--rerun", args.rerun))
                 if v for a in (flag, str(v))]
        _resume_hint(console, outcome, plugins, args.device, extra)
    return outcome.exit_code


def _reports(run_dir, console, table: str, columns) -> None:
    """report.md and report.csv, then the terminal table. The rows are safe on disk: a report that
    cannot be made (no space, a read-only directory) is a warning, never a failed run."""
    from rich.markup import escape

    from attnbench.report import render_terminal, write_reports

    try:
        write_reports(run_dir)
    except (UserError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        console.print(f"[yellow]warning:[/] report files not written: {escape(why)}; the rows are "
                      f"in results.jsonl (attnbench report RUN_DIR --out DIR writes them elsewhere)",
                      highlight=False, soft_wrap=True)
    try:
        render_terminal(run_dir, console, table=table, columns=columns)
    except UserError as exc:
        console.print(f"[yellow]no table:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def _resume_hint(console, outcome, plugins, device: str, extra=()) -> None:
    from rich.markup import escape

    hint = ["attnbench", *(a for p in plugins for a in ("--plugin", p)), "run", "--resume",
            str(outcome.run_dir), *(["--device", device] if device != "cpu" else []), *extra]
    why = "interrupted" if outcome.interrupted else f"stopped: {outcome.write_failed}"
    console.print(f"[yellow]{escape(why)}[/]; the rows written so far are safe; finish it with: "
                  f"{escape(shlex.join(hint))}", highlight=False, soft_wrap=True)


def _dry_run(args, console, device, rerun: frozenset[str]) -> int:
    from rich.text import Text

    from attnbench.estimate import estimate
    from attnbench.planning import added_note, plan
    from attnbench.resume import kept_rows, resumed_run
    from attnbench.suite import load_suite

    if args.resume:
        run_dir, suite, meta = resumed_run(Path(args.resume), device)
        only, skip = meta.get("only"), meta.get("skip")
    else:
        suite, only, skip = load_suite(args.suite), args.only, args.skip
    cells = plan(suite, device, only, skip)
    which = ""
    if args.resume:  # what a resume would run: cells without a row, and those --rerun names
        from attnbench.scaleout import resumed_shard
        from attnbench.store import iter_rows

        if meta.get("shard") is not None:
            cells = resumed_shard(cells, run_dir, meta)
        planned_ids = {c.case.cell_id for c in cells}
        kept = {r["cell_id"] for r in kept_rows(list(iter_rows(run_dir)), rerun, planned_ids)}
        planned = len(cells)
        cells = [c for c in cells if c.case.cell_id not in kept]
        which = f" (resumed: {len(cells)} of its {planned} cells left{', with --rerun' if rerun else ''})"
    if args.shard and not args.resume:  # the cells this shard of a job array would run
        from attnbench.scaleout import shard_of

        rounds = args.rounds or suite.timing.get("rounds", 1)
        cells, _ = shard_of(cells, args.shard, rounds, suite, device.type, args.costs_from)
        which = f" (shard {args.shard})"
    skipped = sum(c.skip_reason is not None for c in cells)
    console.print(_plan_table(cells, f"{suite.name}{which}: {len(cells)} cells on {device.type} "
                                     f"({len(cells) - skipped} to run, {skipped} unsupported; "
                                     "dry run)"))
    if (note := added_note(suite, only, skip)) is not None:
        console.print(Text(note), soft_wrap=True)
    _eval_size_notes(console, cells)
    # a resumed run's history is its own directory's and its siblings'
    out = Path(args.resume).parent.parent if args.resume else Path(args.out)
    est = estimate(cells, suite.timing, out, suite.name, device.type)
    console.print(Text(est.describe()), soft_wrap=True)
    return 0
