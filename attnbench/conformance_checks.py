"""The checks of the conformance kit, one method at a time (:class:`Checker`); what each row checks is
listed in :mod:`attnbench.conformance`, which runs them (:func:`attnbench.conformance.check_method`).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

import torch

from attnbench.conformance_result import (B, CAUSAL_RTOL, CONVERGE_SCALE, D, DTYPE_TOL, SEEDS, H,
                                          CheckFailed, CheckSkipped, Row, fmt_number, params_text,
                                          shape_text)
from attnbench.contract import changed_inputs, fingerprint, output_violation
from attnbench.dtypes import DTYPE_NAMES, DTYPES
from attnbench.errors import one_line
from attnbench.methodspec import BuildContext, Limit, MethodSpec, SharedScope, Unsupported
from attnbench.reference import causality_violation, error_metrics, is_causal, reference_attention


class Checker:
    """The checks of one method at one n: :meth:`run` gives their rows (module docstring of
    :mod:`attnbench.conformance`)."""

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
                raise CheckFailed(f"{type(module).__name__} takes hidden states but has no "
                            "exact_reference(x) hook to compare with")
            return reference_attention(*x64, causal=causal), "softmax"

    def row(self, check: str, fn: Callable[[], str]) -> bool:
        """Run one check: its return value is a pass detail; CheckFailed/CheckSkipped/Unsupported and
        any other exception become fail or skip rows."""
        try:
            self.rows.append(Row(check, "pass", fn()))
            return True
        except CheckSkipped as exc:
            self.rows.append(Row(check, "skip", str(exc)))
        except Unsupported as exc:
            self.rows.append(Row(check, "skip", f"unsupported: {exc}"))
        except CheckFailed as exc:
            self.rows.append(Row(check, "fail", str(exc)))
        except Exception as exc:  # noqa: BLE001 - a method may fail in any way; that is the finding
            self.rows.append(Row(check, "fail", one_line(exc, 200)))
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
        return f"default params at n={self.n}: {shape_text(self.shape)} " \
               f"({'B×N×d_model' if self.hidden else 'B×H×N×D'})"

    def check_output(self, name: str) -> str:
        dtype = DTYPES[name]
        if name not in self.spec.dtypes:
            raise CheckSkipped(f"declares dtypes {'/'.join(self.spec.dtypes)}")
        module = self.module if dtype == self.main else self.spec.build(self.params, self.ctx(dtype))
        with torch.no_grad():
            out = module(*self.inputs(dtype))
        if (why := output_violation(out, shape=self.shape, dtype=dtype, device=self.device)):
            raise CheckFailed(why)
        self.outputs[dtype] = out
        return f"{shape_text(out.shape)} {name} on {self.device.type}"

    def check_finite(self, name: str) -> str:
        out = self.outputs[DTYPES[name]]
        bad = int((~torch.isfinite(out)).sum())
        if bad:
            raise CheckFailed(f"{bad} of {out.numel()} output values are NaN or inf")
        return f"all {out.numel()} values finite"

    def check_inputs(self) -> str:
        inputs = self.inputs()
        names = ("x",) if self.hidden else ("q", "k", "v")
        before = fingerprint(inputs)
        with torch.no_grad():
            self.module(*inputs)
        if changed := changed_inputs(names, before, fingerprint(inputs)):
            raise CheckFailed(f"the forward wrote into its input{'s' if len(changed) > 1 else ''} "
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
                raise CheckFailed(f"{what} gives another output (max |diff| {fmt_number(diff)})")
        return "a second build with seed 0 and a second call give identical outputs"

    def check_limit(self) -> str:
        limit = self.spec.limit_case()
        if limit is None:
            raise CheckFailed("no limiting case declared: pass limit={params that make it exact} (or "
                        "limit=Limit(...), see attnbench.methodspec.Limit) to register_method")
        values = limit.params_for(self.ctx())
        if values is None and limit.reference is None:
            raise CheckSkipped(f"no exact limit: {limit.note or 'converges checks the error instead'}")
        values = values or {}
        known = {f.name for f in dataclasses.fields(self.params)}
        if bad := sorted(set(values) - known):
            raise CheckFailed(f"limit names unknown params {bad}")
        p = dataclasses.replace(self.params, **values)
        modes = self.causal_modes()
        if limit.build is None:
            for causal in modes:
                if (why := self.spec.unsupported_reason(p, self.ctx(causal=causal))) is not None:
                    raise CheckFailed(f"limit {params_text(values)} is rejected: {why} (a limit the "
                                "constraints refuse needs Limit(build=...))")

        def errors(dtype):
            pairs = [self._limit_error(limit, p, dtype, causal) for causal in modes]
            return [e for e, _ in pairs], pairs[0][1]

        dtype, where = torch.float64, "in fp64"
        try:
            try:
                errs, ref_name = errors(dtype)
            except (CheckFailed, CheckSkipped):
                raise
            except Exception as exc:  # noqa: BLE001 - no float64 here: check in the method's dtype
                dtype = self.main
                where = f"in {DTYPE_NAMES[dtype]} (fp64 failed: {one_line(exc, 80)})"
                errs, ref_name = errors(dtype)
        except Unsupported as exc:
            raise CheckFailed(f"limit {params_text(values)} is unsupported: {exc}") from exc
        tol = DTYPE_TOL[dtype] if limit.tol is None else max(limit.tol, DTYPE_TOL[dtype])
        causal_note = " (non-causal / causal)" if len(errs) > 1 else ""
        detail = (f"{params_text(values)}: rel_err {' / '.join(fmt_number(e) for e in errs)}{causal_note} "
                  f"{where} against {ref_name}, tol {fmt_number(tol)}")
        if not all(e <= tol for e in errs):  # NaN fails too
            raise CheckFailed(detail)
        return detail + (f"; {limit.note}" if limit.note else "")

    def _limit_error(self, limit: Limit, p: Any, dtype: torch.dtype, causal: bool) -> tuple[float, str]:
        ctx = self.ctx(dtype, causal)
        module = (limit.build or self.spec.build)(p, ctx)
        inputs = self.inputs(dtype)
        with torch.no_grad():
            out = module(*inputs)
        if (why := output_violation(out, shape=self.shape, dtype=dtype, device=self.device)):
            raise CheckFailed(f"limit case: {why}")
        ref, name = self.reference(module, self.inputs(torch.float32), limit, causal)
        return error_metrics(out, ref)["rel_err"], name

    def check_converges(self, limit: Limit) -> str:
        knob = self.spec.budget
        budgets = limit.budgets_for(self.ctx())
        if knob is None:
            raise CheckFailed("converges needs the budget knob it varies: register_method(budget=...)")
        if len(budgets) < 2 or list(budgets) != sorted(set(budgets)):
            raise CheckFailed(f"converges needs two or more ascending {knob} values, got {budgets}")
        means = []
        for value in budgets:
            p = dataclasses.replace(self.params, **{knob: value})
            if (why := self.spec.unsupported_reason(p, self.ctx())) is not None:
                raise CheckFailed(f"{knob}={value} is rejected: {why}")
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
                  f"{', '.join(fmt_number(e) for e in means)} over {SEEDS} seeds")
        if not all(b < a for a, b in zip(means, means[1:])):
            raise CheckFailed(detail + " (must fall as the budget grows)")
        return detail

    def check_causal(self) -> str:
        if not self.spec.causal:
            raise CheckSkipped("declares no causal variant")
        if self.hidden:
            raise CheckSkipped("takes hidden states: causality is checked on (q, k, v) methods")
        module = self.spec.build(self.params, self.ctx(causal=True))
        q, k, v = self.inputs()
        if is_causal(module, q, k, v, rtol=CAUSAL_RTOL):
            return "no earlier output moves when keys, values and queries from a later position change"
        with torch.no_grad():
            tol = CAUSAL_RTOL * float(module(q, k, v).abs().max())
        moved = {p: causality_violation(module, q, k, v, p)
                 for p in sorted({1, self.n // 3, self.n // 2, self.n - 1})}
        pos, worst = max(moved.items(), key=lambda kv: kv[1])
        raise CheckFailed(f"claims causal, but changing position {pos} onwards moves earlier outputs by "
                    f"{fmt_number(worst)} (allowed {fmt_number(tol)})")

    def check_decode(self) -> str:
        from attnbench.consistency import decode_consistency

        if (why := self.spec.decode_reason()) is not None:
            raise CheckSkipped(why)
        if self.hidden:
            raise CheckSkipped("takes hidden states: decode is checked on (q, k, v) methods")
        result = decode_consistency(self.spec, self.params, n=self.n, batch=B, heads=H,
                                    head_dim=D, dtype=self.main, device=self.device)
        if not result.ok:
            raise CheckFailed(result.detail())
        return result.detail()

    def check_backward(self) -> str:
        if not self.spec.backward:
            raise CheckSkipped("declares no backward pass")
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
                        raise CheckFailed(f"no gradient for {name}{where}, though the output depends "
                                          "on it")
                    notes.append(f"{name} unused")
                elif (bad := int((~torch.isfinite(grad)).sum())):
                    raise CheckFailed(f"gradient of {name}{where}: {bad} of {grad.numel()} values NaN "
                                      "or inf")
            bad_params = sum(int((~torch.isfinite(g)).sum()) for g in grads[len(names):] if g is not None)
            if bad_params:
                raise CheckFailed(f"parameter gradients{where}: {bad_params} values NaN or inf")
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
            raise CheckSkipped("no integer knobs to probe")
        n = self.n
        rejected, ran, refused = 0, [], 0
        for name in ints:
            accepted = []
            for value in sorted({-1, 0, 1, 3, n - 1, n, n + 1}):
                p = dataclasses.replace(self.params, **{name: value})
                try:
                    why = self.spec.unsupported_reason(p, self.ctx())
                except Exception as exc:  # noqa: BLE001
                    raise CheckFailed(f"a constraint raised for {name}={value}: "
                                      f"{one_line(exc, 100)}") from exc
                if why is None:
                    accepted.append(value)
                elif not isinstance(why, str) or not why.strip() or "\n" in why.strip():
                    raise CheckFailed(f"{name}={value}: a constraint's reason must be one line of text, "
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
                    raise CheckFailed(f"{name}={value} passes the constraints but does not build: "
                                f"{one_line(exc, 100)}") from exc
                try:
                    with torch.no_grad():
                        out = module(*self.inputs())
                except Exception as exc:  # noqa: BLE001
                    raise CheckFailed(f"{name}={value} passes the constraints but does not run: "
                                f"{one_line(exc, 100)}") from exc
                if (why := output_violation(out, shape=self.shape, dtype=self.main,
                                            device=self.device)):
                    raise CheckFailed(f"{name}={value}: {why}")
                if not bool(torch.isfinite(out).all()):
                    raise CheckFailed(f"{name}={value} passes the constraints but gives NaN or inf")
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
            raise CheckFailed(why)
        if not bool(torch.isfinite(out).all()):
            raise CheckFailed("output has NaN or inf")
        return f"{'2-layer encoder' if level == 'model' else 'self-attention layer'}: " \
               f"{shape_text(out.shape)}, finite"
