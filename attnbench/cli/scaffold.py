"""``attnbench new-method``."""
from __future__ import annotations

from attnbench.scaffold import write_method

def cmd_new_method(args, console) -> int:
    import shlex

    from rich.text import Text

    paths = write_method(args.name, args.dir)
    plugin, suite, test = (str(p) for p in paths)
    console.print(Text(f"wrote {plugin} (the method), {suite} (a suite), {test} (its tests); next:"))
    for line in (["attnbench", "--plugin", plugin, "check", args.name], ["pytest", test],
                 ["attnbench", "--plugin", plugin, "run", suite]):
        console.print(Text("  " + shlex.join(line)))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("new-method", help="write a plugin, a suite and a test for a new method "
                       "(they pass `attnbench check` as written)")
    p.add_argument("name", metavar="NAME", help="the method's registry name (letters, digits, _)")
    p.add_argument("--dir", default=".", help="folder to write NAME.py, NAME.toml and test_NAME.py "
                   "into (default: the current one)")
    p.set_defaults(func=cmd_new_method)
