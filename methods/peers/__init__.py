"""Community implementations of efficient attention, run through the same harness as ours.

One module per PyPI package it wraps: ``performer.py`` performer-pytorch (Performer,
https://arxiv.org/abs/2009.14794), ``reformer.py`` reformer-pytorch (Reformer,
https://arxiv.org/abs/2001.04451), ``local.py`` local-attention (sliding windows, Longformer,
https://arxiv.org/abs/2004.05150), ``linformer.py`` linformer-pytorch and lucidrains' linformer
(Linformer, https://arxiv.org/abs/2006.04768), ``nystrom.py`` nystrom-attention (Nyströmformer,
https://arxiv.org/abs/2102.03902). Each adapter runs the package's own attention, configured like our
method of the same family with its extras off: core level on q, k, v (B, H, N, D), layer level on
x (B, N, d_model). The packages are optional (``pip install 'attnbench[peers]'``) and imported inside
the factories. Each adapter in detail: results/README.md, "Notes from the method modules".
"""
from attnbench.methods.peers import linformer, local, nystrom, performer, reformer  # noqa: F401 - registers

__all__ = ["linformer", "local", "nystrom", "performer", "reformer"]
