"""The result row, declared: every column a row may carry, with its unit and meaning.

A row is one JSON object per cell in ``results.jsonl``. Its columns come in groups: the cell's
identity (what was run), its outcome, timing, memory, error and accuracy context, roofline figures and
bookkeeping. What a method reports about itself (``stats()``: the kernel that ran, a density, compile
times) is kept apart, under ``stats`` in the row and as ``stat.<name>`` columns once loaded, so a stat
can never shadow an identity column such as ``n`` or ``status``. Runs written before that (meta.json
without ``schema_version``) carry their stats as plain columns; they load as they always did.

The README's column table is checked against this module (tests/test_schema.py), and the tests
check that every column a run writes is declared here.
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 2  # 2: method stats under "stats"; rows record what the runner declares here
STATS = "stats"          # the row key holding a method's own stats()
STAT_PREFIX = "stat."    # their column names once loaded


@dataclass(frozen=True)
class Column:
    name: str
    unit: str     # "" for names, flags and counts
    meaning: str
    group: str


# Every status a row can have (a cell's outcome); ``run --resume RUN --rerun`` takes a subset
STATUSES = ("ok", "unsupported", "oom", "oom-pruned", "error", "nan", "crashed", "timeout",
            "diverged")


def _cols(group: str, *specs: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(name, unit, meaning, group) for name, unit, meaning in specs)


COLUMNS: list[Column] = [
    *_cols("identity",
           ("cell_id", "", "hash of the cell's identity (method, params and every axis)"),
           ("suite", "", "the suite's name"),
           ("method", "", "registered method name"),
           ("label", "", "method name with the params that differ from its defaults, e.g. linformer(k=256)"),
           ("params", "", "every param of the method (defaults included); loaded as param.<name>"),
           ("family", "", "exact, low_rank, sparse, lsh, kernel, landmark, other"),
           ("exact", "", "whether the method computes softmax attention exactly"),
           ("budget", "", "the param that trades accuracy for cost (k, nb_features, ...)"),
           ("budget_value", "", "that param's value in this cell"),
           ("level", "", "core (the op), layer (with projections), model (an encoder)"),
           ("n", "tokens", "sequence length"),
           ("batch", "", "batch size (capacity mode: the starting point of the search)"),
           ("heads", "", "attention heads"),
           ("head_dim", "", "per-head dimension"),
           ("dtype", "", "fp32, fp16 or bf16"),
           ("mode", "", "fwd, or fwd_bwd (forward and backward through autograd)"),
           ("causal", "", "causal masking"),
           ("batching", "", "fixed, or capacity (the largest batch that fits)"),
           ("input", "", "the input regime and its params; loaded as input.<name>"),
           ("seed", "", "seed of inputs and of the method's setup"),
           ("layers", "", "encoder layers (model level)"),
           ("ffn_dim", "", "feed-forward width (model level)"),
           ("device", "", "torch device the cell ran on")),
    *_cols("outcome",
           ("status", "", ", ".join(STATUSES)),
           ("reason", "", "why the status, in one line (empty when ok and steady)"),
           ("where", "", "file:line frames of an error, or the faulting frame of a crashed worker"),
           ("exit_code", "", "a crashed worker's exit code"),
           ("signal", "", "the signal that killed a crashed worker"),
           ("started", "UTC", "when the cell started"),
           ("finished", "UTC", "when its row was written")),
    *_cols("timing",
           ("time_ms", "ms", "median time of one call (fwd, or fwd+bwd) over the timed samples"),
           ("time_ms_iqr", "ms", "interquartile range of the samples"),
           ("time_ms_min", "ms", "fastest sample"),
           ("time_samples_ms", "ms", "every timed sample"),
           ("n_samples", "", "number of timed samples"),
           ("noisy", "", "IQR over 10% of the median"),
           ("timing_mode", "", "eager, or cuda-graph (replays of a captured call)"),
           ("timing_rounds", "", "rounds of interleaved timing (--rounds)"),
           ("timing_attempts", "", "timings of a noisy cell (--retry-noisy); the steadiest is kept"),
           ("attempt_medians_ms", "ms", "each attempt's median time"),
           ("eager_time_ms", "ms", "graph mode: the eager median beside the replay time"),
           ("eager_time_ms_iqr", "ms", "graph mode: the eager IQR"),
           ("eager_samples_ms", "ms", "graph mode: the eager samples"),
           ("graph_error", "", "why the call could not be captured in a CUDA graph"),
           ("tokens_per_s", "1/s", "batch · n / time"),
           ("time_per_seq_ms", "ms", "capacity mode: time / max_batch"),
           ("build_s", "s", "building the method (never timed)")),
    *_cols("memory",
           ("peak_mem_mib", "MiB", "peak memory during one call (inputs and parameters included)"),
           ("extra_mem_mib", "MiB", "the part of the peak the call allocated itself"),
           ("reserved_mem_mib", "MiB", "CUDA: the caching allocator's peak reservation"),
           ("max_batch", "", "capacity mode: the largest batch that fits"),
           ("capacity_probes", "", "capacity mode: batches tried"),
           ("capacity_rel_tol", "", "capacity mode: the search's relative tolerance"),
           ("capacity_limit_mib", "MiB", "capacity mode: the memory limit"),
           ("n_params", "", "distinct parameters of the measured module (shared ones once)"),
           ("n_attn_params", "", "of those, inside the attention methods")),
    *_cols("error",
           ("rel_err", "", "relative Frobenius error of the output against float64 exact attention"),
           ("max_abs_err", "", "largest absolute error"),
           ("cosine", "", "cosine similarity of output and reference"),
           ("baseline_rel_err", "", "the baseline's own error in this dtype (rounding)"),
           ("error_skipped", "", "why no error was measured"),
           ("ref_rel_err", "", "an operator that approximates nothing (approximates=None): error "
                               "against itself in float64"),
           ("ref_max_abs_err", "", "its largest absolute error"),
           ("ref_cosine", "", "its cosine similarity"),
           ("error_vs", "", "what the error is measured against, when not softmax attention"),
           ("grad_rel_err", "", "fwd_bwd: relative error of all input gradients against float64"),
           ("dq_rel_err", "", "fwd_bwd: of dq"),
           ("dk_rel_err", "", "fwd_bwd: of dk"),
           ("dv_rel_err", "", "fwd_bwd: of dv"),
           ("dx_rel_err", "", "fwd_bwd, layer and model level: of the input gradient"),
           ("baseline_grad_rel_err", "", "the baseline's own gradient error in this dtype")),
    *_cols("accuracy",
           ("entropy", "", "exact attention's normalised entropy (1 uniform, 0 one key)"),
           ("uniform_rel_err", "", "error of uniform attention (every query returns mean(V))"),
           ("err_vs_uniform", "", "rel_err / uniform_rel_err (< 1: better than a constant)"),
           ("svd_rank", "", "the method's rank bound"),
           ("svd_rel_err", "", "the best any rank-svd_rank attention matrix can do"),
           ("svd_skipped", "", "why no SVD bound was computed")),
    *_cols("roofline",
           ("flops", "FLOP", "FLOPs of one call, where the method counts them"),
           ("tflops_per_s", "TFLOP/s", "achieved (FLOPs over allowed pairs: causal and sparse "
                                       "masks discounted)"),
           ("tb_per_s", "TB/s", "achieved: min_bytes / time"),
           ("copy_gbs", "GB/s", "measured device copy bandwidth"),
           ("matmul_tflops", "TFLOP/s", "measured matmul throughput in this dtype"),
           ("min_bytes", "B", "bytes the call must read and write at least"),
           ("mem_floor_ms", "ms", "min_bytes / copy bandwidth"),
           ("flop_floor_ms", "ms", "flops / matmul throughput"),
           ("mem_roofline_frac", "", "mem_floor_ms / time_ms"),
           ("flop_roofline_frac", "", "flop_floor_ms / time_ms")),
    *_cols("causal workloads",
           ("total_tokens", "tokens", "a constant-token sweep: batch = total_tokens / n"),
           ("time_per_token_ms", "ms", "decode: median time of one single-token step"),
           ("decode_steps", "", "decode: single-token steps timed"),
           ("decode_warmup", "", "decode: steps run before timing"),
           ("init_state_ms", "ms", "decode: folding the n-token prefix into the cache or state"),
           ("state_bytes", "B", "decode: bytes the method keeps between steps (cache or state)"),
           ("state_bytes_per_seq", "B", "decode: state_bytes / batch"),
           ("state_mib", "MiB", "decode: state_bytes in MiB"),
           ("state_tokens", "tokens", "decode: tokens the cache holds (n, a window, or 0 for a state)"),
           ("device_mem_mib", "MiB", "the device's memory, for sequences per GPU"),
           ("documents", "", "packed input: documents in each sequence"),
           ("mean_doc_len", "tokens", "packed input: mean document length"),
           ("max_doc_len", "tokens", "packed input: longest document"),
           ("varlen_kernel", "", "packed input: how documents were kept apart")),
    *_cols("training",
           ("train", "", "train level: the resolved [train] configuration (task, steps, lr, task knobs)"),
           ("task", "", "train level: the task trained (mqar, listops, mlm)"),
           ("metric", "", "train level: the task's held-out metric (accuracy or perplexity)"),
           ("accuracy", "", "train level: held-out accuracy at the last evaluation (None if diverged)"),
           ("perplexity", "", "train level: held-out perplexity at the last evaluation"),
           ("chance", "", "train level: the metric a model that learned nothing reaches"),
           ("eval_items", "", "train level: predictions the held-out set scores (query positions, "
                              "expressions or masked tokens): an accuracy's sample size"),
           ("quality_vs_exact", "", "train level: the metric over exact attention's in the same "
                                    "setting (perplexity: exact's over this one), 1 = as good"),
           ("eval_best", "", "train level: the best held-out metric over the evaluations"),
           ("eval_best_step", "", "train level: the step of that evaluation"),
           ("eval_last", "", "train level: the last evaluation's metric"),
           ("eval_last_step", "", "train level: the step of the last evaluation"),
           ("eval_loss_last", "", "train level: the last evaluation's loss"),
           ("train_loss_last", "", "train level: the last training step's loss"),
           ("steps_run", "", "train level: optimizer steps taken (fewer than steps if diverged)"),
           ("diverged_step", "", "train level: the step where the loss or an evaluation became "
                                 "non-finite"),
           ("train_wall_s", "s", "train level: wall time of the training loop, evaluations included"),
           ("data_s", "s", "train level: generating the task's data (never timed)"),
           ("curve_attempt", "", "train level: the attempt whose points curves.jsonl holds"),
           ("mean_length", "tokens", "listops: mean expression length before padding"),
           ("max_length", "tokens", "listops: longest expression"),
           ("corpus_sha256", "", "mlm: hash of the text corpus"),
           ("corpus_tokens", "tokens", "mlm: tokens in the training corpus"),
           ("eval_tokens", "tokens", "mlm: tokens held out for evaluation"),
           ("tokenizer", "", "mlm: the tokenizer that made the ids")),
    *_cols("method",
           ("stats", "", "the method's own stats() (kernel, density, compiled, ...); loaded as "
                         "stat.<name>")),
]

BY_NAME = {c.name: c for c in COLUMNS}
# columns whose values are lists (kept as lists when loaded)
LIST_COLUMNS = ("time_samples_ms", "eager_samples_ms", "attempt_medians_ms")


def declare(*columns: Column) -> None:
    """Add the columns a level, mode or executor writes (each module declares its own, at import)."""
    for c in columns:
        if c.name in BY_NAME:
            if BY_NAME[c.name] != c:
                raise ValueError(f"column {c.name!r} declared twice, differently")
            continue
        COLUMNS.append(c)
        BY_NAME[c.name] = c


def undeclared(row: dict) -> list[str]:
    """Keys of a row (schema version 2) that this module does not declare."""
    return sorted(k for k in row if k not in BY_NAME)
