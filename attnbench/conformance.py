"""The conformance kit: ``attnbench check METHOD`` runs the method contract on a registered method and
reports one row per check (pass, fail or skip, with a one-line detail).

Rows, at small shapes (B=2, H=2, D=32 and the smallest n in 128..1024 at which the default params
pass the method's constraints, so every built-in method checks in seconds on a CPU):

- ``build``: the default params build.
- ``output DTYPE`` / ``finite DTYPE``: the output has the input's shape, dtype and device
  (:func:`attnbench.contract.output_violation`) and no NaN or inf, for each declared dtype.
- ``inputs``: the forward leaves q, k, v (or x) bit for bit as it found them.
- ``deterministic``: a second build with the same seed, and a second call, give identical outputs.
- ``limit``: the declared limiting case (:class:`attnbench.methodspec.Limit`) against its float64
  reference, non-causal and, when the method claims causal, causal.
- ``converges``: where declared, the error against exact attention falls as the budget knob grows.
- ``causal``: the causal variant is causal (:func:`attnbench.reference.is_causal`).
- ``decode``: for a method that declares decode, stepping token by token gives its causal forward's
  outputs (:mod:`attnbench.consistency`); skipped, with the reason, for the others.
- ``backward``: gradients of the inputs and trainable parameters exist and are finite (an input may
  have none only when the output does not depend on it, as k in shared-QK attention).
- ``constraints``: integer knobs probed around 0 and n: every declared constraint answers without
  raising, a rejection is a one-line reason, and the extreme accepted values build and run.
- ``layer`` / ``model``: the method inside a self-attention layer and a 2-layer encoder builds and runs.

The checks are :class:`attnbench.conformance_checks.Checker`; their shapes, tolerances and result
rows are in :mod:`attnbench.conformance_result` (tolerances explained there); the tables that
``attnbench check`` prints are in :mod:`attnbench.conformance_tables`. All are re-exported here.
"""
from __future__ import annotations

from typing import Any

import torch

from attnbench.conformance_checks import Checker
from attnbench.conformance_result import (B, CAUSAL_RTOL, CONVERGE_SCALE, D,  # noqa: F401 (re-exported)
                                          DTYPE_TOL, SEEDS, SIZES, TOL, H, Report, Row)
from attnbench.conformance_tables import (STYLE, WIDTH, report_table,  # noqa: F401 (re-exported)
                                          summary_table)
from attnbench.errors import one_line  # noqa: F401 (re-exported)
from attnbench.methodspec import BuildContext, MethodSpec


def pick_n(spec: MethodSpec, params: Any, device: torch.device) -> tuple[int | None, str | None]:
    """The smallest n in :data:`SIZES` at which ``params`` pass the constraints, or (None, reason)."""
    why = None
    for n in SIZES:
        reasons = [spec.unsupported_reason(params, BuildContext(n=n, heads=H, head_dim=D, batch=B,
                                                                device=device, causal=causal))
                   for causal in (False, True)]  # a causal-only method passes causal
        if None in reasons:
            return n, None
        why = reasons[0]
    return None, why


def check_method(spec: MethodSpec, device: torch.device | str = "cpu", dtypes: list[str] | None = None,
                 n: int | None = None) -> Report:
    """Run every conformance check on ``spec``; see the module docstring for the rows."""
    device = torch.device(device)
    report = Report(spec.name, device.type)
    if (why := spec.unavailable_reason()) is not None:
        report.rows.append(Row("available", "skip", why))
        return report
    if device.type not in spec.devices:
        report.rows.append(Row("available", "skip", f"runs on {'/'.join(spec.devices)}, not "
                                                    f"{device.type}"))
        return report
    dtypes = [d for d in (dtypes or spec.dtypes) if d != "fp64"] or ["fp32"]
    if device.type == "cuda" and "bf16" in dtypes and not torch.cuda.is_bf16_supported():
        dtypes.remove("bf16")
    if not any(d in spec.dtypes for d in dtypes):
        report.rows.append(Row("available", "skip", f"declares dtypes {'/'.join(spec.dtypes)}, "
                                                    f"none of {'/'.join(dtypes)}"))
        return report
    if n is None:
        n, why = pick_n(spec, spec.params(), device)
        if n is None:
            report.rows.append(Row("build", "fail", f"default params are rejected at every n in "
                                   f"{'..'.join(map(str, SIZES[::len(SIZES) - 1]))}: {why}"))
            return report
    report.n = n
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)  # methods that draw from the global RNG see the same state every check
        report.rows = Checker(spec, device, dtypes, n).run()
    return report
