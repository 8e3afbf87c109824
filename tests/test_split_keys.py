"""Few-query attention over key ranges merged by their log-sum-exps (attnbench.methods.nystrom.split_keys), and
Nyströmformer's choice of it for softmax(Q̃Kᵀ)V.

On the CPU the merging runs with an explicit float64 ``attend``; the fused kernels that return the
log-sum-exp exist only on CUDA, where the gpu-marked tests run them.
"""
from __future__ import annotations

import math

import pytest
import torch

from attnbench.methods.nystrom.split_keys import SPLIT_RULES, choose_splits, split_key_attention
from attnbench.methods.nystrom import NystromParams
from attnbench.reference import error_metrics
from attnbench.registry import BuildContext, get_method


def explicit_attend(q, k, v, scale):
    """(out, lse) in float64, cast back to q's dtype for the output: the reference ``attend``."""
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return (torch.softmax(s, -1) @ v.double()).to(q.dtype), torch.logsumexp(s, -1).float()


def layer_qkv(b, h, n, d, m, dtype=torch.float32, device="cpu", seed=0):
    """k, v as a layer leaves them (views of one (B, N, 3, H, D) tensor) and m peaked queries."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, n, 3, h, d, generator=g).to(device, dtype)
    q = (torch.randn(b, h, m, d, generator=g) * 3).to(device, dtype)
    return q, qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)


@pytest.mark.parametrize("splits", [1, 2, 3, 4, 8])
def test_merged_ranges_equal_one_call(splits):
    """Ranges merged by their log-sum-exps give the single call's output, for strided k and v (the
    ranges are views) and queries peaked enough that the ranges' maxima differ widely."""
    q, k, v = layer_qkv(2, 3, 96, 8, 16)
    scale = 1 / math.sqrt(8)
    want = explicit_attend(q, k, v, scale)[0]
    got = split_key_attention(q, k, v, scale, splits, attend=explicit_attend)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max() < 1e-6


def test_a_range_whose_keys_all_lose_gets_no_weight():
    """One range whose keys score far below the others' (exp underflows in fp32) drops out cleanly:
    the merge weighs ranges in log space, so no 0/0 and no inf."""
    q, k, v = layer_qkv(1, 1, 64, 8, 4)
    k = k.clone()
    k[..., :32, :] = 0  # first range: zero keys, scores 0
    q = q.abs() * 40
    k[..., 32:, :] = k[..., 32:, :].abs()  # second range: large positive scores
    got = split_key_attention(q, k, v, 1.0, 2, attend=explicit_attend)
    want = explicit_attend(q, k, v, 1.0)[0]
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() < 1e-5


def test_uneven_split_is_refused():
    q, k, v = layer_qkv(1, 1, 30, 8, 4)
    with pytest.raises(ValueError, match="30 keys"):
        split_key_attention(q, k, v, 1.0, 4, attend=explicit_attend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_choose_splits_follows_its_rule(dtype):
    rule = SPLIT_RULES[dtype]
    sms = 132
    for bh in (1, 8, 64, 512):
        for n in (256, 1024, 4096, 16384, 3 * 1024):
            s = choose_splits(bh, 256, n, sms, dtype)
            blocks = bh * -(-256 // rule["query_block"])
            assert s >= 1 and n % s == 0
            if s > 1:  # every doubling was allowed
                assert blocks * s <= rule["blocks_per_sm"] * sms and n // s >= rule["min_range"]
            # and the next one was not
            assert (blocks * 2 * s > rule["blocks_per_sm"] * sms or n % (2 * s)
                    or n // (2 * s) < rule["min_range"])
    # a batch that fills the GPU alone is one call; more keys never mean fewer ranges
    assert choose_splits(64, 256, 16384, sms, dtype) == 1
    assert choose_splits(8, 256, 1024, sms, dtype) <= choose_splits(8, 256, 16384, sms, dtype)
    assert choose_splits(8, 256, 16384, sms, torch.float64) == 1  # no rule: never split


def test_nystrom_splits_only_without_gradients_on_cuda():
    """The module's rule, on a CPU-built module told the GPU's size: fp32 at batch·heads 8 splits,
    a call needing gradients does not (the log-sum-exp output has no gradient), and float64 or a CPU
    module (split_sms = 0) never does."""
    ctx = BuildContext(n=4096, heads=8, head_dim=64, seed=0)
    mod = get_method("nystrom").build(NystromParams(num_landmarks=256, kernel="torch"), ctx)
    q = k = v = torch.empty(1, 8, 4096, 64)
    assert mod.split_sms == 0 and mod.right_kernel(q, k, v) == ("explicit", 1)
    mod.fused_min, mod.split_sms = 32, 132
    assert mod.right_kernel(q, k, v) == ("split", 8)
    assert mod.right_kernel(q.double(), k.double(), v.double()) == ("explicit", 1)
    qg = q.clone().requires_grad_(True)
    assert mod.right_kernel(qg, k, v) == ("explicit", 1)  # fp32 below fused_min: two products
    with torch.no_grad():
        assert mod.right_kernel(qg, k, v) == ("split", 8)
    big = torch.empty(8, 8, 4096, 64)  # 256 query blocks already fill the GPU: one SDPA call
    assert mod.right_kernel(big, big, big) == ("sdpa", 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_kernels_lse_and_split_match_sdpa(dtype):
    from attnbench.methods.nystrom.split_keys import attend_with_lse

    q, k, v = layer_qkv(1, 8, 4096, 64, 256, dtype=dtype, device="cuda")
    scale = 1 / 8
    out, lse = attend_with_lse(q, k, v, scale)
    ref_out, ref_lse = explicit_attend(q, k, v, scale)
    assert lse.shape == (1, 8, 256)
    assert (lse.float() - ref_lse.cuda()).abs().max() < 1e-3 * ref_lse.abs().max()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert error_metrics(out, ref_out.cuda())["rel_err"] < tol
    for splits in (2, 8):
        got = split_key_attention(q, k, v, scale, splits)
        assert got.dtype == dtype
        assert error_metrics(got, ref_out.cuda())["rel_err"] < tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nystrom_split_path_equals_its_unsplit_path_on_cuda():
    ctx = BuildContext(n=4096, heads=8, head_dim=64, seed=0, device=torch.device("cuda"))
    mod = get_method("nystrom").build(NystromParams(num_landmarks=256), ctx)
    q, k, v = layer_qkv(1, 8, 4096, 64, 4096, device="cuda")
    with torch.no_grad():
        split = mod(q, k, v)
        assert mod.stats()["right"] == "split"
        mod.split_sms = 0
        plain = mod(q, k, v)
        assert mod.stats()["right"] == "explicit"
    assert error_metrics(split, plain)["rel_err"] < 1e-5
