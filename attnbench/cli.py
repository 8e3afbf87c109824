"""The ``attnbench`` command. ``main(argv) -> int``: 0 ok, 1 when cells failed with ``error``, 2 for bad
input (a malformed suite, an unknown method, a missing file), 130 when interrupted."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

EXAMPLES = """examples:
  attnbench list methods
  attnbench validate quick
  attnbench run quick --device cpu
  attnbench run suites/scaling.toml --device cuda --only sdpa,linformer
  attnbench run quick --plugin my_method.py --only mine,sdpa
  attnbench run --resume results/quick/20261123-101500-cpu-1a2b
  attnbench report results/quick/20261123-101500-cpu-1a2b
  attnbench env
"""


class BadInput(Exception):
    """Anything the user can fix: reported in one line, exit code 2."""


def _names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="attnbench", description="Benchmark exact and efficient "
                                 "attention: time, peak memory and approximation error.",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugin", action="append", default=[], metavar="FILE",
                    help="a Python file that registers methods (repeatable)")
    sub = ap.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("list", help="methods (default) or suites, with availability")
    p.add_argument("what", nargs="?", choices=["methods", "suites"], default="methods")

    p = sub.add_parser("validate", help="check a suite and show how many cells it expands to")
    p.add_argument("suite", help="built-in suite name or path to a .toml file")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("run", help="run a suite", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", help="built-in suite name or path (omit with --resume)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--only", help="comma-separated method names to run")
    p.add_argument("--skip", help="comma-separated method names to leave out")
    p.add_argument("--out", default="results", help="base directory for run directories")
    p.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run")
    p.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    p.add_argument("--cuda-graphs", action="store_true", help="time CUDA-graph replays")
    p.add_argument("--rounds", type=int, metavar="R",
                   help="time the methods of each shape interleaved, in R rounds (default: the "
                        "suite's [timing] rounds, 1)")
    p.add_argument("--capacity-limit-mib", type=float, default=0.0,
                   help="memory limit for capacity mode (default: the device's own)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-table", action="store_true", help="don't print the results table")
    p.add_argument("--isolate", action="store_true",
                   help="run cells in a worker process: a crash or a hang becomes a crashed or "
                        "timeout row and the sweep goes on in a fresh worker")
    p.add_argument("--isolate-per", choices=["method", "cell"],
                   help="a worker per method (default) or per cell (implies --isolate)")
    p.add_argument("--timeout-s", type=float, metavar="S",
                   help="per-cell time limit in seconds (implies --isolate)")

    sub.add_parser("env", help="versions, device and git state that runs record")
    for name in VERB_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).add_cli(sub)
    return ap


def cmd_list(args, console) -> int:
    from rich.table import Table
    from rich.text import Text

    from attnbench.registry import REGISTRY

    if args.what == "suites":
        from attnbench.suite import builtin_suites, load_suite

        table = Table("suite", "description", "path", title="built-in suites")
        for name, path in sorted(builtin_suites().items()):
            try:
                desc = load_suite(str(path)).description
            except Exception as exc:  # noqa: BLE001
                desc = f"(invalid: {exc})"
            table.add_row(name, desc, str(path))
        console.print(table)
        return 0
    table = Table("method", "family", "exact", "causal", "backward", "devices", "dtypes", "budget",
                  "available", title="registered methods")
    for s in REGISTRY.specs():
        why = s.unavailable_reason()
        table.add_row(*map(Text, (s.name, s.family, "yes" if s.exact else "no",
                                  "yes" if s.causal else "no", "yes" if s.backward else "no",
                                  ",".join(s.devices), ",".join(s.dtypes), s.budget or "",
                                  "yes" if why is None else why)))
    console.print(table)
    for err in REGISTRY.plugin_errors:
        console.print(Text(f"plugin not loaded: {err}", style="yellow"))
    return 0


def _plan_table(cells, console, title: str) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("#", "method", "level", "n", "B", "H", "D", "dtype", "mode", "causal", "input",
                  "planned", title=title)
    for i, c in enumerate(cells):
        k = c.case
        table.add_row(*map(Text, (str(i), k.label(), k.level, str(k.n), str(k.batch), str(k.heads),
                                  str(k.head_dim), k.dtype, k.mode, str(k.causal),
                                  ",".join(f"{a}={b}" for a, b in k.input),
                                  "run" if c.skip_reason is None
                                  else f"unsupported: {c.skip_reason}")))
    console.print(table)


def cmd_validate(args, console) -> int:
    from rich.text import Text

    from attnbench.runner import parse_device, plan
    from attnbench.suite import load_suite

    suite = load_suite(args.suite)
    cells = plan(suite, parse_device(args.device))
    skipped = sum(c.skip_reason is not None for c in cells)
    console.print(Text(f"{suite.path}: valid suite {suite.name!r} v{suite.version}: {len(cells)} cells "
                  f"on {args.device} ({len(cells) - skipped} to run, {skipped} unsupported), "
                  f"baseline {suite.baseline}"))
    return 0


def cmd_run(args, console) -> int:
    from attnbench.report import render_terminal, write_reports
    from attnbench.runner import parse_device, plan, run_suite
    from attnbench.suite import load_suite

    if not args.suite and not args.resume:
        raise BadInput("run: name a suite (built-in name or path) or --resume RUN_DIR")
    if args.suite and args.resume:
        raise BadInput("run: give either a suite or --resume RUN_DIR, not both")
    device = parse_device(args.device)
    if args.dry_run:
        suite = load_suite(args.suite) if args.suite else load_suite(str(Path(args.resume) /
                                                                           "suite.toml"))
        cells = plan(suite, device, _names(args.only), _names(args.skip))
        _plan_table(cells, console, f"{suite.name}: {len(cells)} cells on {device} (dry run)")
        return 0
    outcome = run_suite(args.suite, device, out=args.out, only=_names(args.only),
                        skip=_names(args.skip), resume=args.resume, progress=not args.no_progress,
                        command=["attnbench", *sys.argv[1:]] if sys.argv else None,
                        cuda_graphs=args.cuda_graphs, capacity_limit_mib=args.capacity_limit_mib,
                        isolate=args.isolate_per or ("method" if args.isolate else None),
                        timeout_s=args.timeout_s, rounds=args.rounds,
                        plugins=args.plugin)
    try:  # the rows are safe on disk; a report that can't be made must not turn into a failed run
        write_reports(outcome.run_dir)
        if not args.no_table:
            render_terminal(outcome.run_dir, console)
    except BadInput as exc:
        from rich.markup import escape

        console.print(f"[yellow]no report:[/] {escape(str(exc))}", highlight=False)
    console.print(f"results: {outcome.run_dir}/results.jsonl")
    if outcome.interrupted:
        import shlex

        from rich.markup import escape

        hint = ["attnbench", *(a for p in args.plugin for a in ("--plugin", p)), "run", "--resume",
                str(outcome.run_dir), *(["--device", args.device] if args.device != "cpu" else [])]
        console.print(f"[yellow]interrupted[/]; finish it with: {escape(shlex.join(hint))}",
                      highlight=False, soft_wrap=True)
    return outcome.exit_code


def cmd_env(args, console) -> int:
    import torch

    from attnbench.env import provenance

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    console.print_json(json.dumps(provenance(device), default=str))
    return 0


VERBS = {"list": cmd_list, "validate": cmd_validate, "run": cmd_run, "env": cmd_env}
# Modules that add their own verbs: each defines ``add_cli(subparsers)`` and sets ``func`` on its parser
# (``set_defaults(func=cmd)`` with ``cmd(args, console) -> int``); heavy imports stay inside ``cmd``.
VERB_MODULES = ("attnbench.report", "attnbench.plots", "attnbench.compare", "attnbench.spectrum",
                "attnbench.conformance", "attnbench.scaffold")


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from attnbench.registry import RegistryError, load_plugin_file
    from attnbench.store import RunDirError
    from attnbench.suite import SuiteError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # pipes and logs: keep tables readable
    err = Console(stderr=True)
    try:
        for path in args.plugin:
            load_plugin_file(path)
        func = getattr(args, "func", None) or VERBS[args.verb]
        return func(args, console)
    except (BadInput, SuiteError, RegistryError, RunDirError) as exc:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
