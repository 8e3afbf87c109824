"""Causal workloads: ``prefill`` and ``decode`` cells (dispatched here from ``cell.run_cell``).

- ``prefill`` is the causal forward over n tokens: the measured cell of mode ``fwd`` with causal forced
  on (time, memory and error as any forward cell; its row keeps mode ``prefill``).
- ``decode`` runs single-token steps against a context of n tokens already processed, batch B, through
  the method's decode hooks (``init_state`` / ``step``, see :mod:`attnbench.registry`), at core level
  (q, k, v per token) or layer level (a hidden state per token through the layer's projections),
  drawn on the device for gaussian inputs (see ``DecodeCell._draw``). The prefix is folded into the
  state untimed (``init_state_ms`` records it); ``[decode] warmup`` steps
  follow untimed, then ``[decode] steps`` timed ones. Where the method declares a capturable step
  (``decode_graphs``) and the device is CUDA, the step is also captured in a CUDA graph and replayed
  for as many more timed steps (decode is launch-bound: the graph removes the launch gaps), and the row
  reports the replays, the eager times beside them.

A decode row: ``time_ms`` (median step: every sequence of the batch gets one token) and its spread,
``time_per_token_ms`` (the same, named for what it is), ``tokens_per_s`` (batch / step time),
``state_bytes`` and ``state_bytes_per_seq`` (what the method keeps between steps, counted at its
allocated size after the last step, when it has seen ``state_tokens`` tokens), ``peak_mem_mib`` (the
peak of one step, state, weights and input token included) and ``device_mem_mib`` (the device's total,
on CUDA) from which reports derive the sequences that fit. The cache each method preallocates holds the
prefix and every step the cell takes, so nothing is reallocated while it is timed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from typing import Any

import torch

from attnbench.case import Case
from attnbench.cell import run_timed_cell
from attnbench.context import CellContext, allocated_bytes
from attnbench.contract import check_output
from attnbench.decode_state import tensor_bytes
from attnbench.dtypes import to_torch
from attnbench.errors import Interrupted, one_line
from attnbench.inputs import make_hidden, make_qkv
from attnbench.levels import SelfAttention, build_level, count_parameters
from attnbench.measure import (MIB, Timing, capture_cuda_graph, free_memory, is_oom, live_bytes,
                               measure_memory, sync)
from attnbench.methodspec import Unsupported
from attnbench.registry import REGISTRY

NOISY_IQR = 0.10
GRAPH_WARMUP = 3  # steps the capture runs on a side stream before it records one
NOT_CHECKED = ("decode: outputs are not compared here; `attnbench check` (its decode row) and the "
               "tests compare stepping with the causal forward")


def plan_reason(case: Case) -> str | None:
    """Why a prefill or decode cell cannot run, known before anything is built (None: it can)."""
    if case.mode != "decode":
        return None
    if case.level == "model":
        return "decode runs at core and layer level (a model decodes layer by layer)"
    if case.batching == "capacity":
        return ("decode does not search the batch: the sequences that fit follow from the state "
                "bytes per sequence (reports show them)")
    if "lengths" in case.input_dict:
        return "decode of packed documents is not measured (lengths apply to fwd, fwd_bwd, prefill)"
    return None


def run_causal_cell(ctx: CellContext, case: Case) -> dict:
    """The row of a ``prefill`` or ``decode`` cell."""
    if case.mode == "prefill":
        return run_timed_cell(ctx, dataclasses.replace(case, mode="fwd", causal=True))
    return DecodeCell(ctx, case).run()


class Decoder:
    """The method's decode hooks at core level, or inside a self-attention layer (layer level: the
    token's hidden state through the layer's q, k, v projection, the step, the output projection)."""

    def __init__(self, module: torch.nn.Module, level: str):
        self.layer = module if level == "layer" else None
        self.attn = module.attn if isinstance(module, SelfAttention) else module
        for hook in ("init_state", "step"):
            if not callable(getattr(self.attn, hook, None)):
                raise Unsupported(f"{type(self.attn).__name__} has no {hook} hook (the method "
                                  "declares decode=True)")
        self.graphable = bool(getattr(self.attn, "decode_graphs", False))

    def _qkv(self, x: torch.Tensor):
        layer = self.layer
        b, n, d_model = x.shape
        qkv = layer.qkv(x).view(b, n, 3, layer.heads, d_model // layer.heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, n, D)

    def init(self, inputs: tuple, capacity: int):
        q, k, v = inputs if self.layer is None else self._qkv(inputs[0])
        return self.attn.init_state(q, k, v, capacity=capacity)

    def step(self, token: tuple, state):
        if self.layer is None:
            return self.attn.step(*token, state)
        x = token[0]  # (B, 1, d_model)
        q, k, v = self._qkv(x)
        out, state = self.attn.step(q, k, v, state)  # (B, H, 1, D)
        return self.layer.out(out.transpose(1, 2).reshape(x.shape)), state

    def state_bytes(self, state) -> int:
        hook = getattr(self.attn, "state_bytes", None)
        return int(hook(state)) if callable(hook) else tensor_bytes(state)


def _token(tokens: tuple, i: int) -> tuple:
    """Token ``i`` of pre-drawn tokens: (B, H, 1, D) each at core level, (B, 1, d_model) at layer."""
    return tuple(t[:, :, i:i + 1] if t.dim() == 4 else t[:, i:i + 1] for t in tokens)


class DecodeCell:
    """One decode cell: build, fold the prefix in, warm up, time the steps (eager, then graph
    replays where the step is capturable), memory of one step, the state's bytes."""

    def __init__(self, ctx: CellContext, case: Case):
        self.ctx, self.case = ctx, case
        self.device, self.dtype = ctx.device, to_torch(case.dtype)
        self.row: dict[str, Any] = {}
        self.failed = False

    @contextlib.contextmanager
    def _guard(self):
        try:
            yield
        except Unsupported as exc:
            self.row.update(status="unsupported", reason=str(exc))
        except (KeyboardInterrupt, GeneratorExit, Interrupted):
            raise
        except BaseException as exc:  # noqa: BLE001 - a failing method becomes a row
            self.failed = True
            if is_oom(exc):
                self.row.update(status="oom", reason=one_line(exc, 200))
            else:
                tb = traceback.extract_tb(exc.__traceback__)[-3:]
                self.row.update(status="error", reason=one_line(exc), where="; ".join(
                    f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in tb))

    def run(self) -> dict:
        baseline = allocated_bytes(self.device)
        try:
            with self._guard():
                self._measure()
            return self.row
        finally:
            self.state = self.decoder = self.tokens = None
            free_memory(self.device, collect=self.failed, baseline=baseline)

    def _out_shape(self) -> tuple[int, ...]:
        c = self.case
        return (c.batch, c.heads, 1, c.head_dim) if c.level == "core" else \
            (c.batch, 1, c.heads * c.head_dim)

    def _draw(self, count: int, salt: int) -> tuple:
        """``count`` tokens of q, k, v (core) or x (layer). Gaussian inputs are drawn on the device
        from a generator seeded by the cell's seed (a 128k-token prefix drawn on the host would take
        longer than the cell), q and k scaled by ``qk_scale``; other regimes as every cell draws."""
        c, device = self.case, self.device
        spec = c.input_dict
        if spec.get("regime", "gaussian") != "gaussian":
            if c.level == "core":
                return make_qkv(spec, batch=c.batch, heads=c.heads, n=count, head_dim=c.head_dim,
                                dtype=self.dtype, device=device, seed=c.seed + salt)
            return (make_hidden(batch=c.batch, n=count, d_model=c.heads * c.head_dim,
                                dtype=self.dtype, device=device, seed=c.seed + salt),)
        g = torch.Generator(device=device).manual_seed(c.seed * 1_000_003 + salt)
        if c.level != "core":
            return (torch.randn(c.batch, count, c.heads * c.head_dim, generator=g, device=device,
                                dtype=self.dtype),)
        scale = float(spec.get("qk_scale", 1.0))
        q, k, v = (torch.randn(c.batch, c.heads, count, c.head_dim, generator=g, device=device,
                               dtype=self.dtype) for _ in range(3))
        return q.mul_(scale), k.mul_(scale), v

    def _measure(self) -> None:
        ctx, case, row, device = self.ctx, self.case, self.row, self.device
        if (why := plan_reason(case)) is not None:
            raise Unsupported(why)
        dec_t = ctx.suite.decode
        warmup, steps = dec_t["warmup"], dec_t["steps"]
        graphs = device.type == "cuda" and (dec_t["cuda_graphs"] or ctx.cuda_graphs)
        spec = REGISTRY.get(case.method)
        if (why := spec.decode_reason()) is not None:
            raise Unsupported(why)
        t0 = time.perf_counter()
        module = build_level(spec, spec.params(**case.params_dict), case.level, n=case.n,
                             heads=case.heads, head_dim=case.head_dim, layers=case.layers,
                             ffn_dim=case.ffn_dim, dtype=self.dtype, device=device, causal=True,
                             seed=case.seed, batch=case.batch)
        row["build_s"] = time.perf_counter() - t0
        row.update(count_parameters(module))
        self.decoder = dec = Decoder(module, case.level)
        total = warmup + steps + (GRAPH_WARMUP + steps if graphs and dec.graphable else 0) + 1
        self.tokens = self._draw(total, salt=1)
        capacity = case.n + total  # every token this cell steps: no reallocation while timed
        with torch.no_grad():
            prefix = self._draw(case.n, salt=0)
            sync(device)
            t0 = time.perf_counter()
            self.state = dec.init(prefix, capacity)
            sync(device)
            row["init_state_ms"] = (time.perf_counter() - t0) * 1e3
            del prefix
            used = 0
            out, self.state = dec.step(_token(self.tokens, used), self.state)
            used += 1
            check_output(out, shape=self._out_shape(), dtype=self.dtype, device=device)
            for _ in range(warmup - 1):
                out, self.state = dec.step(_token(self.tokens, used), self.state)
                used += 1
            finite = bool(torch.isfinite(out).all())
            eager, used = self._eager(used, steps)
            replays: list[float] = []
            if graphs and dec.graphable:
                replays, used, finite_g = self._graph(used, steps)
                finite = finite and finite_g
            elif graphs:
                row["graph_error"] = (f"{case.method} declares no capturable step (decode_graphs): "
                                      "its step reads a cache up to a length held on the host")
            held = dec.state_bytes(self.state) + live_bytes(self.tokens, [module])
            mem = measure_memory(lambda: dec.step(_token(self.tokens, used), self.state)[0],
                                 device, live=held)
            used += 1
        self._timing_columns(eager, replays)
        state_bytes = dec.state_bytes(self.state)
        row.update(mem, state_bytes=state_bytes, state_bytes_per_seq=state_bytes / case.batch,
                   state_mib=state_bytes / MIB, state_tokens=case.n + used, decode_steps=steps,
                   decode_warmup=warmup, error_skipped=NOT_CHECKED)
        if device.type == "cuda":
            row["device_mem_mib"] = torch.cuda.get_device_properties(device).total_memory / MIB
        if not finite:
            row.update(status="nan", reason="non-finite values in the step outputs")
            return
        row["status"], row["reason"] = "ok", ""
        if row.get("noisy"):
            row["reason"] = f"noisy: IQR {row['time_ms_iqr'] / row['time_ms']:.0%} of median"

    def _eager(self, used: int, steps: int) -> tuple[list[float], int]:
        device, dec = self.device, self.decoder
        samples = []
        for _ in range(steps):
            token = _token(self.tokens, used)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                _, self.state = dec.step(token, self.state)
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                _, self.state = dec.step(token, self.state)
                samples.append((time.perf_counter() - t0) * 1e3)
            used += 1
        return samples, used

    def _graph(self, used: int, steps: int) -> tuple[list[float], int, bool]:
        """Capture one step on static input buffers (the state is updated in place on the device),
        then replay it ``steps`` times, a new token copied in before each timed replay."""
        dec, device = self.decoder, self.device
        static = tuple(t.clone() for t in _token(self.tokens, used))
        box: dict = {}

        def step():
            box["out"], _ = dec.step(static, self.state)
            return box["out"]

        try:
            graph = capture_cuda_graph(step, device, warmup=GRAPH_WARMUP)
        except Exception as exc:  # noqa: BLE001 - a step may not be capturable after all
            if is_oom(exc):
                raise
            self.row["graph_error"] = one_line(exc)
            return [], used + GRAPH_WARMUP, True
        used += GRAPH_WARMUP
        samples = []
        for _ in range(steps):
            for dst, src in zip(static, _token(self.tokens, used)):
                dst.copy_(src)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
            used += 1
        finite = bool(torch.isfinite(box["out"]).all())
        del graph
        return samples, used, finite

    def _timing_columns(self, eager: list[float], replays: list[float]) -> None:
        row, batch = self.row, self.case.batch
        plain = Timing(tuple(eager))
        timing = Timing(tuple(replays), "cuda-graph") if replays else plain
        if replays:
            row.update(eager_time_ms=plain.median, eager_time_ms_iqr=plain.iqr,
                       eager_samples_ms=list(plain.samples_ms))
        row.update(timing_mode=timing.mode, time_ms=timing.median, time_ms_iqr=timing.iqr,
                   time_ms_min=timing.min, time_samples_ms=list(timing.samples_ms),
                   n_samples=len(timing.samples_ms), time_per_token_ms=timing.median,
                   tokens_per_s=batch / (timing.median / 1e3) if timing.median > 0 else float("inf"))
        row["noisy"] = timing.iqr > NOISY_IQR * timing.median
