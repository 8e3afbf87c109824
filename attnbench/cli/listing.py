"""``attnbench list``: each method's one-line description and its params with their
defaults (capabilities with ``--verbose``), and the built-in suites; laid out to fit the terminal,
with names never cut."""
from __future__ import annotations

import dataclasses
import typing

from rich.table import Table
from rich.text import Text

from attnbench.methodspec import MethodSpec


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return "?"


def _choices(tp) -> str:
    """``a|b|c`` for a Literal annotation (the values a suite may sweep), else ''."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(map(str, typing.get_args(tp)))
    return ""


def params_text(spec: MethodSpec) -> str:
    hints = typing.get_type_hints(spec.params, include_extras=True)
    parts = []
    for f in dataclasses.fields(spec.params):
        value = _default(f)
        shown = "x".join(map(str, value)) if isinstance(value, tuple) and value else \
            "()" if value == () else str(value)
        choices = _choices(hints.get(f.name))
        budget = " (budget)" if f.name == spec.budget else ""
        parts.append(f"{f.name}={shown}" + (f" [{choices}]" if choices else "") + budget)
    return ", ".join(parts) if parts else "no params"


def capabilities_text(spec: MethodSpec) -> str:
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    return (f"exact {yes(spec.exact)} · causal {yes(spec.causal)} · backward {yes(spec.backward)} · "
            f"decode {yes(spec.decode)} · varlen {yes(spec.varlen)} · "
            f"devices {','.join(spec.devices)} · dtypes {','.join(spec.dtypes)} · "
            f"levels {','.join(spec.levels)}" +
            ("" if spec.approximates else " · approximates nothing: error against its own float64"))


def device_reason(spec: MethodSpec) -> str | None:
    """Why an installed method cannot run on this machine's devices, or None."""
    import torch

    here = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if any(d in here for d in spec.devices):
        return None
    return (f"unsupported here: runs on {'/'.join(spec.devices)} only (this machine has "
            f"{'/'.join(here)})")


def method_table(specs: list[MethodSpec], verbose: bool = False) -> Table:
    width = max((len(s.name) for s in specs), default=6)
    table = Table(title="registered methods", title_justify="left", show_lines=False,
                  header_style="bold")
    table.add_column("method", no_wrap=True, min_width=width)
    table.add_column("family", no_wrap=True)
    table.add_column("what it is · params (defaults)", overflow="fold", ratio=1)
    for s in specs:
        lines = Text(s.description or "(no description)")
        lines.append("\n" + params_text(s), style="dim")
        if verbose:
            lines.append("\n" + capabilities_text(s), style="dim")
        why = s.unavailable_reason() or device_reason(s)
        if why is not None:
            lines.append("\n" + why, style="yellow")
        table.add_row(Text(s.name), Text(s.family), lines)
    return table


def suite_table() -> Table:
    from attnbench.suite import builtin_suites, load_suite

    table = Table(title="built-in suites", title_justify="left", header_style="bold")
    table.add_column("suite", no_wrap=True)
    table.add_column("description", overflow="fold", ratio=1)
    for name, path in sorted(builtin_suites().items()):
        try:
            desc = load_suite(str(path)).description
        except Exception as exc:  # noqa: BLE001
            desc = f"(invalid: {exc})"
        table.add_row(Text(name), Text(desc))
    return table


def add_cli(sub) -> None:
    p = sub.add_parser("list", help="registered methods (default) or built-in suites")
    p.add_argument("what", nargs="?", choices=["methods", "suites"], default="methods",
                   help="what to list (default methods)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="methods: also capabilities (causal, backward, devices, dtypes, levels)")
    p.set_defaults(func=cmd_list)


def cmd_list(args, console) -> int:
    from rich.text import Text

    from attnbench.registry import REGISTRY

    if args.what == "suites":
        console.print(suite_table())
        return 0
    console.print(method_table(REGISTRY.specs(), verbose=args.verbose))
    for err in REGISTRY.plugin_errors:
        console.print(Text(f"plugin not loaded: {err}", style="yellow"))
    return 0
