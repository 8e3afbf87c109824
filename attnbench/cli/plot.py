"""``attnbench plot``."""
from __future__ import annotations

import argparse
from pathlib import Path

from attnbench.errors import BadInput
from attnbench.plots import make_figures
from attnbench.plotstyle import (FORMATS, KINDS, Look, NothingToPlot, save_figure, select_methods,
                                 usable_rows)

def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of dots per inch")
    return value


def _writable(out: Path) -> None:
    """Make ``out`` and prove a file can be created there, before anything is drawn."""
    import tempfile


    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".attnbench-probe-"):
            pass
    except OSError as exc:
        raise BadInput(f"plot: cannot write to {out} ({exc.strerror or exc}); choose a writable "
                       "directory with --out DIR") from None


def cmd_plot(args, console) -> int:
    from rich.console import Console
    from rich.markup import escape

    from attnbench.frame import check_baseline
    from attnbench.store import load_results, read_meta

    kinds = _csv(args.kind) if args.kind != "all" else list(KINDS)
    for k in kinds:
        if k not in KINDS:
            raise BadInput(f"plot --kind {k!r}: choose from {', '.join(KINDS)} or all")
    formats = _csv(args.format)
    bad = [f for f in formats if f not in FORMATS] or ([] if formats else [args.format])
    if bad:
        raise BadInput(f"plot --format {','.join(bad)!r}: choose from {', '.join(FORMATS)} "
                       "(comma-separated for several)")
    meta, df = read_meta(args.run_dir), load_results(args.run_dir)
    meta["run_dir"] = str(args.run_dir)  # learning curves are read from the run's curves.jsonl
    usable, dropped = usable_rows(df)
    if usable.empty:
        raise BadInput(f"{args.run_dir}: no result rows to plot" + (f" ({dropped})" if dropped else ""))
    if args.baseline:
        check_baseline(usable, args.baseline)
    baseline = args.baseline or meta.get("baseline")
    methods = _csv(args.methods) if args.methods else None
    if methods:
        unmatched = select_methods(usable, methods, baseline)[1]
        if unmatched:
            raise BadInput(f"plot --methods {','.join(unmatched)}: matches no method or label; this "
                           f"run has {', '.join(sorted(set(usable['method'].astype(str))))} "
                           "(shell wildcards such as 'linformer*' allowed)")
    try:
        figs, skipped = make_figures(df, meta, kinds, baseline=baseline, n=args.n, rows=args.rows,
                                     cols=args.cols, strict=args.kind != "all", methods=methods,
                                     look=Look(title=not args.no_title, caption=not args.no_caption))
    except NothingToPlot as exc:
        raise BadInput(f"plot: nothing to plot: {exc}") from None
    out = Path(args.out or Path(args.run_dir) / "plots")
    _writable(out)
    warn = Console(stderr=True)
    if "rows" in skipped:
        warn.print(f"[yellow]warning:[/] {escape(skipped.pop('rows'))}", highlight=False)
    for stem, fig in figs.items():
        try:
            written = save_figure(fig, out / stem, formats, args.dpi)
        except OSError as exc:
            raise BadInput(f"plot: cannot write {out / stem} ({exc.strerror or exc}); choose a "
                           "writable directory with --out DIR") from None
        for path in written:
            console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)
    for kind, why in skipped.items():
        console.print(f"skipped {kind}: {escape(why)}", highlight=False, style="dim", soft_wrap=True)
    return 0


PLOT_EXAMPLES = """examples:
  attnbench plot RUN_DIR --kind scaling --format pdf --no-title
  attnbench plot RUN_DIR --kind error --methods 'linformer*,performer' --format png --dpi 300
"""


def add_cli(sub) -> None:
    p = sub.add_parser("plot", help="plots of a finished run (PNG, SVG or PDF)",
                       description="Plots of a finished run: one file per figure and format.",
                       epilog=PLOT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory (holds results.jsonl and meta.json)")
    p.add_argument("--kind", default="all", help=f"comma-separated: {', '.join(KINDS)} (default all "
                   "that apply)")
    p.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    p.add_argument("--n", type=int, help="pareto: the sequence length (default the largest measured)")
    p.add_argument("--baseline", help="exact baseline drawn in black (default: the suite's)")
    p.add_argument("--rows", default="n", help="grid: rows (default n)")
    p.add_argument("--cols", help="grid: a param for the columns (default each method's budget knob)")
    p.add_argument("--methods", metavar="LIST", help="comma-separated method names or labels to draw, "
                   "shell wildcards allowed ('linformer*'); the baseline is always kept")
    p.add_argument("--format", default="png,svg", help=f"one or more of {', '.join(FORMATS)}, "
                   "comma-separated (default png,svg)")
    p.add_argument("--dpi", type=_positive_int, default=130, metavar="N",
                   help="resolution of PNG files and of the raster parts of vector files (default 130)")
    p.add_argument("--no-title", action="store_true", help="leave out the title above the plots "
                   "(for a paper, whose figure caption says it)")
    p.add_argument("--no-caption", action="store_true", help="leave out the caption line below the "
                   "plots (the parameters every row shares, what markers and bars mean)")
    p.set_defaults(func=cmd_plot)
