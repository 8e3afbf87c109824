"""``attnbench check``."""
from __future__ import annotations

import torch

from attnbench import conformance
from attnbench.conformance_result import SIZES
from attnbench.conformance_tables import report_table, summary_table
from attnbench.errors import BadInput

def cmd_check(args, console) -> int:
    from rich.text import Text

    from attnbench.registry import REGISTRY, RegistryError, unknown_name_message

    if not args.methods and not args.all:
        raise BadInput("check: name one or more methods, or give --all")
    names = list(dict.fromkeys([*args.methods, *(REGISTRY.names() if args.all else [])]))
    for name in names:
        if name not in REGISTRY:
            raise RegistryError(unknown_name_message("method", name, REGISTRY.names()) +
                                " (a plugin's methods need --plugin FILE)")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()] if args.dtype else None
    for d in dtypes or []:
        if d not in ("fp32", "fp16", "bf16"):
            raise BadInput(f"check: --dtype {d!r} is not one of fp32, fp16, bf16")
    device = args.device
    if device not in ("cpu", "cuda"):
        raise BadInput(f"check: --device {device!r} is not one of cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("check: --device cuda, but torch sees no CUDA device here")
    if args.n is not None and args.n < 2:
        raise BadInput(f"check: --n {args.n} must be at least 2")
    reports = [conformance.check_method(REGISTRY.get(name), device, dtypes, args.n) for name in names]
    if len(reports) == 1 or args.verbose:
        for r in reports:
            console.print(report_table(r))
    else:
        console.print(summary_table(reports))
        for r in reports:
            if not r.ok:
                console.print(report_table(r))
    failed = [r.method for r in reports if not r.ok]
    total = {s: sum(r.count(s) for r in reports) for s in ("pass", "fail", "skip")}
    line = (f"{len(reports) - len(failed)} of {len(reports)} methods conform "
            f"({total['pass']} checks passed, {total['fail']} failed, {total['skip']} skipped)")
    console.print(Text(line + (f"; failed: {', '.join(failed)}" if failed else ""),
                       style="bold red" if failed else "green"))
    return 1 if failed else 0


def add_cli(sub) -> None:
    p = sub.add_parser("check", help="run the method contract on registered methods (pass/fail "
                       "table; exit 1 on a failure)",
                       description="Check that a method keeps the contract: output shape/dtype/device, "
                       "finite, inputs untouched, deterministic, its declared limiting case against a "
                       "float64 reference, causality, decoding token by token against the causal "
                       "forward (methods that declare decode), gradients, constraints, layer and "
                       "model levels. "
                       "Plugin methods: attnbench --plugin FILE check NAME.")
    p.add_argument("methods", nargs="*", metavar="METHOD", help="registered method names")
    p.add_argument("--all", action="store_true", help="check every registered method")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", metavar="LIST", help="comma-separated dtypes for the output checks, "
                   "from fp32, fp16, bf16 (default: every dtype the method declares)")
    p.add_argument("--n", type=int, metavar="N", help="sequence length (default: the smallest of "
                   f"{', '.join(map(str, SIZES))} at which the default params are accepted)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="with several methods, print every method's table (default: a summary "
                        "and the tables of methods that failed)")
    p.set_defaults(func=cmd_check)
