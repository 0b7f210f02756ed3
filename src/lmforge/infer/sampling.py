"""Turning next-token logits into tokens: pure functions over (B, V) tensors.

Order of operations follows the usual convention (CTRL, HF): the rules that depend on what was
already generated (`apply_rules`: repetition penalty -> no repeated n-gram -> minimum length), then
`sample_next`: temperature -> top-k -> top-p -> sample. Filtered entries are set to -inf so that
softmax gives them exactly zero probability.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from lmforge.errors import ConfigError


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature 0 means greedy decoding; top_k None or 0 and top_p 1.0 disable those filters;
    repetition_penalty 1.0 disables the penalty. `no_repeat_ngram_size` n > 0 never generates an
    n-gram the sequence already holds (0 disables it); `min_new_tokens` keeps the end-of-text token
    out until that many tokens are generated. `stop` strings end a reply (they are not
    included in it). `seed` makes sampling reproducible. `num_samples` completions per prompt.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    num_samples: int = 1
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop or [])
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}",
                              "pass 0 for greedy decoding or a positive value such as 0.8")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}", "pass 0 to disable top-k or e.g. 50")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}", "pass 1.0 to disable nucleus sampling or e.g. 0.9")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}",
                              "pass 1.0 for no penalty or e.g. 1.2")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}", "pass e.g. 64")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}", "pass e.g. 1")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must not be empty", "remove the empty stop string")
        check_generation_rules(self.no_repeat_ngram_size, self.min_new_tokens, self.max_new_tokens)

    @property
    def has_rules(self) -> bool:
        """Whether any rule depends on the tokens generated so far (see `apply_rules`)."""
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0 or self.min_new_tokens > 0


def check_generation_rules(no_repeat_ngram_size: int, min_new_tokens: int, max_new_tokens: int) -> None:
    if no_repeat_ngram_size < 0:
        raise ConfigError(f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}",
                          "pass 0 to allow repeats or e.g. 3")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ConfigError(f"min_new_tokens must be between 0 and max_new_tokens ({max_new_tokens}), "
                          f"got {min_new_tokens}", "pass e.g. 8")


def banned_ngram_tokens(tokens: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram `tokens` already contains (HF's `no_repeat_ngram_size`)."""
    if n <= 0 or len(tokens) < n:
        return set()
    if n == 1:
        return set(tokens)
    tokens = list(tokens)
    tail = tokens[len(tokens) - n + 1:]
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i:i + n - 1] == tail}


def ban_repeated_ngrams(logits: torch.Tensor, histories: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    """`logits` (B, V) with -inf at every token that would repeat an n-gram of its row's history."""
    if n <= 0:
        return logits
    rows, cols = [], []
    for row, tokens in enumerate(histories):
        banned = banned_ngram_tokens(tokens, n)
        rows += [row] * len(banned)
        cols += sorted(banned)
    if not rows:
        return logits
    logits = logits.clone()
    logits[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)] = float("-inf")
    return logits


def apply_rules(logits: torch.Tensor, histories: Sequence[Sequence[int]], generated: Sequence[int], *,
                repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
                eos_id: int | None = None) -> torch.Tensor:
    """The rules that depend on what each row holds so far, on `logits` (B, V).

    `histories[b]` is the token sequence row b continues (what the penalty and the n-gram rule look
    at: prompt + generated for decoders, the generated target for encoder-decoders); `generated[b]`
    how many tokens row b has generated (the minimum length counts these)."""
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, histories, repetition_penalty)
    logits = ban_repeated_ngrams(logits, histories, no_repeat_ngram_size)
    if min_new_tokens and eos_id is not None:
        short = torch.tensor([g < min_new_tokens for g in generated], device=logits.device)
        if bool(short.any()):
            logits = logits.clone()
            logits[short, eos_id] = float("-inf")
    return logits


def apply_repetition_penalty(logits: torch.Tensor, generated_ids: torch.Tensor | Sequence[Sequence[int]],
                             penalty: float) -> torch.Tensor:
    """Penalise every token already present in a row: positive logits / penalty, negative * penalty.

    `generated_ids` is (B, n) or a list of per-row id lists (rows may differ in length).
    Each seen token is penalised once, however often it occurred (Keskar et al. 2019).
    """
    if penalty == 1.0:
        return logits
    if not isinstance(generated_ids, torch.Tensor):
        rows = [list(r) for r in generated_ids]
        width = max((len(r) for r in rows), default=0)
        if width == 0:
            return logits
        # Pad short rows with one of their own tokens: a repeated index is penalised only once.
        ids = torch.empty(len(rows), width, dtype=torch.long)
        has_any = torch.zeros(len(rows), 1, dtype=torch.bool)
        for i, r in enumerate(rows):
            if r:
                ids[i] = torch.tensor(r + [r[0]] * (width - len(r)))
                has_any[i] = True
            else:
                ids[i] = 0
        ids, has_any = ids.to(logits.device), has_any.to(logits.device)
        seen = logits.gather(1, ids)
        penalised = torch.where(seen > 0, seen / penalty, seen * penalty)
        return logits.scatter(1, ids, torch.where(has_any, penalised, seen))
    if generated_ids.numel() == 0:
        return logits
    ids = generated_ids.to(device=logits.device, dtype=torch.long)
    seen = logits.gather(1, ids)
    return logits.scatter(1, ids, torch.where(seen > 0, seen / penalty, seen * penalty))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by `temperature` (> 0); 1.0 returns the logits unchanged."""
    if temperature <= 0:
        raise ValueError("temperature must be positive here; temperature 0 means greedy argmax")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits per row (ties with the k-th are kept); None/0 keeps all."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of top tokens whose probability sums to >= p.

    The most likely token is always kept, so no row is ever left empty.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    # Mass strictly before each token: once that reaches p, the nucleus is already complete.
    before = probs.cumsum(dim=-1) - probs
    remove_sorted = before >= p
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row, (B,). temperature 0 is greedy argmax (top_k/top_p then do not matter)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), temperature)
    logits = top_k_filter(logits, top_k)
    logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
