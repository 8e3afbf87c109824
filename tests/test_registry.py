"""The registry contract: strict names, plugins from files and entry points, capabilities."""
import dataclasses
import importlib
import importlib.metadata
import sys
import textwrap

import pytest
import torch
from torch import nn

from attnbench.cli import main
from attnbench.registry import (REGISTRY, BuildContext, NoParams, Registry, RegistryError,
                                SharedScope, load_plugin_file, register_method)
from attnbench.registry import load_builtins


@pytest.fixture(autouse=True, scope="module")
def _builtins_loaded():
    """These tests speak of built-in methods (sdpa, xformers): load them, as any CLI verb does,
    so the file passes on its own and not only after another test file loaded them."""
    load_builtins()


def test_duplicate_name_names_both_definitions():
    reg = Registry()

    @register_method("dup", family="other", exact=False, registry=reg)
    def first(p, ctx):
        return nn.Identity()

    with pytest.raises(RegistryError) as err:
        @register_method("dup", family="other", exact=False, registry=reg)
        def second(p, ctx):
            return nn.Identity()

    msg = str(err.value)
    assert "duplicate method name 'dup'" in msg
    assert "first" in msg and "second" in msg and "test_registry.py" in msg


def test_duplicate_of_builtin_is_refused():
    with pytest.raises(RegistryError, match="duplicate method name 'sdpa'.*full/__init__.py"):
        @register_method("sdpa", family="exact", exact=True)
        def again(p, ctx):
            return nn.Identity()


def test_unknown_name_suggests_close_matches_and_lists_all():
    with pytest.raises(RegistryError) as err:
        REGISTRY.get("sdap")
    msg = str(err.value)
    assert "Unknown method 'sdap'" in msg and "Did you mean: sdpa?" in msg
    assert "Available:" in msg and "naive" in msg


def test_params_must_be_a_dataclass():
    with pytest.raises(RegistryError, match="params must be a dataclass"):
        register_method("bad", family="other", exact=False, params=dict)


def test_shared_scope_returns_the_same_object():
    scope = SharedScope()
    a = scope.get_or_create("E", lambda: torch.zeros(3))
    b = scope.get_or_create("E", lambda: torch.ones(3))
    assert a is b and len(scope) == 1


def test_build_context_generator_is_reproducible_and_layer_dependent():
    c0 = BuildContext(n=8, heads=1, head_dim=4, seed=3, layer=0)
    c1 = dataclasses.replace(c0, layer=1)
    a = torch.randn(4, generator=c0.generator())
    assert torch.equal(a, torch.randn(4, generator=c0.generator()))
    assert not torch.equal(a, torch.randn(4, generator=c1.generator()))


def test_xformers_unavailable_reason_here():
    spec = REGISTRY.get("xformers")
    if spec.unavailable_reason() is None:
        pytest.skip("xformers is installed here")
    assert "xformers not installed" in spec.unavailable_reason()
    assert "attnbench[xformers]" in spec.unavailable_reason()


def test_unsupported_device_is_declared():
    """A method that declares CUDA only is unsupported on the CPU for that reason (not because an
    optional package is missing, which would answer first for xformers here)."""
    local = Registry()
    register_method("t_cuda_only", family="other", exact=True, params=NoParams, devices=("cuda",),
                    registry=local)(lambda p, ctx: None)
    spec = local.get("t_cuda_only")
    why = spec.unsupported_reason(NoParams(), BuildContext(n=8, heads=1, head_dim=8))
    assert why == "t_cuda_only runs on cuda, not cpu"
    on_cuda = BuildContext(n=8, heads=1, head_dim=8, device=torch.device("cuda"))
    assert spec.unsupported_reason(NoParams(), on_cuda) is None


PLUGIN = '''
from dataclasses import dataclass
import torch.nn.functional as F
from torch import nn
from attnbench import register_method

@dataclass(frozen=True)
class P:
    scale: float = 1.0

class Scaled(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v) * self.s

@register_method("{name}", family="other", exact=False, params=P)
def build(p, ctx):
    return Scaled(p.scale)
'''


def _suite(tmp_path, method):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(f"""
        name = "plug"
        [sweep]
        n = [32]
        heads = [2]
        head_dim = [8]
        [timing]
        warmup = 1
        warmup_s = 0.0
        repeats = 2
        [methods.{method}]
        scale = [1.0]
        [methods.sdpa]
    """))
    return path


def test_plugin_file_registers_and_runs(tmp_path):
    from attnbench import load_results

    plugin = tmp_path / "myplug.py"
    plugin.write_text(PLUGIN.format(name="file_plugin_m"))
    out = tmp_path / "out"
    rc = main(["--plugin", str(plugin), "run", str(_suite(tmp_path, "file_plugin_m")), "--out",
               str(out), "--no-progress", "--no-table"])
    assert rc == 0
    df = load_results(next((out / "plug").iterdir()))
    row = df[df.method == "file_plugin_m"].iloc[0]
    assert row.status == "ok" and row.rel_err < 1e-5


def test_plugin_file_errors_are_clear(tmp_path):
    with pytest.raises(RegistryError, match="no such file"):
        load_plugin_file(tmp_path / "missing.py")
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('needs foo')\n")
    with pytest.raises(RegistryError, match="failed to import: ImportError: needs foo"):
        load_plugin_file(bad)
    assert main(["--plugin", str(bad), "list"]) == 2


def test_entry_point_plugin_registers_and_runs(tmp_path, monkeypatch):
    from attnbench import load_results
    from attnbench.registry import load_entry_points

    pkg = tmp_path / "site"
    (pkg / "ep_plugin_pkg").mkdir(parents=True)
    (pkg / "ep_plugin_pkg" / "__init__.py").write_text(PLUGIN.format(name="entry_point_m"))
    dist = pkg / "ep_plugin_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[attnbench.methods]\nmine = ep_plugin_pkg\n")
    monkeypatch.syspath_prepend(str(pkg))
    importlib.invalidate_caches()
    names = [ep.name for ep in importlib.metadata.entry_points(group="attnbench.methods")]
    assert "mine" in names
    load_entry_points(REGISTRY)
    assert "entry_point_m" in REGISTRY
    out = tmp_path / "out"
    assert main(["run", str(_suite(tmp_path, "entry_point_m")), "--out", str(out), "--no-progress",
                 "--no-table"]) == 0
    df = load_results(next((out / "plug").iterdir()))
    assert (df[df.method == "entry_point_m"].status == "ok").all()
    REGISTRY.remove("entry_point_m")
    sys.modules.pop("ep_plugin_pkg", None)

