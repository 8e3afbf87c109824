"""The Moore–Penrose pseudo-inverse by the iteration Nyströmformer uses (Xiong et al., 2021,
https://arxiv.org/abs/2102.03902; Razavi et al.'s), in torch: a batch of (m, m) landmark kernels,
(B, H, m, m) -> (B, H, m, m). The Triton form of the same iteration is
:mod:`attnbench.methods.nystrom.nystrom_triton`.
"""
from __future__ import annotations

import torch


def iterative_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Approximate Moore–Penrose inverse of a batch of (m, m) matrices by the paper's iteration
    Z ← ¼Z(13I − AZ(15I − AZ(7I − AZ))), each "cI − X·Y" one fused baddbmm (seven kernels a step:
    a baddbmm with an input copies it into its output first)."""
    abs_a = a.abs()
    norm_1 = abs_a.sum(-2).amax(-1)  # max column sum, (B, H)
    norm_inf = abs_a.sum(-1).amax(-1)  # max row sum, (B, H)
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)[..., None, None]
    lead, m = a.shape[:-2], a.shape[-1]
    a3 = a.reshape(-1, m, m)  # baddbmm wants 3-d batches
    z = z.reshape(-1, m, m)
    eye = torch.eye(m, dtype=a.dtype, device=a.device)
    eye7 = eye * 7  # built once: 7I − AZ is then one launch a step
    eye = eye.expand_as(a3)
    for _ in range(iters):
        az = torch.bmm(a3, z)
        t = torch.baddbmm(eye, az, torch.baddbmm(eye, az, eye7 - az, beta=15, alpha=-1),
                          beta=13, alpha=-1)  # 13I − AZ(15I − AZ(7I − AZ))
        z = torch.baddbmm(z, z, t, beta=0, alpha=0.25)
    return z.reshape(*lead, m, m)
