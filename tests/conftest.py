import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
REPO = TESTS.parent
PLUGINS = TESTS / "plugins"


def pytest_collection_modifyitems(config, items):
    # a test skipped for want of CUDA is a GPU test: `pytest -m gpu` on a GPU machine runs them all
    for item in items:
        if any("CUDA" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.gpu)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def triton_device(module: str, kernel: str) -> torch.device:
    """Where a Triton kernel module's tests run: CUDA, or the CPU when ``attnbench.methods.<module>``
    (e.g. ``lsh.lsh_triton``) was imported under TRITON_INTERPRET=1 (its ``kernel`` is then
    interpreted); skips otherwise."""
    import importlib

    from attnbench.kernels import triton_available, triton_interpreting

    if not triton_available():
        pytest.skip("triton not installed (pip install triton)")
    if torch.cuda.is_available():
        return torch.device("cuda")
    mod = importlib.import_module(f"attnbench.methods.{module}")
    if not (triton_interpreting() and type(getattr(mod, kernel)).__name__ == "InterpretedFunction"):
        pytest.skip("no CUDA, and the kernels were imported before TRITON_INTERPRET=1 could be set")
    return torch.device("cpu")


@pytest.fixture
def faulty_plugin():
    """Register the test plugin's failing methods (once per process) and return its path."""
    from attnbench.registry import REGISTRY, load_plugin_file

    path = PLUGINS / "faulty.py"
    if "t_boom" not in REGISTRY:
        load_plugin_file(path)
    return path


@pytest.fixture
def write_suite(tmp_path):
    def write(text: str, name: str = "suite.toml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return write


TINY = """
name = "tiny"
baseline = "sdpa"
[sweep]
n = [64, 128]
batch = [1]
heads = [2]
head_dim = [16]
mode = ["fwd"]
[timing]
warmup = 1
warmup_s = 0.0
repeats = 2
"""


@pytest.fixture
def tiny_suite(write_suite):
    def make(methods: str, extra: str = "") -> Path:
        return write_suite(TINY + extra + "\n" + methods)

    return make


def cli_env() -> dict:
    env = dict(os.environ)
    # no empty entry: that would put the working directory on the subprocess's import path
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "attnbench.cli", *args]
