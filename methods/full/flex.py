"""``flex``: exact softmax attention through FlexAttention (https://arxiv.org/abs/2412.05496).

Compiled on CUDA with a causal block mask made at the first call; document block masks for packed
sequences; decoding masks a preallocated KV cache by a length kept on the device, so a step has fixed
shapes, uses FlexAttention's decoding kernel on CUDA and replays in a CUDA graph. Elsewhere the eager
reference implementation runs (it materialises the scores: for tests only). q, k, v (B, H, N, D) ->
(B, H, N, D).
"""
from __future__ import annotations

import torch
from torch import nn

from attnbench.compiling import allow_recompiles
from attnbench.decode_state import DeviceKVCache
from attnbench.registry import BuildContext
from attnbench.varlen import Documents, Packed


class FlexAttention(nn.Module):
    """Exact attention through FlexAttention: compiled on CUDA, the eager reference implementation
    elsewhere (it materialises the scores: for tests only)."""

    def __init__(self, ctx: BuildContext):
        super().__init__()
        from torch.nn.attention.flex_attention import flex_attention

        self.causal, self.device = ctx.causal, ctx.device
        self.compiled = ctx.device.type == "cuda"
        self._stats: dict = {"compiled": self.compiled}
        if self.compiled:
            allow_recompiles()
            self.flex = torch.compile(flex_attention)
        else:
            self.flex = flex_attention
        # the causal block mask and the compiled kernel come with the first call, which every cell
        # makes untimed (a decode cell never calls the forward: nothing is made for it)
        self.block_mask, self.n = None, ctx.n

    def forward(self, q, k, v):
        if self.causal and (self.block_mask is None or self.n != q.shape[-2]):
            self.n = q.shape[-2]
            self.block_mask = _causal_block_mask(self.n, q.device)
        return self.flex(q, k, v, block_mask=self.block_mask)

    def stats(self) -> dict:
        return dict(self._stats)

    def flops(self, q, k, v):
        b, h, n, d = q.shape
        return 4.0 * b * h * n * k.shape[-2] * d / (2 if self.causal else 1)

    # decode: the whole preallocated cache, keys at and past the device-side length masked out

    decode_graphs = True

    def init_state(self, q, k, v, capacity=None):
        cache = DeviceKVCache(k, v, capacity)
        cache.block_mask = _length_block_mask(cache.length, cache.k.shape[2], q.device)
        return cache

    def step(self, q_t, k_t, v_t, state: DeviceKVCache):
        state.append(k_t, v_t)
        return self.flex(q_t, state.k, state.v, block_mask=state.block_mask), state

    def pack(self, docs: Documents) -> nn.Module:
        return FlexPacked(docs, self.causal, self.flex, self.device)


def _causal_block_mask(n: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return create_block_mask(causal, None, None, n, n, device=device, _compile=device.type == "cuda")


def _length_block_mask(length: torch.Tensor, capacity: int, device: torch.device, block: int = 128):
    """A (1 query, ``capacity`` keys) block mask whose every key block is partial, so the mask_mod
    (key index < ``length``, read on the device at each call) decides: no block is skipped by a
    length frozen when the mask was made."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = -(-capacity // block)

    def below_length(b, h, q_idx, kv_idx):
        return kv_idx < length[0]

    return BlockMask.from_kv_blocks(
        torch.full((1, 1, 1), blocks, dtype=torch.int32, device=device),
        torch.arange(blocks, dtype=torch.int32, device=device).view(1, 1, 1, blocks),
        BLOCK_SIZE=block, mask_mod=below_length, seq_lengths=(1, capacity))


class FlexPacked(Packed):
    """Packed documents through a FlexAttention block mask "same document" (and j <= i): blocks
    wholly between documents are skipped."""

    def __init__(self, docs: Documents, causal: bool, flex, device: torch.device):
        super().__init__(docs, causal, "flex-document-mask")
        from torch.nn.attention.flex_attention import create_block_mask

        ids = docs.doc_ids(device)
        self.flex = flex

        def document(b, h, q_idx, kv_idx):
            same = ids[q_idx] == ids[kv_idx]
            return same & (kv_idx <= q_idx) if causal else same

        self.block_mask = create_block_mask(document, None, None, docs.n, docs.n, device=device,
                                            _compile=device.type == "cuda")

    def forward(self, q, k, v):
        return self.flex(q, k, v, block_mask=self.block_mask)

