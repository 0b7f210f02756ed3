"""Perplexity and bits per byte of a causal LM over a long token stream.

Sliding-window evaluation (the method of the Hugging Face perplexity guide): a window feeds
`block_size` tokens to the model and windows start every `stride` tokens; each window scores
only the tokens the previous one did not, so every token after the first is scored exactly
once, with at least `block_size - stride + 1` and at most `block_size` tokens of context.
stride == block_size gives disjoint windows, which is how the validation loss is measured
during training (fast, less context per token); smaller strides give lower, fairer numbers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.data.tokenizers import Tokenizer
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.models.registry import load_model


def evaluate_perplexity(model: nn.Module, tokens, *, block_size: int | None = None, stride: int | None = None,
                        batch_size: int = 8, num_bytes: int | None = None) -> dict:
    """Score `tokens` (1-D LongTensor, numpy array or memmap) with `model`.

    Returns {"loss": mean nats per scored token, "perplexity": exp(loss),
    "bits_per_byte": total nats / ln 2 / num_bytes (None without num_bytes), "tokens": tokens scored}.
    """
    n, block_size, stride = _checked_settings(model, tokens, block_size, stride, batch_size, num_bytes)
    loss_sum, scored = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _equal_length_batches(_windows(n, block_size, stride), batch_size):
                for window_nll, window_tokens in _score_windows(model, tokens, batch):
                    loss_sum += window_nll
                    scored += window_tokens
    finally:
        model.train(was_training)
    return _summary(loss_sum, scored, num_bytes)


def _checked_settings(model: nn.Module, tokens, block_size: int | None, stride: int | None, batch_size: int,
                      num_bytes: int | None) -> tuple[int, int, int]:
    """(number of tokens, window length, stride), the last two defaulted; raises on unusable input."""
    if hasattr(model, "encode") and hasattr(model, "decode"):
        raise ConfigError(f"{model.family} models do not predict the next token of a text, so have no perplexity",
                          "compare them by their objective's validation loss (val_loss in summary.json)")
    n = int(tokens.shape[0]) if hasattr(tokens, "shape") else len(tokens)
    if hasattr(tokens, "dim") and tokens.dim() != 1 or hasattr(tokens, "ndim") and tokens.ndim != 1:
        raise DataError("tokens must be a 1-D sequence of token ids", "flatten the token array before evaluating")
    if n < 2:
        raise DataError(f"need at least 2 tokens to measure perplexity, got {n}", "evaluate on more text")
    context = model.config.block_size
    block_size = block_size or context
    if not 2 <= block_size <= context:
        raise ConfigError(f"block_size must be in [2, {context}] (the model's context length), got {block_size}",
                          f"pass --block_size {context} or less")
    stride = stride or max(1, block_size // 2)
    if not 1 <= stride <= block_size:
        raise ConfigError(f"stride must be in [1, block_size={block_size}], got {stride}",
                          "pass a stride no larger than the window; block_size // 2 is a good default")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}", "pass e.g. --batch_size 8")
    if num_bytes is not None and num_bytes <= 0:
        raise DataError(f"num_bytes must be positive, got {num_bytes}", "pass the UTF-8 size of the evaluated text")
    return n, block_size, stride


def _windows(n: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over `n` tokens: the window reads
    tokens[begin:end-1] and predicts tokens[begin+1:end]; positions before `first` were already
    scored by an earlier window."""
    windows, scored_to, begin = [], 1, 0
    while scored_to < n:
        end = min(begin + block_size + 1, n)
        windows.append((begin, end, scored_to))
        scored_to = end
        begin += stride
    return windows


def _equal_length_batches(windows: list[tuple[int, int, int]], batch_size: int):
    """Consecutive windows of one length, at most `batch_size` at a time: the full-length windows
    batch together, the last, shorter one (if any) runs alone."""
    i = 0
    while i < len(windows):
        length = windows[i][1] - windows[i][0]
        j = i
        while j < len(windows) and j - i < batch_size and windows[j][1] - windows[j][0] == length:
            j += 1
        yield windows[i:j]
        i = j


def _score_windows(model: nn.Module, tokens, batch: list[tuple[int, int, int]]) -> list[tuple[float, int]]:
    """(summed nats, number) of the tokens each window of `batch` scores."""
    vocab = model.config.vocab_size
    ids = torch.stack([_slice(tokens, b, e) for b, e, _ in batch]).to(next(model.parameters()).device)  # (B, T + 1)
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise DataError(f"token ids must be in [0, {vocab}) for this model, found {int(ids.max())}",
                        "encode the data with the tokenizer the model was trained with")
    logits = model(ids[:, :-1]).float()  # (B, T, vocab)
    nll = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1),
                          reduction="none").view(len(batch), -1)  # (B, T); nll[:, k] scores token b + 1 + k
    return [(float(nll[row, first - b - 1:].double().sum()), e - first) for row, (b, e, first) in enumerate(batch)]


def _summary(loss_sum: float, scored: int, num_bytes: int | None) -> dict:
    loss = loss_sum / scored
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "bits_per_byte": loss_sum / math.log(2) / num_bytes if num_bytes else None,
        "tokens": scored,
    }


def _slice(tokens, begin: int, end: int) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        return tokens[begin:end].long()
    return torch.from_numpy(np.asarray(tokens[begin:end], dtype=np.int64))


def perplexity_of_run(run_dir: str | Path, data: str | Path, *, device: str = "cpu", **kw) -> dict:
    """Perplexity of the model in `run_dir` on `data`.

    `data` is a prepared dataset directory (its `val.bin` is scored, bytes from `meta.json`)
    or a UTF-8 text file, scored as is after encoding with the run's tokenizer.
    Keyword arguments go to `evaluate_perplexity`.
    """
    run_dir, data = Path(run_dir), Path(data)
    if not data.exists():
        raise DataError(f"{data} does not exist", "pass a prepared dataset directory or a text file")
    if data.is_dir():
        tokens, num_bytes = _load_val_split(data)
        model = load_model(run_dir, device=device)
    else:
        text = _read_text(data)
        model = load_model(run_dir, device=device)
        tokens = np.asarray(_load_tokenizer(run_dir).encode(text), dtype=np.int64)
        num_bytes = len(text.encode("utf-8"))
    kw.setdefault("num_bytes", num_bytes)
    return evaluate_perplexity(model, tokens, **kw)


def _load_val_split(directory: Path):
    meta_path, val_path = directory / "meta.json", directory / "val.bin"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} is missing", "pass a directory written by `lmforge prepare`, or a text file")
    if not val_path.is_file():
        raise DataError(f"{val_path} is missing", "prepare the dataset with a validation split")
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta.get("dtype", "uint16"))
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{meta_path} is not valid ({e})", "re-run `lmforge prepare`") from None
    if val_path.stat().st_size == 0:
        raise DataError(f"{val_path} is empty", "prepare the dataset with a non-empty validation split")
    if val_path.stat().st_size % dtype.itemsize:
        raise DataError(f"{val_path} size is not a multiple of {dtype} ({dtype.itemsize} bytes)",
                        "re-run `lmforge prepare`; the file is truncated or meta.json is wrong")
    tokens = np.memmap(val_path, dtype=dtype, mode="r")
    num_bytes = meta.get("val_bytes") or None
    return tokens, num_bytes


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path} is empty", "pass a file with text in it")
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path} looks like a binary file, not text", "pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 (byte {e.start})", "convert it to UTF-8 first") from None
    if not text.strip():
        raise DataError(f"{path} contains only whitespace", "pass a file with text in it")
    return text


def _load_tokenizer(run_dir: Path):
    if not (run_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{run_dir / 'tokenizer.json'} is missing",
                              "pass a run directory written by lmforge training, which includes the tokenizer")
    return Tokenizer.load(run_dir)
