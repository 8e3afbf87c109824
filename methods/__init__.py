"""Built-in attention methods, installed as ``attnbench.methods``; the registry imports every module
and package here.

A family is a module (``uniform``, ``window``) or a package that keeps its torch path, its Triton
kernels and its registration together: ``full`` (exact baselines), ``linformer``, ``lsh``
(Reformer), ``nystrom``, ``performer`` (and ``linear``), ``sparse`` (fixed patterns), ``recurrent``
(fla-core), ``context_parallel`` (exact attention over several GPUs) and ``peers``
(community packages). Notes and measurements: results/README.md.
"""
