"""Provenance: what ran, where, with which software — stored with every run."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import attnbench
from attnbench.errors import BadInput


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict:
    root = Path(attnbench.__file__).resolve().parent.parent
    commit = _run(["git", "rev-parse", "HEAD"], root) if shutil.which("git") else None
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], root)
    return {"git_commit": commit, "git_dirty": bool(status)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = None
        if shutil.which("nvidia-smi"):
            driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                           f"--id={device.index or 0}"])
        return {"device": str(device), "device_name": props.name,
                "device_memory_mib": props.total_memory // 2**20,
                "device_capability": f"{props.major}.{props.minor}",
                "device_sm_count": props.multi_processor_count, "driver": driver}
    return {"device": "cpu", "device_name": cpu_name(), "driver": None,
            "cpu_threads": torch.get_num_threads()}


def provenance(device: torch.device | None = None) -> dict:
    device = device or torch.device("cpu")
    return {
        "attnbench_version": attnbench.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "hostname": platform.node(),
        **device_info(device),
        **git_info(),
    }


def device_tag(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).replace("NVIDIA ", "")
        return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").lower()[:24] or "cuda"
    return "cpu"


def parse_device(name: str, *, present: bool = True) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``. With ``present=False`` a CUDA device is accepted on a
    machine without one (validating or dry-running a GPU suite offline); nothing may run on it."""
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise BadInput(f"--device {name!r}: allowed: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {name!r}: allowed: cpu, cuda, cuda:N")
    if device.type == "cuda" and present:
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: CUDA is not available in this torch "
                           f"({torch.__version__}); use --device cpu (validate and --dry-run "
                           "check a GPU suite without a GPU)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInput(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def host_load(device: torch.device | None = None) -> dict:
    """How busy the host is now: load averages over 1, 5 and 15 minutes against the CPU count, and
    on CUDA the GPU's utilisation and memory in use by every process (from nvidia-smi). Recorded
    before and after a run: a loaded host explains noisy timings that nothing else in a row does."""
    out: dict = {"cpu_count": os.cpu_count()}
    try:
        out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        out["loadavg"] = None
    if device is not None and device.type == "cuda" and shutil.which("nvidia-smi"):
        line = _run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                     "--format=csv,noheader,nounits", f"--id={device.index or 0}"])
        if line:
            util, used = (part.strip() for part in line.split(",")[:2])
            out.update(gpu_util_pct=float(util) if util.replace(".", "").isdigit() else None,
                       gpu_mem_used_mib=float(used) if used.replace(".", "").isdigit() else None)
    return out
