"""Community implementations of efficient attention, run through the same harness as ours.

The papers: Linformer (Wang et al., 2020, https://arxiv.org/abs/2006.04768), Performer (Choromanski et
al., 2020, https://arxiv.org/abs/2009.14794), Reformer (Kitaev et al., 2020,
https://arxiv.org/abs/2001.04451), Nyströmformer (Xiong et al., 2021, https://arxiv.org/abs/2102.03902)
and sliding-window attention (Longformer, Beltagy et al., 2020, https://arxiv.org/abs/2004.05150).

Each adapter runs a PyPI package's own attention code, configured like our method of the same family
with its non-attention extras switched off, so one suite measures ours and theirs on one footing. The
packages are optional (``pip install 'attnbench[peers]'``) and imported inside the factories; without
them the methods are reported unavailable. A peer's own failure (a dtype error in fp16, say) is left to
raise: the harness turns it into an ``error`` row with its reason, which is a finding.

Core level, ``forward(q, k, v)`` on (B, H, N, D):

- ``peer_performer`` (performer-pytorch ``FastAttention``): FAVOR+ softmax kernel with orthogonal
  features drawn once at build (the peer redraws only inside its ``Performer`` wrapper). Causal uses the
  peer's chunked prefix sums (its CUDA kernel needs the separate ``fast_transformers`` package).
- ``peer_reformer`` (reformer-pytorch ``LSHAttention``): shared-QK LSH attention on q (k is unused, as
  in our ``lsh``); keys are q scaled to unit length and a query sees itself only when alone. The peer
  draws its random rotations from the global RNG on every call; ``rotations="seeded"`` reseeds that
  draw from the cell seed each call so rows reproduce. ``exact_reference`` is shared-QK attention.
  Unlike ours, the first chunk of each round looks back into the previous round's last chunk, and by
  default a pair met in several rounds is counted several times; the peer's correction for that
  (``allow_duplicate_attention=False``) is offered but its error grows with ``n_hashes``.
- ``peer_local`` (local-attention ``LocalAttention``): rotary embeddings off, no autopadding. The peer
  cuts the sequence into blocks of ``window``; a query sees its block and the one before (and, not
  causal, the one after). ``exact_windowsize=True`` trims that to ``|i - j| <= window`` (causal:
  ``0 <= i - j <= window``): one key more on each side than our ``local`` at the same ``window``.
- ``peer_linformer_tatp22`` (linformer-pytorch ``LinearAttentionHead``, one per head): keys and values
  projected along the sequence by the peer's E and F (``get_EF``), shared as its
  ``parameter_sharing`` says. Its causal mask is applied after the projection and leaks the future, so
  it is registered non-causal, like our ``linformer``.

Layer level, ``forward(x)`` on (B, N, d_model), each with an ``exact_reference(x)`` hook that runs the
same projections with exact softmax attention in float64:

- ``peer_linformer`` (lucidrains linformer ``LinformerSelfAttention``): learned (n, k) projections
  shared by all heads.
- ``peer_nystrom`` (nystrom-attention ``NystromAttention``) with ``residual=False``: the depthwise
  convolution of V it adds by default is a residual branch, not attention.

Weights and random features are drawn on the CPU under ``torch.random.fork_rng`` seeded from the cell
seed and layer, then moved to the cell's device and dtype.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.params import NonNegative, Positive
from attnbench.reference import reference_attention
from attnbench.registry import BuildContext, Limit, register_method

HINT = "pip install 'attnbench[peers]'"
# modules the packages import on import, so a missing one reads "unavailable" rather than an error row
LOCAL_DEPS = ("local_attention", "einops", "hyper_connections", "torch_einops_utils")


def _seed(ctx: BuildContext, salt: int, *, per_layer: bool = True) -> int:
    """A build seed from the cell seed (and the layer, unless the object is shared across layers)."""
    return ctx.generator(salt).initial_seed() if per_layer else (ctx.seed * 1_000_003 + salt) % 2**63


def _seeded(make, seed: int):
    """Call ``make()`` with the global CPU RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


class Peer(nn.Module):
    """An adapter around a community module ``peer`` from the distribution ``dist``."""

    def __init__(self, peer: nn.Module, dist: str):
        super().__init__()
        self.peer = peer
        self.dist = dist

    def stats(self) -> dict:
        return {"peer": f"{self.dist}=={importlib.metadata.version(self.dist)}"}


@dataclass(frozen=True)
class PeerPerformerParams:
    nb_features: NonNegative = 0  # m, random features; 0 = the peer's default int(d·ln d) (266 at d=64)
    ortho_scaling: Literal[0, 1] = 0  # row norms of ω: 0 = chi-distributed (as ours), 1 = all √d


class PeerPerformer(Peer):
    def __init__(self, fast_attention: nn.Module):
        super().__init__(fast_attention, "performer-pytorch")

    def forward(self, q, k, v):
        return self.peer(q, k, v)  # (B, H, N, D)

    def stats(self) -> dict:
        row = {**super().stats(), "nb_features": self.peer.nb_features}
        if self.peer.causal:  # the peer's CUDA kernel (fast_transformers) or its chunked fallback
            fn = self.peer.causal_linear_fn
            row["causal_kernel"] = getattr(fn, "func", fn).__name__
        return row


def _check_performer(p, ctx):
    return None if p.nb_features >= 0 else f"nb_features={p.nb_features} must be >= 0"


@register_method("peer_performer", family="kernel", exact=False, params=PeerPerformerParams,
                 causal=True, requires=("performer_pytorch", *LOCAL_DEPS, "axial_positional_embedding",
                                        "distutils"),  # Python >= 3.12: distutils from setuptools
                 install_hint=HINT, constraints=(_check_performer,), budget="nb_features",
                 limit=Limit(params=None, converges=(8, 32, 128, 512),
                             note="random features; error falls as m grows"))
def build_peer_performer(p: PeerPerformerParams, ctx: BuildContext) -> nn.Module:
    """performer-pytorch FastAttention: FAVOR+ with orthogonal random features (community code)."""
    from performer_pytorch import FastAttention

    def make():
        with contextlib.redirect_stdout(io.StringIO()):  # the causal fallback announces itself
            return FastAttention(ctx.head_dim, nb_features=p.nb_features or None,
                                 ortho_scaling=p.ortho_scaling, causal=ctx.causal)

    return PeerPerformer(_seeded(make, _seed(ctx, 0xFA))).to(ctx.device, ctx.dtype)


@dataclass(frozen=True)
class PeerReformerParams:
    bucket_size: Positive = 64  # chunk length; n_buckets = n / bucket_size (the peer needs it even)
    n_hashes: Positive = 4  # hashing rounds
    allow_duplicate_attention: bool = True  # False: the peer's duplicate correction (see docstring)
    rotations: Literal["seeded", "fresh"] = "seeded"  # seeded: same hash every call, from the cell seed


class PeerReformer(Peer):
    def __init__(self, lsh: nn.Module, seed: int | None):
        super().__init__(lsh, "reformer-pytorch")
        self.seed = seed

    def forward(self, q, k, v):
        b, h, n, d = q.shape
        qk, vals = q.reshape(b * h, n, d), v.reshape(b * h, n, d)  # the peer wants (B·H, N, D)
        if self.seed is None:
            out = self.peer(qk, vals)[0]
        else:
            # The peer draws its rotations with torch.randn on q's device inside forward; pin that draw.
            cuda = q.device.type == "cuda"
            with torch.random.fork_rng(devices=[q.device] if cuda else []):
                if cuda:
                    with torch.cuda.device(q.device):
                        torch.cuda.manual_seed(self.seed)
                else:
                    torch.manual_seed(self.seed)
                out = self.peer(qk, vals)[0]
        return out.view(b, h, n, d)

    def exact_reference(self, q, k, v):
        from attnbench.methods.lsh import shared_qk_attention

        return shared_qk_attention(q, v, causal=self.peer.causal)

    def stats(self) -> dict:
        return {**super().stats(), "n_hashes": self.peer.n_hashes}


def _check_reformer(p, ctx):
    if p.n_hashes < 1:
        return f"n_hashes={p.n_hashes} must be >= 1"
    if p.bucket_size < 1 or ctx.n % (2 * p.bucket_size):
        return (f"n={ctx.n} must be divisible by 2·bucket_size={2 * p.bucket_size} "
                "(reformer-pytorch needs an even number of buckets)")
    return None


@register_method("peer_reformer", family="lsh", exact=False, params=PeerReformerParams, causal=True,
                 requires=("reformer_pytorch", *LOCAL_DEPS, "axial_positional_embedding",
                           "product_key_memory", "colt5_attention"),
                 install_hint=HINT, constraints=(_check_reformer,), budget="n_hashes",
                 # two buckets of n/2, one round: each chunk attends itself and the other, so every
                 # key is seen once (exact against the shared-QK exact_reference)
                 limit=Limit(params=lambda ctx: {"bucket_size": ctx.n // 2, "n_hashes": 1},
                             note="two buckets of n/2, one round: every key seen once"))
def build_peer_reformer(p: PeerReformerParams, ctx: BuildContext) -> nn.Module:
    """reformer-pytorch LSHAttention: shared-QK, hashed and chunked (community code)."""
    from reformer_pytorch import LSHAttention

    lsh = LSHAttention(bucket_size=p.bucket_size, n_hashes=p.n_hashes, causal=ctx.causal,
                       allow_duplicate_attention=p.allow_duplicate_attention)
    lsh.eval()  # training mode only adds a bucket cache for the peer's reversible layers
    seed = _seed(ctx, 0x15A) if p.rotations == "seeded" else None
    return PeerReformer(lsh, seed).to(ctx.device, ctx.dtype)


@dataclass(frozen=True)
class PeerLocalParams:
    window: Positive = 256  # the peer's window_size: block length; n must be a multiple of it
    exact_windowsize: bool = True  # trim the blocks to |i - j| <= window (False: whole blocks)


class PeerLocal(Peer):
    def __init__(self, local: nn.Module):
        super().__init__(local, "local-attention")

    def forward(self, q, k, v):
        return self.peer(q, k, v)  # (B, H, N, D): the peer folds leading axes itself


def _check_local(p, ctx):
    if p.window < 1 or ctx.n % p.window:
        return f"n={ctx.n} must be a multiple of window={p.window} (no autopadding)"
    return None


@register_method("peer_local", family="sparse", exact=False, params=PeerLocalParams, causal=True,
                 requires=LOCAL_DEPS, install_hint=HINT,
                 constraints=(_check_local,), budget="window",
                 limit=Limit(params=lambda ctx: {"window": ctx.n}, note="window = n: one block"))
def build_peer_local(p: PeerLocalParams, ctx: BuildContext) -> nn.Module:
    """local-attention LocalAttention: blocked sliding window, rotary off (community code)."""
    from local_attention import LocalAttention

    local = LocalAttention(window_size=p.window, causal=ctx.causal, look_backward=1,
                           exact_windowsize=p.exact_windowsize, use_rotary_pos_emb=False,
                           autopad=False)
    return PeerLocal(local).to(ctx.device, ctx.dtype)


@dataclass(frozen=True)
class PeerTatp22Params:
    k: Positive = 256  # projected length
    sharing: Literal["none", "headwise", "kv", "layerwise"] = "headwise"  # the peer's parameter_sharing
    projection: Literal["linear", "conv", "random"] = "linear"  # peer: learnable | convolution | no_params


TATP22_METHOD = {"linear": "learnable", "conv": "convolution", "random": "no_params"}


class PeerLinformerTatp22(Peer):
    def __init__(self, heads: nn.ModuleList):
        super().__init__(heads, "linformer-pytorch")

    def forward(self, q, k, v):
        outs = [head(q[:, i], k[:, i], v[:, i]) for i, head in enumerate(self.peer)]  # each (B, N, D)
        return torch.stack(outs, dim=1)  # (B, H, N, D)

    def stats(self) -> dict:
        mats = {id(m) for head in self.peer for m in (head.E, head.F)}
        return {**super().stats(), "proj_matrices": len(mats)}


def _check_tatp22(p, ctx):
    if not 1 <= p.k < ctx.n:
        return f"k={p.k} must be in 1..n-1={ctx.n - 1}: projecting to k >= n saves nothing"
    if p.projection == "conv" and ctx.n % p.k:
        return f"projection='conv' uses kernel = stride = n/k, so n={ctx.n} must be divisible by k={p.k}"
    return None


def _tatp22_identity(p: PeerTatp22Params, ctx: BuildContext) -> nn.Module:
    """The limit: k = n with every head's E and F set to the identity (its constraint refuses k = n)."""
    m = build_peer_linformer_tatp22(p, ctx)
    with torch.no_grad():
        for head in m.peer:
            for proj in (head.E, head.F):
                proj.weight.copy_(torch.eye(ctx.n))
                proj.bias.zero_()
    return m


@register_method("peer_linformer_tatp22", family="low_rank", exact=False, params=PeerTatp22Params,
                 causal=False, requires=("linformer_pytorch",), install_hint=HINT,
                 constraints=(_check_tatp22,), budget="k",
                 limit=Limit(params=lambda ctx: {"k": ctx.n, "projection": "linear"},
                             build=lambda p, ctx: _tatp22_identity(p, ctx),
                             note="k = n with E = F = I"))
def build_peer_linformer_tatp22(p: PeerTatp22Params, ctx: BuildContext) -> nn.Module:
    """linformer-pytorch (tatp22) LinearAttentionHead per head: E, F along the sequence (community code)."""
    from linformer_pytorch import LinearAttentionHead, get_EF

    method, n, d = TATP22_METHOD[p.projection], ctx.n, ctx.head_dim

    def proj():
        ef = get_EF(n, p.k, method, d)
        # no_params gives a bare tensor that module.to() would not move; the peer would copy it to the
        # device on every call, so move it once here
        return ef.to(ctx.device, ctx.dtype)

    if p.sharing == "layerwise":  # one E = F for every head of every layer, as the peer does
        e = ctx.scope.get_or_create(("peer_linformer_tatp22", p.k, p.projection, n, d),
                                    lambda: _seeded(proj, _seed(ctx, 0xEF, per_layer=False)))
        pairs = [(e, e)] * ctx.heads
    else:
        def make_pairs():
            if p.sharing == "none":
                return [(proj(), proj()) for _ in range(ctx.heads)]
            e = proj()
            f = e if p.sharing == "kv" else proj()
            return [(e, f)] * ctx.heads

        pairs = _seeded(make_pairs, _seed(ctx, 0xEF))
    heads = nn.ModuleList(LinearAttentionHead(d, 0.0, e, f, None) for e, f in pairs)
    return PeerLinformerTatp22(heads).to(ctx.device, ctx.dtype)


def _linear64(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(x, layer.weight.double(), bias)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)  # (B, N, H·D) -> (B, H, N, D)


def _merge(o: torch.Tensor) -> torch.Tensor:
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)  # (B, H, N, D) -> (B, N, H·D)


@dataclass(frozen=True)
class PeerLinformerParams:
    k: Positive = 256  # projected length of the peer's (n, k) matrices proj_k, proj_v
    share_kv: bool = False  # the peer's share_kv: values = keys (one to_k, one projection)
    one_kv_head: bool = False  # the peer's one_kv_head: a single key/value head for all query heads


class PeerLinformer(Peer):
    def __init__(self, attn: nn.Module):
        super().__init__(attn, "linformer")

    def forward(self, x):
        return self.peer(x)  # (B, N, d_model)

    def exact_reference(self, x):
        """The same layer with exact softmax attention (no sequence projection), in float64."""
        a, x = self.peer, x.double()
        q = _heads(_linear64(x, a.to_q), a.heads)  # (B, H, N, D)
        keys = _linear64(x, a.to_k)  # (B, N, H·D), or (B, N, D) with one_kv_head
        vals = keys if a.share_kv else _linear64(x, a.to_v)
        kv_heads = keys.shape[-1] // a.dim_head
        k, v = (_heads(t, kv_heads).expand(-1, a.heads, -1, -1) for t in (keys, vals))
        return _linear64(_merge(reference_attention(q, k, v)), a.to_out)

    def stats(self) -> dict:
        return {**super().stats(), "k": self.peer.k}


def _check_linformer(p, ctx):
    if not 1 <= p.k < ctx.n:
        return f"k={p.k} must be in 1..n-1={ctx.n - 1}: projecting to k >= n saves nothing"
    return None


def _linformer_identity(p: PeerLinformerParams, ctx: BuildContext) -> nn.Module:
    """The limit: k = n with the (n, k) projections set to the identity (its constraint refuses k = n)."""
    m = build_peer_linformer(p, ctx)
    with torch.no_grad():
        for proj in {id(t): t for t in (m.peer.proj_k, getattr(m.peer, "proj_v", None))
                     if t is not None}.values():
            proj.copy_(torch.eye(ctx.n))
    return m


@register_method("peer_linformer", family="low_rank", exact=False, params=PeerLinformerParams,
                 causal=False, requires=("linformer",), install_hint=HINT,
                 constraints=(_check_linformer,), budget="k", levels=("layer", "model"),
                 limit=Limit(params=lambda ctx: {"k": ctx.n},
                             build=lambda p, ctx: _linformer_identity(p, ctx),
                             note="k = n with identity projections: the layer's exact_reference"))
def build_peer_linformer(p: PeerLinformerParams, ctx: BuildContext) -> nn.Module:
    """lucidrains linformer LinformerSelfAttention: a whole layer with (n, k) projections (community code)."""
    from linformer import LinformerSelfAttention

    d_model = ctx.heads * ctx.head_dim
    attn = _seeded(lambda: LinformerSelfAttention(d_model, ctx.n, k=p.k, heads=ctx.heads,
                                                  dim_head=ctx.head_dim, one_kv_head=p.one_kv_head,
                                                  share_kv=p.share_kv, dropout=0.0),
                   _seed(ctx, 0x11))
    return PeerLinformer(attn).to(ctx.device, ctx.dtype)


@dataclass(frozen=True)
class PeerNystromParams:
    num_landmarks: Positive = 64  # m, segment-mean landmarks; n must be a multiple of m
    pinv_iters: NonNegative = 6  # the peer's pinv_iterations (the paper uses 6)


class PeerNystrom(Peer):
    def __init__(self, attn: nn.Module):
        super().__init__(attn, "nystrom-attention")

    def forward(self, x):
        return self.peer(x)  # (B, N, d_model)

    def exact_reference(self, x):
        """The same layer with exact softmax attention (no landmarks), in float64."""
        a, x = self.peer, x.double()
        q, k, v = (_heads(t, a.heads) for t in _linear64(x, a.to_qkv).chunk(3, dim=-1))
        return _linear64(_merge(reference_attention(q, k, v)), a.to_out[0])

    def stats(self) -> dict:
        return {**super().stats(), "num_landmarks": self.peer.num_landmarks}


def _check_nystrom(p, ctx):
    if p.num_landmarks < 1 or p.pinv_iters < 0:
        return f"invalid knobs: num_landmarks={p.num_landmarks}, pinv_iters={p.pinv_iters}"
    if p.num_landmarks > ctx.n or ctx.n % p.num_landmarks:
        # the peer would pad the front with zero tokens that every query then attends to
        return f"n={ctx.n} must be a multiple of num_landmarks={p.num_landmarks} (no padding)"
    return None


@register_method("peer_nystrom", family="landmark", exact=False, params=PeerNystromParams,
                 causal=False, requires=("nystrom_attention", "einops"), install_hint=HINT,
                 constraints=(_check_nystrom,), budget="num_landmarks", levels=("layer", "model"),
                 # landmarks = n leaves only the iterative pseudo-inverse, which converges, not exact:
                 # 30 iterations reach ~1e-10 in float64 (tests/test_peers.py)
                 limit=Limit(params=lambda ctx: {"num_landmarks": ctx.n, "pinv_iters": 30}, tol=1e-8,
                             note="num_landmarks = n, pseudo-inverse iterated to convergence"))
def build_peer_nystrom(p: PeerNystromParams, ctx: BuildContext) -> nn.Module:
    """nystrom-attention NystromAttention, residual conv off: a whole layer (community code)."""
    from nystrom_attention import NystromAttention

    attn = _seeded(lambda: NystromAttention(ctx.heads * ctx.head_dim, dim_head=ctx.head_dim,
                                            heads=ctx.heads, num_landmarks=p.num_landmarks,
                                            pinv_iterations=p.pinv_iters, residual=False,
                                            dropout=0.0),
                   _seed(ctx, 0x57))
    return PeerNystrom(attn).to(ctx.device, ctx.dtype)
