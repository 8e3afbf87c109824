"""Three faults the H200 runs of 2026-12-03 showed, each pinned on CPU:

- exact decoding through SDPA took 35 ms per token at every n: under ``backend = "auto"`` PyTorch
  picked cuDNN attention, which builds a plan per shape, and a decode step's key length changes every
  step. The step must leave cuDNN out (a forward keeps PyTorch's choice);
- Performer's training cells failed in the backward under bf16 autocast ("expected scalar type
  BFloat16 but found Float"): its key-state backward got an fp32 gradient beside bf16 saved tensors;
- xformers' rows said "xFormers wasn't build with CUDA support" for every operator without saying
  that its extension failed to load, and why.
"""
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from attnbench.registry import REGISTRY, BuildContext, load_builtins

load_builtins()


def _sdpa(backend="auto"):
    spec = REGISTRY.get("sdpa")
    return spec.factory(spec.params(backend=backend), BuildContext(n=16, heads=2, head_dim=8,
                                                                   causal=True))


def _spy(monkeypatch):
    from attnbench.methods.full import dense

    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(dense.F, "scaled_dot_product_attention", spy)
    return seen


def test_sdpa_decode_step_leaves_cudnn_out_and_forward_keeps_it(monkeypatch):
    assert torch.backends.cuda.cudnn_sdp_enabled()
    seen = _spy(monkeypatch)
    module = _sdpa()
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    module(q, k, v)
    state = module.init_state(q, k, v)
    out, state = module.step(q[:, :, :1], k[:, :, :1], v[:, :, :1], state)
    assert seen == [True, False]
    assert out.shape == (1, 2, 1, 8) and state.length == 17
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the step


def test_sdpa_decode_step_with_a_forced_backend_keeps_it(monkeypatch):
    seen = _spy(monkeypatch)
    module = _sdpa("math")
    k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    module.step(torch.randn(1, 2, 1, 8), k[:, :, :1], v[:, :, :1], module.init_state(k, k, v))
    assert seen == [False]  # math only: flash, efficient and cuDNN all off


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_performer_key_state_backward_takes_an_fp32_gradient_beside_half_tensors(half):
    from attnbench.methods.performer.favor import _KeyState

    g = torch.Generator().manual_seed(0)
    kf = torch.rand(1, 2, 32, 8, generator=g).to(half)
    vv = torch.randn(1, 2, 32, 5, generator=g).to(half)
    scale = torch.rand(1, 2, 8, 1, generator=g) + 0.5
    grad = torch.randn(1, 2, 8, 5, generator=g)  # fp32, as autocast leaves it
    ctx = SimpleNamespace(saved_tensors=(kf, vv, scale), alpha=0.5, needs_input_grad=(True, True))
    grad_kf, grad_vv, *_ = _KeyState.backward(ctx, grad, None)
    assert grad_kf.dtype == half and grad_vv.dtype == half
    g32 = grad * (0.5 / scale)
    want_kf = vv.float() @ g32.transpose(-1, -2)
    want_vv = kf.float() @ g32
    for got, want in ((grad_kf, want_kf), (grad_vv, want_vv)):
        assert (got.float() - want).norm() / want.norm() < 2e-2


def test_performer_trains_a_step_under_autocast_on_cpu():
    """The whole path on CPU autocast: a model with Performer attention takes a bf16 step."""
    from attnbench.train.model import build_model

    spec = REGISTRY.get("performer")
    model = build_model(spec, spec.params(nb_features=16), vocab=16, outputs=16, n=32, d_model=16,
                        heads=2, layers=1, ffn_dim=16, pooled=False, pad=None,
                        device=torch.device("cpu"), seed=0, batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randint(0, 16, (2, 32))).float().logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_xformers_rows_say_why_its_extension_did_not_load(monkeypatch):
    from attnbench.methods.full.xformers_ops import extension_failure

    message = ("xFormers can't load C++/CUDA extensions. xFormers was built for:\n"
               "    PyTorch 2.10.0+cu128 with CUDA 1208 (you have 2.11.0+cu130)\n"
               "    Python  3.10.19 (you have 3.12.3)\n"
               "  Please reinstall xformers (see https://github.com/facebookresearch/xformers)\n"
               "  Memory-efficient attention, SwiGLU, sparse and more won't be available.")
    cpp = types.ModuleType("xformers._cpp_lib")
    cpp._cpp_library_load_exception = RuntimeError(message)
    pkg = types.ModuleType("xformers")
    pkg._cpp_lib = cpp
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers._cpp_lib", cpp)
    text = extension_failure()
    assert text == ("xFormers can't load C++/CUDA extensions. xFormers was built for: PyTorch "
                    "2.10.0+cu128 with CUDA 1208 (you have 2.11.0+cu130) Python 3.10.19 (you have "
                    "3.12.3)")
    cpp._cpp_library_load_exception = None
    assert extension_failure() is None
