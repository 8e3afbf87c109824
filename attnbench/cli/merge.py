"""``attnbench merge``: join the shards of one suite into one run directory (:mod:`attnbench.merge`)."""
from __future__ import annotations

import shlex

from attnbench.merge import SHOWN, merge_runs


def _cell_text(row_or_case) -> str:
    from attnbench.case import Case

    case = row_or_case if isinstance(row_or_case, Case) else Case.from_identity(row_or_case)
    return f"{case.label()} n={case.n} {case.mode} {case.dtype}"


def cmd_merge(args, console) -> int:
    from rich.text import Text

    done = merge_runs(args.run_dirs, args.out)
    console.print(Text(f"merged {done['rows']} cells of {done['planned']} planned from "
                       f"{done['sources']} run directories into {done['out']}"), soft_wrap=True)
    if done["duplicates"]:
        extra = sum(k for _, k in done["duplicates"])
        console.print(Text(f"{extra} duplicate rows dropped ({len(done['duplicates'])} cells; the "
                           "first ok row of each was kept):", style="yellow"), soft_wrap=True)
        for row, k in done["duplicates"][:SHOWN]:
            console.print(Text(f"  {_cell_text(row)} [{row['cell_id']}]: kept {row['status']}, "
                               f"dropped {k}"), soft_wrap=True)
    if done["missing"]:
        console.print(Text(f"{len(done['missing'])} cells missing (no source has them):",
                           style="yellow"), soft_wrap=True)
        for case in done["missing"][:SHOWN]:
            console.print(Text(f"  {_cell_text(case)} [{case.cell_id}]"), soft_wrap=True)
        if len(done["missing"]) > SHOWN:
            console.print(Text(f"  ... and {len(done['missing']) - SHOWN} more"), soft_wrap=True)
        hint = shlex.join(["attnbench", "run", "--resume", str(done["out"])])
        console.print(Text(f"run them with: {hint}"), soft_wrap=True)
        return 1
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("merge", help="join the shards of one suite (run --shard I/N) into one run "
                                     "directory")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories of the same suite (its shards, or partial runs)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the merged run directory to create (new, or an empty directory)")
    p.set_defaults(func=cmd_merge)
