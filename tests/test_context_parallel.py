"""sdpa_cp: the head-tail layout (round trip, torch's order, equal causal work), per-rank compute and
assembly on one process, and the real thing with gloo over 2 and 3 processes (torch.multiprocessing,
forked): outputs and gradients against float64 exact attention, communication bytes against the
analytic counts, torch's context_parallel sharding against ours, and cp_run writing rows from rank 0
only."""
import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from attnbench import context_parallel as cp
from attnbench.reference import error_metrics, reference_attention
from attnbench.registry import REGISTRY, BuildContext, Unsupported

N = 48  # a multiple of 2G for G = 1, 2, 3, 4
TOL = 1e-5  # fp32 against float64: rounding level


def qkv(n=N, batch=2, heads=2, head_dim=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, head_dim, generator=g).to(dtype) for _ in range(3)]


def rel_err(out, ref) -> float:
    return error_metrics(out, ref)["rel_err"]


# the layout, on one process

@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_and_unshard_round_trip_and_cover_the_sequence_once(world):
    x = torch.arange(N).view(1, 1, N, 1).expand(2, 3, N, 5).contiguous()
    shards = [cp.shard(x, r, world) for r in range(world)]
    for r, s in enumerate(shards):
        assert s.shape == (2, 3, N // world, 5)
        assert torch.equal(s[0, 0, :, 0], cp.rank_positions(N, r, world))
    assert torch.equal(cp.unshard(shards), x)
    assert sorted(cp.layout(N, world).tolist()) == list(range(N))  # a permutation


def test_rank_r_holds_chunks_r_and_2g_minus_1_minus_r():
    assert cp.rank_positions(8, 0, 2).tolist() == [0, 1, 6, 7]
    assert cp.rank_positions(8, 1, 2).tolist() == [2, 3, 4, 5]
    assert cp.rank_positions(12, 1, 3).tolist() == [2, 3, 8, 9]
    assert cp.check_divisible(10, 3) is not None and cp.check_divisible(12, 3) is None


@pytest.mark.parametrize("world", [2, 3, 4])
def test_layout_is_torchs_head_tail_load_balancer(world):
    try:
        from torch.distributed.tensor.experimental._context_parallel._load_balancer import (
            _HeadTailLoadBalancer)
    except ImportError:
        pytest.skip("this torch has no _HeadTailLoadBalancer (the spawned test checks the layout "
                    "through context_parallel itself)")
    balancer = _HeadTailLoadBalancer(N, world, "cpu")
    order = balancer._generate_indices()[0]
    assert torch.equal(order.long(), cp.layout(N, world))
    assert torch.equal(order[balancer._generate_indices(restore=True)[0]].long(), torch.arange(N))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_rank_does_the_same_causal_work_and_a_contiguous_split_does_not(world):
    mask = torch.ones(N, N).tril()  # query p scores keys 0..p
    work = [int(mask[cp.rank_positions(N, r, world)].sum()) for r in range(world)]
    assert len(set(work)) == 1 and sum(work) == N * (N + 1) // 2
    assert work == [cp.causal_pairs(N, r, world) for r in range(world)]
    contiguous = [int(mask[r * N // world:(r + 1) * N // world].sum()) for r in range(world)]
    assert contiguous[-1] / contiguous[0] > 2 * world - 2  # about 2G-1 times the first rank's


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_per_rank_compute_and_assembly_equal_exact_attention(world, causal):
    """Every rank's part computed here in turn, against keys in sequence order, then assembled."""
    q, k, v = qkv()
    parts = []
    for r in range(world):
        q_s = cp.shard(q, r, world)
        if causal:
            parts.append(cp.local_causal_attention(q_s, k, v, r, world))
        else:
            parts.append(torch.nn.functional.scaled_dot_product_attention(q_s, k, v))
    out = cp.unshard(parts)
    assert rel_err(out, reference_attention(q, k, v, causal=causal)) < TOL


def test_comm_bytes_counts_shards():
    # (B, H, N, D) = (1, 2, 16, 4) fp32 on 2 ranks: one tensor's shard is 1·2·8·4·4 = 256 bytes
    got = cp.comm_bytes((1, 2, 16, 4), 4, 2, backward=True)
    assert got == {"cp_kv_bytes": 512, "cp_out_bytes": 256, "cp_bwd_bytes": 1280,
                   "cp_comm_bytes": 2048}
    assert cp.comm_bytes((1, 2, 16, 4), 4, 1)["cp_comm_bytes"] == 0


# without a process group: unsupported, saying how to launch it

def test_sdpa_cp_is_unsupported_without_a_process_group(tiny_suite, tmp_path):
    from attnbench import run_suite
    from attnbench.store import iter_rows

    spec = REGISTRY.get("sdpa_cp")
    why = spec.unsupported_reason(spec.params(), BuildContext(n=N, heads=2, head_dim=8))
    assert "torchrun --nproc-per-node G -m attnbench.cp_run" in why
    with pytest.raises(Unsupported, match="process group"):
        spec.factory(spec.params(), BuildContext(n=N, heads=2, head_dim=8))
    outcome = run_suite(str(tiny_suite("[methods.sdpa]\n[methods.sdpa_cp]\n")), "cpu",
                        out=tmp_path, progress=False)
    rows = list(iter_rows(outcome.run_dir))
    assert outcome.exit_code == 0
    assert {r["status"] for r in rows if r["method"] == "sdpa_cp"} == {"unsupported"}
    assert all("attnbench.cp_run" in r["reason"] for r in rows if r["method"] == "sdpa_cp")
    assert {r["status"] for r in rows if r["method"] == "sdpa"} == {"ok"}


def test_gpu_suite_validates(capsys):
    from attnbench.cli import main

    assert main(["validate", "context_parallel", "--device", "cuda"]) == 0
    assert "valid suite 'context_parallel'" in capsys.readouterr().out


def test_cp_run_outside_torchrun_is_bad_input(monkeypatch, tmp_path, capsys):
    from attnbench.cp_run import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert main(["quick", "--out", str(tmp_path)]) == 2
    assert "started by torchrun" in capsys.readouterr().err
    assert main(["no_such_suite", "--out", str(tmp_path)]) == 2
    assert "no_such_suite" in capsys.readouterr().err
    if not torch.cuda.is_available():
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "1")
        assert main(["quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "CUDA device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


# gloo over forked processes

SUITE = """name = "cp_tiny"
version = 1
description = "sdpa_cp beside sdpa on the CPU"
baseline = "sdpa"
seed = 0

[sweep]
n = [24]
batch = [1]
heads = [2]
head_dim = [8]
dtype = ["fp32"]
mode = ["fwd", "fwd_bwd"]
causal = [true, false]

[timing]
warmup = 1
warmup_s = 0.5
repeats = 4
max_time_s = 0.001

[methods.sdpa]
[methods.sdpa_cp]
"""


class CountingCollectives:
    """Bytes this rank receives through all_gather and reduce_scatter while it is installed."""

    def __init__(self):
        import torch.distributed as dist

        self.dist, self.received = dist, 0
        self.gather, self.scatter = dist.all_gather, dist.reduce_scatter

    def __enter__(self):
        def all_gather(parts, x, group=None, async_op=False):
            self.received += sum(p.numel() * p.element_size() for p in parts) - x.numel() * \
                x.element_size()
            return self.gather(parts, x, group=group, async_op=async_op)

        def reduce_scatter(out, parts, op=self.dist.ReduceOp.SUM, group=None, async_op=False):
            self.received += sum(p.numel() * p.element_size() for p in parts) - \
                out.numel() * out.element_size()
            return self.scatter(out, parts, op=op, group=group, async_op=async_op)

        self.dist.all_gather, self.dist.reduce_scatter = all_gather, reduce_scatter
        return self

    def __exit__(self, *exc):
        self.dist.all_gather, self.dist.reduce_scatter = self.gather, self.scatter


def _check_method(rank: int, world: int) -> dict:
    """sdpa_cp built through the registry, causal and not: output, gradients, bytes and stats."""
    from attnbench.gradient import softmax_gradients

    spec = REGISTRY.get("sdpa_cp")
    found = {}
    for causal in (True, False):
        ctx = BuildContext(n=N, heads=2, head_dim=8, causal=causal)
        assert spec.unsupported_reason(spec.params(), ctx) is None
        module = spec.build(spec.params(), ctx)
        q, k, v = qkv()
        with CountingCollectives() as fwd_count, torch.no_grad():
            out = module(q, k, v)
        fwd_stats = module.stats()
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
        with CountingCollectives() as bwd_count:
            grads = torch.autograd.grad(module(*leaves), leaves, grad_out)
        refs = softmax_gradients(q, k, v, grad_out, causal)
        found[f"causal={causal}"] = {
            "rel_err": rel_err(out, reference_attention(q, k, v, causal=causal)),
            "grad_rel_err": [rel_err(g, r) for g, r in zip(grads, refs)],
            "fwd_received": fwd_count.received, "fwd_bwd_received": bwd_count.received,
            "fwd_stats": fwd_stats, "fwd_bwd_stats": module.stats(), "impl": module.impl,
            "flops": module.flops(q, k, v)}
    ring = spec.params(impl="ring")
    found["ring_reason"] = spec.unsupported_reason(ring, BuildContext(n=N, heads=2, head_dim=8,
                                                                       causal=True))
    return found


def _check_torch(rank: int, world: int) -> dict:
    """torch's context_parallel on the CPU: its sharding and unsharding against ours; its SDPA."""
    from torch.distributed.tensor.experimental._attention import context_parallel_unshard

    mesh = cp.device_mesh("cpu", world)
    found = {"layout_matches": cp.torch_layout_matches(mesh, N, torch.device("cpu"))}
    mine = torch.full((1, 2, N // world, 3), float(rank)) + cp.rank_positions(N, rank, world) \
        .view(1, 1, -1, 1).float()
    theirs, = context_parallel_unshard(mesh, [mine], [2])
    found["unshard_matches"] = torch.equal(theirs, cp.assemble(mine, rank, world))
    q, k, v = qkv()
    try:
        cp.ring_attention(q, k, v, mesh=mesh, rank=rank, world=world, causal=True,
                          rotate="allgather")
        found["ring_on_cpu"] = "ran"
    except Exception as exc:  # noqa: BLE001 - what torch says is the finding
        found["ring_on_cpu"] = f"{type(exc).__name__}: {exc}"
    return found


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        found = {"method": _check_method(rank, world), "torch": _check_torch(rank, world)}
        from attnbench.cp_run import main  # the launcher: every rank runs the suite, rank 0 writes

        found["cp_run"] = main([f"{tmp}/cp_tiny.toml", "--out", f"{tmp}/out", "--no-progress",
                                "--table", "none"])
        with open(f"{tmp}/rank{rank}.json", "w") as f:
            json.dump(found, f, default=str)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 3], ids=lambda g: f"G={g}")
def spawned(request, tmp_path_factory):
    world = request.param
    tmp = tmp_path_factory.mktemp(f"cp{world}")
    (tmp / "cp_tiny.toml").write_text(SUITE)
    # forked, not spawned: a spawned child spends seconds importing torch and the registry again
    # (x5 processes on a 2-core machine); each child sets one thread before any parallel region
    mp.start_processes(_worker, args=(world, str(tmp)), nprocs=world, join=True,
                       start_method="fork")
    return world, tmp, [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
def test_gloo_output_and_gradients_equal_float64_exact_attention(spawned, causal):
    world, _, ranks = spawned
    for r, found in enumerate(ranks):
        m = found["method"][f"causal={causal}"]
        assert m["impl"] == "allgather"
        assert m["rel_err"] < TOL, (r, m["rel_err"])
        assert max(m["grad_rel_err"]) < TOL, (r, m["grad_rel_err"])


@pytest.mark.slow
def test_gloo_bytes_moved_are_the_analytic_counts(spawned):
    world, _, ranks = spawned
    shape, size = (2, 2, N, 8), 4
    for found in ranks:
        for causal in (True, False):
            m = found["method"][f"causal={causal}"]
            fwd = cp.comm_bytes(shape, size, world)
            both = cp.comm_bytes(shape, size, world, backward=True)
            assert m["fwd_received"] == fwd["cp_comm_bytes"] == m["fwd_stats"]["cp_comm_bytes"]
            assert m["fwd_bwd_received"] == both["cp_comm_bytes"] == \
                m["fwd_bwd_stats"]["cp_comm_bytes"]
            assert m["fwd_stats"]["cp_world_size"] == world
            assert m["fwd_stats"]["cp_shard_tokens"] == N // world
    # each rank's FLOPs are an equal share of exact attention's
    from attnbench.flops import attention_flops, dense_pairs

    for causal in (True, False):
        total = attention_flops(2, 2, 8, dense_pairs(N, N, causal), 8)
        assert sum(f["method"][f"causal={causal}"]["flops"] for f in ranks) == total
        assert len({f["method"][f"causal={causal}"]["flops"] for f in ranks}) == 1


@pytest.mark.slow
def test_torch_context_parallel_shards_as_we_do_and_its_ring_needs_cuda(spawned):
    _, _, ranks = spawned
    for found in ranks:
        t = found["torch"]
        assert t["layout_matches"] and t["unshard_matches"]
        assert "_scaled_dot_product_flash_attention_for_cpu" in t["ring_on_cpu"]
        assert "does not have a sharding strategy" in t["ring_on_cpu"]
        assert "CUDA" in found["method"]["ring_reason"]


@pytest.mark.slow
def test_cp_run_writes_rows_from_rank_0_only(spawned):
    world, tmp, ranks = spawned
    from attnbench.store import iter_rows, read_meta

    assert [f["cp_run"] for f in ranks] == [0] * world
    run_dirs = list((tmp / "out").glob("cp_tiny/*"))
    assert len(run_dirs) == 1  # the other ranks wrote nothing there
    rows = list(iter_rows(run_dirs[0]))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        if r["method"] == "sdpa_cp":
            assert r["rel_err"] < TOL and r["stats"]["cp_world_size"] == world
            assert r["n_samples"] == 4  # by count: max_time_s set aside on every rank
            if r["mode"] == "fwd_bwd":
                assert r["grad_rel_err"] < TOL and r["stats"]["cp_bwd_bytes"] > 0
    meta = read_meta(run_dirs[0])
    assert meta["context_parallel"]["world_size"] == world and meta["state"] == "complete"
    strict = {"parse_constant": lambda c: pytest.fail(f"ranks.jsonl holds {c}")}
    per_rank = [json.loads(line, **strict)
                for line in (run_dirs[0] / "ranks.jsonl").read_text().splitlines()]
    assert sorted({(p["cell_id"], p["rank"]) for p in per_rank}) == sorted(
        (r["cell_id"], rank) for r in rows for rank in range(world))
    assert all(p["status"] == "ok" and p["time_ms"] > 0 for p in per_rank)
