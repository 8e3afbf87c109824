"""The ``attnbench`` command: the parser, the verbs' modules and ``main``. This package is the top of
the import graph: it may import anything, and no library module imports it.

``main(argv) -> int``: 0 ok, 1 when cells failed with ``error``,
``crashed`` or ``timeout``, 2 for bad input (a malformed suite, an unknown method, a missing file;
nothing is run or written), 3 when the run could not write its results (disk full; resumable),
130 when interrupted (resumable)."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings

from attnbench.errors import BadInput, UserError  # noqa: F401 (BadInput: tests and plugins import it here)

EXAMPLES = """examples:
  attnbench list methods
  attnbench validate quick
  attnbench run quick --device cpu
  attnbench run suites/scaling.toml --device cuda --only sdpa,'linformer*'
  attnbench run quick --plugin my_method.py --only mine,sdpa
  attnbench check linformer
  attnbench run --resume results/quick/20261123-101500-cpu-1a2b
  attnbench run quick --device cuda --executor dask --workers 8
  attnbench run quick --shard 0/8 --out shards/0
  attnbench merge shards/*/quick/* --out merged
  attnbench report results/quick/20261123-101500-cpu-1a2b
  attnbench env
"""


def _version() -> str:
    import attnbench

    return f"attnbench {attnbench.__version__}"


def _add_plugin_option(p: argparse.ArgumentParser, dest: str = "plugin_after") -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", dest=dest,
                   help="a Python file that registers methods (repeatable; also accepted before "
                        "the verb)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="attnbench", description="Benchmark exact and efficient "
                                 "attention: time, peak memory and approximation error.",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=_version(),
                    help="print the version and exit")
    _add_plugin_option(ap, dest="plugin")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    for name in VERB_MODULES:
        importlib.import_module(name).add_cli(sub)
    for verb in sub.choices.values():
        _add_plugin_option(verb)
    return ap


# The verbs, in the order `attnbench --help` lists them: each module defines ``add_cli(subparsers)``,
# which sets ``func`` on its parser (``set_defaults(func=cmd)`` with ``cmd(args, console) -> int``);
# heavy imports stay inside ``cmd``, so ``attnbench --help`` never imports torch's kernels.
VERB_MODULES = ("attnbench.cli.listing", "attnbench.cli.run", "attnbench.cli.check",
                "attnbench.cli.scaffold", "attnbench.cli.report", "attnbench.cli.plot",
                "attnbench.cli.compare", "attnbench.cli.merge", "attnbench.cli.spectrum",
                "attnbench.cli.env")


def _signal_once(signum, frame):
    """SIGINT/SIGTERM outside a sweep: the first stops the command (exit 130); once a sweep was
    interrupted, more signals are ignored while the command prints its resume hint and exits."""
    from attnbench import sweep

    if sweep.INTERRUPTED_BY is None:
        sweep.INTERRUPTED_BY = signal.Signals(signum).name
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.markup import escape

    from attnbench.registry import load_plugin_file
    from attnbench.store import TornRowWarning

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    console = Console()
    err = Console(stderr=True, soft_wrap=True)
    args.plugin = [*args.plugin, *getattr(args, "plugin_after", [])]
    args.plugin_after = []
    old = {s: signal.signal(s, _signal_once) for s in (signal.SIGINT, signal.SIGTERM)}
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TornRowWarning):  # data problems: one line, no source excerpt
            err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        for path in args.plugin:
            load_plugin_file(path)
        return args.func(args, console)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]", highlight=False)
        return 130
    finally:
        from attnbench import sweep

        warnings.showwarning = shown
        for s, h in old.items():
            if argv is not None:  # called from Python (tests, notebooks): handlers as they were
                signal.signal(s, h)
            elif sweep.INTERRUPTED_BY is not None:  # the process ends now: late signals must not
                signal.signal(s, signal.SIG_IGN)     # kill it while the interpreter shuts down


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
