"""The conformance kit: ``attnbench check METHOD`` runs the method contract on a registered method and
reports one row per check (pass, fail or skip, with a one-line detail).

Rows, at small shapes (B=2, H=2, D=32 and the smallest n in 128..1024 at which the default params
pass the method's constraints, so every built-in method checks in seconds on a CPU):

- ``build``: the default params build.
- ``output DTYPE`` / ``finite DTYPE``: the output has the input's shape, dtype and device
  (:func:`attnbench.contract.output_violation`) and no NaN or inf, for each declared dtype.
- ``inputs``: the forward leaves q, k, v (or x) bit for bit as it found them.
- ``deterministic``: a second build with the same seed, and a second call, give identical outputs.
- ``limit``: the declared limiting case (:class:`attnbench.registry.Limit`) against its float64
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

Tolerances of the limit (relative Frobenius error). It runs in float64 where the method does; there
rounding leaves at most ~4e-14 in the built-in methods (Nyström's exact pseudo-inverse of a 128×128
softmax matrix; ~1e-15 elsewhere), while a limit off by one key in a few hundred is wrong by 1e-3 or
more, so 1e-9 separates them with four decades to spare either way. A method that cannot run float64
is checked in its own dtype at roughly 100× the rounding measured there: fp32 1e-4 (measured ≤ 2e-5),
fp16 1e-2 (≤ 1.5e-3), bf16 5e-2 (≤ 1.3e-2), the input's own rounding to that dtype included.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from attnbench.contract import changed_inputs, fingerprint, output_violation
from attnbench.dtypes import DTYPE_NAMES, DTYPES
from attnbench.methodspec import BuildContext, Limit, MethodSpec, SharedScope, Unsupported
from attnbench.reference import causality_violation, error_metrics, is_causal, reference_attention

B, H, D = 2, 2, 32
SIZES = (128, 256, 512, 1024)
TOL = 1e-9
DTYPE_TOL = {torch.float64: TOL, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
CAUSAL_RTOL = 1e-5  # is_causal: the past may move by rounding of a global reduction, not more
SEEDS = 4  # the convergence check averages the error over this many seeds ...
CONVERGE_SCALE = 0.5  # ... on q, k ~ N(0, 0.5²): flat enough for random features to be informative


@dataclass(frozen=True)
class Row:
    check: str
    status: str  # pass | fail | skip
    detail: str


@dataclass
class Report:
    method: str
    device: str
    n: int | None = None
    rows: list[Row] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def ok(self) -> bool:
        return self.count("fail") == 0

    def row(self, check: str) -> Row:
        return next(r for r in self.rows if r.check == check)

    def summary(self) -> str:
        return f"{self.count('pass')} passed, {self.count('fail')} failed, {self.count('skip')} skipped"


class _Fail(Exception):
    """A check found a violation; the message is the row's detail."""


class _Skip(Exception):
    """A check does not apply; the message says why."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _fmt(x: float) -> str:
    return f"{x:.1e}" if x and (abs(x) < 1e-2 or abs(x) >= 1e4) else f"{x:.3g}"


def _shape(shape) -> str:
    return "×".join(map(str, shape))  # one word: a table wraps around it, never inside


def _params_text(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "default params"


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


class _Checker:
    def __init__(self, spec: MethodSpec, device: torch.device, dtypes: list[str], n: int):
        self.spec, self.device, self.dtypes, self.n = spec, device, dtypes, n
        self.params = spec.params()
        declared = [d for d in dtypes if d in spec.dtypes]  # check_method makes sure there is one
        self.main = DTYPES["fp32" if "fp32" in declared else declared[0]]
        self.hidden = spec.takes_hidden
        # causal only (a recurrence, say): every check builds it causal (issue 22)
        self.causal_only = spec.causal and all(
            (spec.unsupported_reason(self.params, BuildContext(n=n, heads=H, head_dim=D, batch=B,
                                                               device=device, causal=c)) is None) == c
            for c in (False, True))
        self.shape = (B, n, H * D) if self.hidden else (B, H, n, D)
        self.module = None
        self.outputs: dict[torch.dtype, torch.Tensor] = {}
        self.rows: list[Row] = []

    # helpers

    def ctx(self, dtype: torch.dtype | None = None, causal: bool | None = None,
            seed: int = 0) -> BuildContext:
        causal = self.causal_only if causal is None else causal
        return BuildContext(n=self.n, heads=H, head_dim=D, dtype=dtype or self.main, batch=B,
                            device=self.device, causal=causal, seed=seed, scope=SharedScope())

    def causal_modes(self) -> list[bool]:
        if self.causal_only:
            return [True]
        return [False, True] if self.spec.causal and not self.hidden else [False]

    def inputs(self, dtype: torch.dtype | None = None, seed: int = 0, scale: float = 1.0,
               grad: bool = False) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(1000 + seed)
        count = 1 if self.hidden else 3
        xs = [torch.randn(self.shape, generator=g) for _ in range(count)]
        if not self.hidden:
            xs[0], xs[1] = xs[0] * scale, xs[1] * scale
        return tuple(x.to(self.device, dtype or self.main).requires_grad_(grad) for x in xs)

    def reference(self, module, inputs, limit: Limit | None, causal: bool) -> tuple[torch.Tensor, str]:
        """The float64 reference of ``module`` on ``inputs`` and its name."""
        x64 = tuple(t.detach().double() for t in inputs)
        with torch.no_grad():
            if limit is not None and limit.reference is not None:
                name = getattr(limit.reference, "__name__", "").strip("_")
                return limit.reference(module, *x64).double(), \
                    name if name.isidentifier() else "its declared reference"
            if hasattr(module, "exact_reference"):
                return module.exact_reference(*x64).double(), "exact_reference"
            if self.hidden:
                raise _Fail(f"{type(module).__name__} takes hidden states but has no "
                            "exact_reference(x) hook to compare with")
            return reference_attention(*x64, causal=causal), "softmax"

    def row(self, check: str, fn: Callable[[], str]) -> bool:
        """Run one check: its return value is a pass detail; _Fail/_Skip/Unsupported and any other
        exception become fail or skip rows."""
        try:
            self.rows.append(Row(check, "pass", fn()))
            return True
        except _Skip as exc:
            self.rows.append(Row(check, "skip", str(exc)))
        except Unsupported as exc:
            self.rows.append(Row(check, "skip", f"unsupported: {exc}"))
        except _Fail as exc:
            self.rows.append(Row(check, "fail", str(exc)))
        except Exception as exc:  # noqa: BLE001 - a method may fail in any way; that is the finding
            self.rows.append(Row(check, "fail", one_line(exc)))
        return False

    # the checks

    def run(self) -> list[Row]:
        if not self.row("build", self.check_build):
            self.rows.append(Row("the rest", "skip", "not run: nothing was built"))
            return self.rows
        for name in self.dtypes:
            self.row(f"output {name}", lambda name=name: self.check_output(name))
            if DTYPES[name] in self.outputs:
                self.row(f"finite {name}", lambda name=name: self.check_finite(name))
        if self.main not in self.outputs:
            self.rows.append(Row("the rest", "skip", f"not run: no valid {DTYPE_NAMES[self.main]} "
                                                     "output to check"))
            return self.rows
        self.row("inputs", self.check_inputs)
        self.row("deterministic", self.check_deterministic)
        self.row("limit", self.check_limit)
        limit = self.spec.limit_case()
        if limit is not None and limit.converges is not None:
            self.row("converges", lambda: self.check_converges(limit))
        self.row("causal", self.check_causal)
        self.row("decode", self.check_decode)
        self.row("backward", self.check_backward)
        self.row("constraints", self.check_constraints)
        for level in ("layer", "model"):
            if level in self.spec.levels and not (self.hidden and level == "layer"):
                self.row(level, lambda level=level: self.check_level(level))
        return self.rows

    def check_build(self) -> str:
        self.module = self.spec.build(self.params, self.ctx())
        return f"default params at n={self.n}: {_shape(self.shape)} " \
               f"({'B×N×d_model' if self.hidden else 'B×H×N×D'})"

    def check_output(self, name: str) -> str:
        dtype = DTYPES[name]
        if name not in self.spec.dtypes:
            raise _Skip(f"declares dtypes {'/'.join(self.spec.dtypes)}")
        module = self.module if dtype == self.main else self.spec.build(self.params, self.ctx(dtype))
        with torch.no_grad():
            out = module(*self.inputs(dtype))
        if (why := output_violation(out, shape=self.shape, dtype=dtype, device=self.device)):
            raise _Fail(why)
        self.outputs[dtype] = out
        return f"{_shape(out.shape)} {name} on {self.device.type}"

    def check_finite(self, name: str) -> str:
        out = self.outputs[DTYPES[name]]
        bad = int((~torch.isfinite(out)).sum())
        if bad:
            raise _Fail(f"{bad} of {out.numel()} output values are NaN or inf")
        return f"all {out.numel()} values finite"

    def check_inputs(self) -> str:
        inputs = self.inputs()
        names = ("x",) if self.hidden else ("q", "k", "v")
        before = fingerprint(inputs)
        with torch.no_grad():
            self.module(*inputs)
        if changed := changed_inputs(names, before, fingerprint(inputs)):
            raise _Fail(f"the forward wrote into its input{'s' if len(changed) > 1 else ''} "
                        f"{', '.join(changed)}")
        return f"{', '.join(names)} unchanged, bit for bit"

    def check_deterministic(self) -> str:
        first = self.outputs[self.main]
        with torch.no_grad():
            again = self.module(*self.inputs())
            rebuilt = self.spec.build(self.params, self.ctx())(*self.inputs())
        for what, out in (("a second build with the same seed", rebuilt), ("a second call", again)):
            same = (out == first) | (out.isnan() & first.isnan())
            if not bool(same.all()):
                diff = float((out.double() - first.double()).abs().nan_to_num(float("inf")).max())
                raise _Fail(f"{what} gives another output (max |diff| {_fmt(diff)})")
        return "a second build with seed 0 and a second call give identical outputs"

    def check_limit(self) -> str:
        limit = self.spec.limit_case()
        if limit is None:
            raise _Fail("no limiting case declared: pass limit={params that make it exact} (or "
                        "limit=Limit(...), see attnbench.registry.Limit) to register_method")
        values = limit.params_for(self.ctx())
        if values is None and limit.reference is None:
            raise _Skip(f"no exact limit: {limit.note or 'converges checks the error instead'}")
        values = values or {}
        known = {f.name for f in dataclasses.fields(self.params)}
        if bad := sorted(set(values) - known):
            raise _Fail(f"limit names unknown params {bad}")
        p = dataclasses.replace(self.params, **values)
        modes = self.causal_modes()
        if limit.build is None:
            for causal in modes:
                if (why := self.spec.unsupported_reason(p, self.ctx(causal=causal))) is not None:
                    raise _Fail(f"limit {_params_text(values)} is rejected: {why} (a limit the "
                                "constraints refuse needs Limit(build=...))")

        def errors(dtype):
            pairs = [self._limit_error(limit, p, dtype, causal) for causal in modes]
            return [e for e, _ in pairs], pairs[0][1]

        dtype, where = torch.float64, "in fp64"
        try:
            try:
                errs, ref_name = errors(dtype)
            except (_Fail, _Skip):
                raise
            except Exception as exc:  # noqa: BLE001 - no float64 here: check in the method's dtype
                dtype = self.main
                where = f"in {DTYPE_NAMES[dtype]} (fp64 failed: {one_line(exc, 80)})"
                errs, ref_name = errors(dtype)
        except Unsupported as exc:
            raise _Fail(f"limit {_params_text(values)} is unsupported: {exc}") from exc
        tol = DTYPE_TOL[dtype] if limit.tol is None else max(limit.tol, DTYPE_TOL[dtype])
        causal_note = " (non-causal / causal)" if len(errs) > 1 else ""
        detail = (f"{_params_text(values)}: rel_err {' / '.join(_fmt(e) for e in errs)}{causal_note} "
                  f"{where} against {ref_name}, tol {_fmt(tol)}")
        if not all(e <= tol for e in errs):  # NaN fails too
            raise _Fail(detail)
        return detail + (f"; {limit.note}" if limit.note else "")

    def _limit_error(self, limit: Limit, p: Any, dtype: torch.dtype, causal: bool) -> tuple[float, str]:
        ctx = self.ctx(dtype, causal)
        module = (limit.build or self.spec.build)(p, ctx)
        inputs = self.inputs(dtype)
        with torch.no_grad():
            out = module(*inputs)
        if (why := output_violation(out, shape=self.shape, dtype=dtype, device=self.device)):
            raise _Fail(f"limit case: {why}")
        ref, name = self.reference(module, self.inputs(torch.float32), limit, causal)
        return error_metrics(out, ref)["rel_err"], name

    def check_converges(self, limit: Limit) -> str:
        knob = self.spec.budget
        budgets = limit.budgets_for(self.ctx())
        if knob is None:
            raise _Fail("converges needs the budget knob it varies: register_method(budget=...)")
        if len(budgets) < 2 or list(budgets) != sorted(set(budgets)):
            raise _Fail(f"converges needs two or more ascending {knob} values, got {budgets}")
        means = []
        for value in budgets:
            p = dataclasses.replace(self.params, **{knob: value})
            if (why := self.spec.unsupported_reason(p, self.ctx())) is not None:
                raise _Fail(f"{knob}={value} is rejected: {why}")
            errs = []
            for seed in range(SEEDS):
                module = self.spec.build(p, self.ctx(seed=seed))
                inputs = self.inputs(seed=100 + seed, scale=CONVERGE_SCALE)
                with torch.no_grad():
                    out = module(*inputs)
                ref, _ = self.reference(module, inputs, None, causal=False)
                errs.append(error_metrics(out, ref)["rel_err"])
            means.append(sum(errs) / len(errs))
        detail = (f"{knob} {', '.join(map(str, budgets))}: mean rel_err "
                  f"{', '.join(_fmt(e) for e in means)} over {SEEDS} seeds")
        if not all(b < a for a, b in zip(means, means[1:])):
            raise _Fail(detail + " (must fall as the budget grows)")
        return detail

    def check_causal(self) -> str:
        if not self.spec.causal:
            raise _Skip("declares no causal variant")
        if self.hidden:
            raise _Skip("takes hidden states: causality is checked on (q, k, v) methods")
        module = self.spec.build(self.params, self.ctx(causal=True))
        q, k, v = self.inputs()
        if is_causal(module, q, k, v, rtol=CAUSAL_RTOL):
            return "no earlier output moves when keys, values and queries from a later position change"
        with torch.no_grad():
            tol = CAUSAL_RTOL * float(module(q, k, v).abs().max())
        moved = {p: causality_violation(module, q, k, v, p)
                 for p in sorted({1, self.n // 3, self.n // 2, self.n - 1})}
        pos, worst = max(moved.items(), key=lambda kv: kv[1])
        raise _Fail(f"claims causal, but changing position {pos} onwards moves earlier outputs by "
                    f"{_fmt(worst)} (allowed {_fmt(tol)})")

    def check_decode(self) -> str:
        from attnbench.consistency import decode_consistency

        if (why := self.spec.decode_reason()) is not None:
            raise _Skip(why)
        if self.hidden:
            raise _Skip("takes hidden states: decode is checked on (q, k, v) methods")
        result = decode_consistency(self.spec, self.params, n=self.n, batch=B, heads=H,
                                    head_dim=D, dtype=self.main, device=self.device)
        if not result.ok:
            raise _Fail(result.detail())
        return result.detail()

    def check_backward(self) -> str:
        if not self.spec.backward:
            raise _Skip("declares no backward pass")
        names = ("x",) if self.hidden else ("q", "k", "v")
        notes = []
        for causal in self.causal_modes():
            module = self.spec.build(self.params, self.ctx(causal=causal))
            inputs = self.inputs(grad=True)
            out = module(*inputs)
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
            trainable = [p for p in module.parameters() if p.requires_grad]
            grads = torch.autograd.grad((out.float() * weights.to(out.device)).sum(),
                                        [*inputs, *trainable], allow_unused=True)
            where = " (causal)" if causal else ""
            for i, (name, grad) in enumerate(zip(names, grads)):
                if grad is None:
                    moved = self._depends_on(module, inputs, i)
                    if moved:
                        raise _Fail(f"no gradient for {name}{where}, though the output depends on it")
                    notes.append(f"{name} unused")
                elif (bad := int((~torch.isfinite(grad)).sum())):
                    raise _Fail(f"gradient of {name}{where}: {bad} of {grad.numel()} values NaN or inf")
            bad_params = sum(int((~torch.isfinite(g)).sum()) for g in grads[len(names):] if g is not None)
            if bad_params:
                raise _Fail(f"parameter gradients{where}: {bad_params} values NaN or inf")
        unused = sorted(set(notes))
        used = [n for n in names if f"{n} unused" not in unused]
        extra = f" and {len(trainable)} trainable parameter{'s' * (len(trainable) != 1)}" \
            if trainable else ""
        return (f"finite gradients for {', '.join(used)}{extra}"
                + (f"; {', '.join(unused)} (the output does not depend on it)" if unused else ""))

    def _depends_on(self, module, inputs, i: int) -> bool:
        with torch.no_grad():
            base = module(*inputs)
            moved = list(t.detach().clone() for t in inputs)
            moved[i] = moved[i] + torch.randn(moved[i].shape, generator=torch.Generator().manual_seed(3)
                                              ).to(moved[i])
            return not torch.equal(module(*moved), base)

    def check_constraints(self) -> str:
        hints = typing.get_type_hints(type(self.params))
        ints = [f.name for f in dataclasses.fields(self.params) if hints.get(f.name) is int]
        if not ints:
            raise _Skip("no integer knobs to probe")
        n = self.n
        rejected, ran, refused = 0, [], 0
        for name in ints:
            accepted = []
            for value in sorted({-1, 0, 1, 3, n - 1, n, n + 1}):
                p = dataclasses.replace(self.params, **{name: value})
                try:
                    why = self.spec.unsupported_reason(p, self.ctx())
                except Exception as exc:  # noqa: BLE001
                    raise _Fail(f"a constraint raised for {name}={value}: {one_line(exc, 100)}") from exc
                if why is None:
                    accepted.append(value)
                elif not isinstance(why, str) or not why.strip() or "\n" in why.strip():
                    raise _Fail(f"{name}={value}: a constraint's reason must be one line of text, "
                                f"got {why!r}")
                else:
                    rejected += 1
            for value in sorted({min(accepted), max(accepted)} if accepted else set()):
                p = dataclasses.replace(self.params, **{name: value})
                try:
                    module = self.spec.build(p, self.ctx())
                except Unsupported:
                    refused += 1
                    continue
                except Exception as exc:  # noqa: BLE001
                    raise _Fail(f"{name}={value} passes the constraints but does not build: "
                                f"{one_line(exc, 100)}") from exc
                try:
                    with torch.no_grad():
                        out = module(*self.inputs())
                except Exception as exc:  # noqa: BLE001
                    raise _Fail(f"{name}={value} passes the constraints but does not run: "
                                f"{one_line(exc, 100)}") from exc
                if (why := output_violation(out, shape=self.shape, dtype=self.main,
                                            device=self.device)):
                    raise _Fail(f"{name}={value}: {why}")
                if not bool(torch.isfinite(out).all()):
                    raise _Fail(f"{name}={value} passes the constraints but gives NaN or inf")
                ran.append(f"{name}={value}")
        return (f"{rejected} probe{'s' * (rejected != 1)} rejected with a reason; accepted extremes ran: "
                f"{', '.join(ran) or 'none'}" + (f" ({refused} refused by the factory)" if refused else ""))

    def check_level(self, level: str) -> str:
        from attnbench.levels import build_level

        model = build_level(self.spec, self.params, level, n=self.n, heads=H, head_dim=D, layers=2,
                            ffn_dim=2 * H * D, dtype=self.main, device=self.device,
                            causal=self.causal_only, seed=0, batch=B)
        x = torch.randn(B, self.n, H * D, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            out = model(x.to(self.device, self.main))
        if (why := output_violation(out, shape=x.shape, dtype=self.main, device=self.device)):
            raise _Fail(why)
        if not bool(torch.isfinite(out).all()):
            raise _Fail("output has NaN or inf")
        return f"{'2-layer encoder' if level == 'model' else 'self-attention layer'}: " \
               f"{_shape(out.shape)}, finite"


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
        report.rows = _Checker(spec, device, dtypes, n).run()
    return report


# the CLI verb

STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}
WIDTH = 80


def report_table(report: Report):
    """One method's rows as a rich Table that fits 80 columns (details wrap at spaces)."""
    from rich.table import Table
    from rich.text import Text

    where = f"n={report.n}, B={B}, H={H}, D={D}, " if report.n else ""
    table = Table(title=Text(f"check {report.method} ({where}{report.device})"), width=WIDTH,
                  header_style="bold", title_justify="left")
    table.add_column("check", no_wrap=True, min_width=13)
    table.add_column("status", no_wrap=True, min_width=6)
    table.add_column("detail", ratio=1, overflow="fold")
    for r in report.rows:
        table.add_row(Text(r.check), Text(r.status, style=STYLE[r.status]), Text(r.detail))
    return table


def summary_table(reports: list[Report]):
    """One row per method: its verdict, counts and the checks that failed (or why it was skipped)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"check: {len(reports)} methods"), width=WIDTH, header_style="bold",
                  title_justify="left")
    table.add_column("method", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("pass", justify="right", no_wrap=True)
    table.add_column("fail", justify="right", no_wrap=True)
    table.add_column("skip", justify="right", no_wrap=True)
    table.add_column("notes", ratio=1, overflow="fold")
    for r in reports:
        ran = r.count("pass") + r.count("fail")
        verdict = "fail" if not r.ok else "pass" if ran else "skip"
        notes = ", ".join(x.check for x in r.rows if x.status == "fail") if not r.ok else \
            _short(r.rows[0].detail) if not ran and r.rows else ""
        table.add_row(Text(r.method), Text(verdict, style=STYLE[verdict]), str(r.count("pass")),
                      str(r.count("fail")), str(r.count("skip")), Text(notes))
    return table


def _short(reason: str) -> str:
    """A skip reason for the summary: of the modules a missing package needs, only the first."""
    if m := re.match(r"unavailable: (.+?) not installed(.*)$", reason):
        mods = m[1].split(", ")
        return f"missing {mods[0]}{f' +{len(mods) - 1}' if len(mods) > 1 else ''}{m[2]}"
    return reason
