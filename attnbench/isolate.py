"""Fault isolation: cells run in a worker subprocess, so a segfault, an ``os._exit``, a hang or a CUDA
context poisoned by an illegal memory access costs one row (``crashed`` or ``timeout``), not the sweep.

The worker is ``python -P -m attnbench.isolate`` (``-P``: the working directory is not on its import
path). The protocol is JSON lines, never pickle: the parent writes requests to the worker's stdin and
the worker answers on a pipe of its own (``--reply-fd``), so whatever a method prints cannot be
mistaken for an answer.

  parent -> worker  {"op": "init", "suite": PATH, "plugins": [PATH, ...], "device": "cuda:0",
                     "cuda_graphs": false, "capacity_limit_mib": 0.0, "fault_log": PATH}
                    {"op": "run", "case": {"method": ..., "params": {...}, "n": ..., ...}}
  worker -> parent  {"op": "ready", "pid": 1234} | {"op": "fatal", "reason": "..."}
                    {"op": "row", "cell_id": "...", "row": {...}}

Cells cross the pipe resolved, as the JSON of their identity (``Case.identity``); the worker reads the
suite only for its timing, error and capacity settings, and checks that the case it rebuilt has the
cell id the parent sent (``cell_id`` in the request). It runs in
its own session (a Ctrl-C at the terminal reaches the parent only, which then kills the worker's
process group) and dies with its parent (``PR_SET_PDEATHSIG`` and a watchdog on the parent pid).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from attnbench.errors import one_line

STARTUP_TIMEOUT_S = 180.0  # importing torch on a loaded machine can take tens of seconds
CUDA_POISON = ("illegal memory access", "device-side assert", "unspecified launch failure",
               "misaligned address", "illegal instruction", "cuda error")


class WorkerFailed(Exception):
    """The worker died or did not answer in time; ``fields`` become the cell's row."""

    def __init__(self, fields: dict):
        super().__init__(fields.get("reason", ""))
        self.fields = fields


def _describe_exit(code: int | None) -> dict:
    if code is None:
        return {"status": "crashed", "reason": "worker closed its reply pipe but kept running"}
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return {"status": "crashed", "exit_code": code, "signal": name,
                "reason": f"worker killed by {name} (signal {-code})"}
    return {"status": "crashed", "exit_code": code, "reason": f"worker exited with code {code}"}


def _fault_where(log: Path, offset: int) -> str | None:
    """The innermost Python frame of the faulthandler dump the worker wrote after ``offset``."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            text = f.read(64_000)
    except OSError:
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', text)
    if not frames:
        return None
    # Most recent call first; the innermost frame outside the Python installation (stdlib, torch)
    # is the method's own line, e.g. the ctypes call rather than ctypes' internals.
    installed = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    own = [f for f in frames if not f[0].startswith(installed)]
    file, line, func = (own or frames)[0]
    return f"{file.rsplit('/', 1)[-1]}:{line} in {func}"


class Worker:
    """One worker process; ``run(case, timeout_s)`` returns the cell's row or raises WorkerFailed
    (after which this worker is dead and a new one must be started)."""

    def __init__(self, init: dict, startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.fault_log = Path(init["fault_log"])
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, "-P", "-m", "attnbench.isolate", "--reply-fd", str(write_fd),
               "--parent-pid", str(os.getpid())]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=(write_fd,),
                                         start_new_session=True, close_fds=True)
        finally:
            os.close(write_fd)
        self._fd, self._buf = read_fd, b""
        try:
            offset = self._log_size()
            self._send(init)
            msg = self._receive(startup_timeout_s, "start", offset)
        except BaseException:
            self.close()
            raise
        if msg.get("op") != "ready":
            self.close()
            raise WorkerFailed({"status": "crashed",
                                "reason": f"worker failed to start: {msg.get('reason', msg)}"})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, case, timeout_s: float | None) -> dict:
        # measured before the request: a worker that crashes at once may have written its
        # faulthandler dump before _receive would look
        offset = self._log_size()
        cell_id = case.cell_id
        self._send({"op": "run", "cell_id": cell_id, "case": case.identity()})
        msg = self._receive(timeout_s, "run", offset)
        if msg.get("op") != "row" or msg.get("cell_id") != cell_id:
            self.close()
            raise WorkerFailed({"status": "crashed", "reason": f"worker protocol error: {msg!r:.200}"})
        return msg["row"]

    def _send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker is gone; _receive sees the closed pipe and reports how it ended

    def _log_size(self) -> int:
        return self.fault_log.stat().st_size if self.fault_log.is_file() else 0

    def _receive(self, timeout_s: float | None, what: str, offset: int) -> dict:
        deadline = None if not timeout_s else time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.close()
                limit = f"{timeout_s:g} s"
                raise WorkerFailed({"status": "timeout", "reason": (
                    f"no result within {limit}; worker killed" if what == "run"
                    else f"worker did not start within {limit}")})
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                code = self._reap()
                fields = _describe_exit(code)
                where = _fault_where(self.fault_log, offset)
                if where:
                    fields["where"] = where
                if what == "start":
                    fields["reason"] = "worker failed to start: " + fields["reason"]
                raise WorkerFailed(fields)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            self.close()
            raise WorkerFailed({"status": "crashed", "reason": f"worker sent garbage: {line[:80]!r}"})
        return msg

    def _reap(self) -> int | None:
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.close()
            return None

    def close(self) -> None:
        """Stop the worker now: kill its whole process group (compile pools included) and reap it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin,):
            try:
                f.close()
            except OSError:
                pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class IsolatedCells:
    """Runs cells in workers: one per method (``mode="method"``) or one per cell (``"cell"``); a new
    worker after every crash or timeout."""

    def __init__(self, init: dict, mode: str = "method", timeout_s: float | None = None):
        if mode not in ("method", "cell"):
            raise ValueError(f"isolate mode {mode!r}: allowed: method, cell")
        self.init, self.mode, self.timeout_s = init, mode, timeout_s
        self.worker: Worker | None = None
        self.method: str | None = None
        self.started = 0

    def run(self, case) -> dict:
        if self.worker is not None and (self.mode == "cell" or case.method != self.method):
            self.close()
        try:
            if self.worker is None:
                self.worker = Worker(self.init, max(STARTUP_TIMEOUT_S, self.timeout_s or 0))
                self.method = case.method
                self.started += 1
            row = self.worker.run(case, self.timeout_s)
        except WorkerFailed as exc:
            self.close()
            return dict(exc.fields)
        if row.get("status") == "crashed":  # the worker found its CUDA context poisoned and quit
            self.close()
        return row

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us when the parent dies
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(0.5)

    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(3)
    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _cuda_broken(device) -> str | None:
    """Why the CUDA context can't be used any more, or None if a tiny kernel still runs."""
    import torch

    try:
        x = torch.ones(1, device=device)
        (x + 1).sum().item()
        torch.cuda.synchronize(device)
        return None
    except Exception as exc:  # noqa: BLE001
        return one_line(exc, 200)


def _warm_up(device) -> None:
    """Pay the measurement's one-off costs (the CPU memory profiler imports torch._dynamo, seconds)
    before reporting ready, so that they don't count against the first cell's timeout."""
    import torch

    from attnbench.measure import measure_memory

    measure_memory(lambda: torch.zeros(8, device=device), device)


def serve(reply_fd: int, parent_pid: int) -> int:
    """The worker's loop: answer ``run`` requests until stdin closes."""
    import faulthandler

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides about interruptions
    _die_with_parent(parent_pid)
    reply = os.fdopen(reply_fd, "w", encoding="utf-8")

    def send(msg: dict) -> None:
        reply.write(json.dumps(msg, default=str) + "\n")
        reply.flush()

    try:
        init = json.loads(sys.stdin.readline() or "null")
        if not isinstance(init, dict) or init.get("op") != "init":
            raise ValueError("expected an init message")
        log = open(init["fault_log"], "a", encoding="utf-8")
        faulthandler.enable(file=log, all_threads=False)

        from attnbench.case import Case
        from attnbench.context import CellContext
        from attnbench.dispatch import run_cell
        from attnbench.env import parse_device
        from attnbench.registry import load_plugin_file
        from attnbench.suite import load_suite

        for path in init.get("plugins", []):
            load_plugin_file(path)
        suite = load_suite(str(init["suite"]))
        device = parse_device(str(init["device"]))
        ctx = CellContext(suite=suite, device=device, cuda_graphs=bool(init.get("cuda_graphs")),
                          capacity_limit_mib=float(init.get("capacity_limit_mib") or 0.0),
                          run_dir=Path(init["suite"]).parent)  # suite.toml lives in the run dir
        _warm_up(device)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which records crashed rows
        send({"op": "fatal", "reason": one_line(exc)})
        return 2
    send({"op": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            case = Case.from_identity(msg["case"])
            if case.cell_id != msg.get("cell_id"):
                raise ValueError(f"rebuilt cell {case.cell_id} is not {msg.get('cell_id')}")
        except Exception as exc:  # noqa: BLE001 - a malformed request costs its cell, not the worker
            send({"op": "row", "cell_id": msg.get("cell_id"),
                  "row": {"status": "error", "reason": f"worker could not read the cell: {exc}"[:300]}})
            continue
        try:
            row = run_cell(ctx, case)
        except Exception as exc:  # noqa: BLE001 - e.g. its cleanup synchronising a broken context
            row = {"status": "error", "reason": one_line(exc)}
        why = None
        if device.type == "cuda" and (row.get("status") == "error" or any(
                s in str(row.get("reason", "")).lower() for s in CUDA_POISON)):
            why = _cuda_broken(device)
        if why is not None:
            row.update(status="crashed", reason=f"CUDA context unusable after this cell: {why}; "
                                                f"cell error: {row.get('reason', '')}"[:400])
        send({"op": "row", "cell_id": case.cell_id, "row": row})
        if why is not None:
            return 4  # a poisoned context fails every later cell: the parent starts a fresh worker
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnbench.isolate",
                                 description="attnbench cell worker (started by run --isolate)")
    ap.add_argument("--reply-fd", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    args = ap.parse_args(argv)
    return serve(args.reply_fd, args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
