"""Running one cell: build (untimed), measure time and memory, compute error. Returns a row dict.

Failures never escape: an unsupported case, an out-of-memory, an exception or a non-finite output each
becomes a row with a ``status`` and a one-line ``reason``. What a cell is built from is in
:mod:`attnbench.cell_build`, its error phase in :mod:`attnbench.cell_error`.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from typing import Any

import torch

from attnbench.capacity import CapacityProbe, max_batch
from attnbench.case import Case
from attnbench.cell_build import (build_module, make_inputs, module_flops, module_stats, out_shape,
                                  probe_inputs)
from attnbench.cell_error import baseline_module, error_columns, error_skip_reason, own_reference
from attnbench.context import CellContext, allocated_bytes
from attnbench.contract import ContractViolation, changed_inputs, check_output, fingerprint
from attnbench.dtypes import to_torch
from attnbench.errors import Interrupted, one_line
from attnbench.gradient import gradient_columns
from attnbench.levels import attention_modules, count_parameters
from attnbench.measure import (Step, Timing, capture_cuda_graph, free_memory, is_oom, live_bytes,
                               measure_memory, take_samples, warm_up)
from attnbench.methodspec import Unsupported
from attnbench.registry import REGISTRY
from attnbench.roofline import copy_bandwidth_gbs, matmul_tflops, roofline_columns
from attnbench.schema import STATS
from attnbench.varlen import Packed

NOISY_IQR = 0.10  # a cell whose IQR exceeds 10% of its median is flagged noisy


class CellRun:
    """One cell in phases, so that the runner can interleave the timing of several cells:

    ``prepare`` (build, first call, stats; untimed), ``capture`` (the CUDA graph, in graph mode),
    ``sample`` (one block of timed eager calls or graph replays after a short warm-up; called again,
    it adds samples), ``finish`` (the timing columns, roofline, memory, error: the row) and
    ``release``. Whatever a phase raises ends the cell with a status row (``result``); later phases
    then do nothing.
    """

    def __init__(self, ctx: CellContext, case: Case):
        self.ctx, self.case = ctx, case
        self.row: dict[str, Any] = {}
        self.result: dict | None = None  # the final row, once the cell has one
        self.module = self.inputs = self.step = self.graph = None
        self.batch = case.batch
        self.dtype = to_torch(case.dtype)
        self.eager: list[float] = []
        self.replays: list[float] = []
        self._warmed: set[str] = set()
        self.failed = False  # an exception ended it (free its memory thoroughly)
        self._released = False

    @property
    def alive(self) -> bool:
        return self.result is None

    @contextlib.contextmanager
    def _guard(self):
        if not self.alive:
            yield False
            return
        try:
            yield True
        except Unsupported as exc:
            self.result = {**self.row, "status": "unsupported", "reason": str(exc)}
        except (KeyboardInterrupt, GeneratorExit, Interrupted):
            raise  # an interruption (the runner turns it into an interrupted run), not the cell's
        except BaseException as exc:  # noqa: BLE001 - any failure of a method becomes a row,
            # SystemExit and home-made BaseExceptions included: they must not end the sweep
            self.failed = True
            if is_oom(exc):
                self.result = {**self.row, "status": "oom", "reason": one_line(exc, 200)}
            else:
                tb = traceback.extract_tb(exc.__traceback__)[-3:]
                where = "; ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in tb)
                self.result = {**self.row, "status": "error", "reason": one_line(exc),
                               "where": where}

    def prepare(self) -> None:
        ctx, case, row, device = self.ctx, self.case, self.row, self.ctx.device
        with self._guard() as ok:
            if not ok:
                return
            dtype = self.dtype
            spec = REGISTRY.get(case.method)
            params = spec.params(**case.params_dict)
            t0 = time.perf_counter()
            self.module = module = build_module(spec, params, case, dtype, device)
            packed = [a for a in attention_modules(module) if isinstance(a, Packed)]
            if packed:  # packed documents: how many, how long, which kernel
                row.update(packed[0].packing())
            row["build_s"] = time.perf_counter() - t0
            if case.batching == "capacity":
                if device.type == "cpu" and not (ctx.capacity_limit_mib or
                                                 ctx.suite.capacity["limit_mib"]):
                    raise Unsupported("capacity mode on CPU needs a memory limit "
                                      "(attnbench run ... --capacity-limit-mib MIB)")
                cap = ctx.suite.capacity
                limit = ctx.capacity_limit_mib or cap["limit_mib"]
                probe = CapacityProbe(module, lambda b: probe_inputs(case, b, dtype, device),
                                      lambda b: out_shape(case, b), case.mode, device, limit)
                self.batch = max_batch(probe, device, limit, cap["max_batch"], cap["rel_tol"])
                row.update(max_batch=self.batch, capacity_probes=probe.probes,
                           capacity_rel_tol=cap["rel_tol"], capacity_limit_mib=limit or None)
                if self.batch == 0:
                    self.result = {**row, "status": "oom", "reason": "batch 1 does not fit in memory"}
                    return
            row.update(count_parameters(module))
            self.inputs = make_inputs(case, self.batch, dtype, device)
            self._prints = fingerprint(self.inputs)
            gen = torch.Generator().manual_seed(case.seed + 1)
            self.step = Step.make(module, self.inputs, case.mode, out_shape(case, self.batch), gen)
            first = self.step()  # first call: lazy setup and compilation happen here, untimed
            self.check_output(first if case.mode == "fwd" else self.step.forward_output())
            del first
            self.check_inputs("its first call")
            row[STATS] = module_stats(module)  # the method's own columns, apart from the harness's

    def check_output(self, out) -> None:
        """The output contract: a tensor of the cell's output shape, dtype and device (a violation
        is an ``error`` row saying what was expected and what came back)."""
        check_output(out, shape=out_shape(self.case, self.batch), dtype=self.dtype,
                     device=self.ctx.device)

    def check_inputs(self, when: str) -> None:
        """The inputs are as they were drawn: a method that writes into q, k, v (or x) would skew
        its own error and, through the shared float64 reference, every other method's."""
        names = ("q", "k", "v") if len(self.inputs) == 3 else ("x",)
        changed = changed_inputs(names, self._prints, fingerprint(self.step.inputs))
        if changed:
            raise ContractViolation(f"the method wrote into its input {', '.join(changed)} in place "
                                    f"(seen after {when}); inputs must be left unchanged")

    @property
    def graphs(self) -> bool:
        return self.ctx.cuda_graphs and self.ctx.device.type == "cuda"

    def capture(self) -> None:
        """Capture the step in a CUDA graph (graph mode only); a method that cannot be captured (a
        host sync, say) keeps its eager times and says why in ``graph_error``."""
        if not self.graphs or "graph_error" in self.row:
            return
        with self._guard() as ok:
            if not ok or self.graph is not None:
                return
            try:
                self.graph = capture_cuda_graph(self.step, self.ctx.device,
                                                warmup=self.ctx.suite.timing["warmup"])
            except Exception as exc:  # noqa: BLE001 - some methods can't be captured (host syncs)
                if is_oom(exc):
                    raise
                self.row["graph_error"] = one_line(exc)
                return
            # the captured call may have chosen otherwise than the eager one
            stats = self.row.setdefault(STATS, {})
            stats.update({f"graph_{key}": value for key, value in module_stats(self.module).items()
                          if stats.get(key) != value})

    def sample(self, kind: str, repeats: int, max_time_s: float) -> None:
        """One block of ``kind`` ("eager" calls or "graph" replays, the latter only where captured):
        warm-up calls, then up to ``repeats`` timed ones. A kind's first block also warms for the
        suite's ``warmup_s``."""
        t = self.ctx.suite.timing
        fn = self.step if kind == "eager" else self.graph.replay if self.graph is not None else None
        with self._guard() as ok:
            if not ok or fn is None:
                return
            warm_up(fn, self.ctx.device, warmup=t["warmup"],
                    warmup_s=0.0 if kind in self._warmed else t["warmup_s"])
            self._warmed.add(kind)
            samples = self.eager if kind == "eager" else self.replays
            samples += take_samples(fn, self.ctx.device, repeats=repeats, max_time_s=max_time_s,
                                    min_repeats=min(3, repeats))

    def finish(self, held_by_others: int = 0, rounds: int = 1) -> dict:
        """The row: timing columns from every block's samples, roofline, memory and error.
        ``held_by_others``: bytes other cells keep allocated meanwhile (left out of the peak)."""
        ctx, case, row, device = self.ctx, self.case, self.row, self.ctx.device
        with self._guard() as ok:
            if not ok:
                return self.result
            self.check_inputs("the timed calls")
            eager = Timing(tuple(self.eager))
            if self.graphs:
                row.update(eager_time_ms=eager.median, eager_time_ms_iqr=eager.iqr,
                           eager_samples_ms=list(eager.samples_ms))
            timing = Timing(tuple(self.replays), "cuda-graph") if self.replays else eager
            row["timing_mode"] = timing.mode
            if rounds > 1:
                row["timing_rounds"] = rounds
            row.update(time_ms=timing.median, time_ms_iqr=timing.iqr, time_ms_min=timing.min,
                       time_samples_ms=list(timing.samples_ms), n_samples=len(timing.samples_ms))
            row["noisy"] = timing.iqr > NOISY_IQR * timing.median
            row["tokens_per_s"] = self.batch * case.n / (timing.median / 1e3)
            if case.batching == "capacity":
                row["time_per_seq_ms"] = timing.median / self.batch
            step, module = self.step, self.module
            flops = module_flops(module, step.inputs)
            if flops:
                row["flops"] = flops * (3 if case.mode == "fwd_bwd" else 1)
                row["tflops_per_s"] = row["flops"] / (timing.median / 1e3) / 1e12
            if device.type == "cuda":
                rates = ctx.cached(("rates", case.dtype), lambda: {
                    "copy_gbs": copy_bandwidth_gbs(device),
                    "matmul_tflops": matmul_tflops(device, self.dtype)})
                row.update(roofline_columns(rates, step, out_shape(case, self.batch),
                                            timing.median, row.get("flops")))
            row.update(measure_memory(step, device, live=self.held_bytes(),
                                      held_by_others=held_by_others))
            skip = error_skip_reason(ctx, case)
            if skip is None:
                try:
                    err = error_columns(ctx, case, module, self.inputs, self.dtype, self)
                except Exception as exc:  # noqa: BLE001 - the reference must not sink a measured cell
                    if not is_oom(exc):
                        raise
                    free_memory(device, collect=True)
                    err = {"error_skipped": f"out of memory computing the float64 reference: "
                                            f"{one_line(exc, 120)}"}
                if err.pop("_nan", False):
                    self.result = {**row, "status": "nan", "reason": "non-finite values in the output"}
                    return self.result
                row.update(err)
                if case.mode == "fwd_bwd":  # issue 22: gradient error beside the forward's
                    shared = not own_reference(case, module)
                    row.update(gradient_columns(
                        module, self.inputs, step.grad_out, case.causal, device,
                        (lambda: baseline_module(ctx, case, self.dtype)) if shared else None))
            else:
                out = step.forward_output()
                self.check_output(out)
                self.check_inputs("the output check")
                if not torch.isfinite(out).all():
                    self.result = {**row, "status": "nan", "reason": "non-finite values in the output"}
                    return self.result
                del out
                row["error_skipped"] = skip
            row["status"], row["reason"] = "ok", ""
            if row.get("noisy"):
                row["reason"] = f"noisy: IQR {timing.iqr / timing.median:.0%} of median"
            self.result = row
        return self.result

    def held_bytes(self) -> int:
        """Bytes this cell keeps allocated between its phases (inputs, parameters, buffers)."""
        if self.step is None:
            return 0
        return live_bytes(self.step.inputs, [self.module])

    def release(self, baseline: int | None = None) -> None:
        """Drop the cell's tensors and free their memory (``baseline``: see ``free_memory``)."""
        if self._released:
            return
        self._released = True
        self.module = self.inputs = self.step = self.graph = None
        free_memory(self.ctx.device, collect=self.failed, baseline=baseline)


def run_timed_cell(ctx: CellContext, case: Case) -> dict:
    """Run one timed cell (mode fwd, fwd_bwd, capacity) start to end: its eager samples, then (graph
    mode) capture and replays."""
    baseline = allocated_bytes(ctx.device)
    cell = CellRun(ctx, case)
    t = ctx.suite.timing
    try:
        cell.prepare()
        cell.sample("eager", t["repeats"], t["max_time_s"])
        cell.capture()
        cell.sample("graph", t["repeats"], t["max_time_s"])
        cell.graph = None  # its pool goes with the cache that memory measurement empties
        return cell.finish()
    finally:
        cell.release(baseline)
