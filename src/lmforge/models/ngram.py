"""N-gram language model with interpolated modified Kneser-Ney smoothing (Chen & Goodman 1998).

For an order-n model, with h a context of k-1 tokens and h' the same context without its first token:

    p_k(w | h) = (c_k(hw) - D_k(c_k(hw))) / c_k(h.)  +  gamma_k(h) * p_{k-1}(w | h')
    gamma_k(h) = (D_k1 * N1(h.) + D_k2 * N2(h.) + D_k3+ * N3+(h.)) / c_k(h.)
    p_0(w)     = 1 / vocab_size

c_n is the raw count of an n-gram; for lower orders c_k(hw) is its continuation count, the
number of distinct tokens seen just before hw. N_r(h.) counts the tokens w with c_k(hw) = r,
and c_k(h.) sums c_k(hw) over w. A context never seen (c_k(h.) = 0) passes p_{k-1} through.
Each order has three discounts from its count-of-counts n_r:

    Y = n1 / (n1 + 2 n2),   D_k1 = 1 - 2Y n2/n1,   D_k2 = 2 - 3Y n3/n2,   D_k3+ = 3 - 4Y n4/n3

Interpolating all the way down to the uniform distribution gives every token of the
vocabulary a non-zero probability, and each p_k sums to exactly 1 over the vocabulary.

Storage is count tables in sorted int64 arrays, kept as buffers so a fitted model saves and
loads like any other. A k-gram's key is `id(its first k-1 tokens) * vocab_size + last token`,
where the id of a (k-1)-gram is its index in the sorted table of order k-1: keys are exact
(no hashing), and all continuations of one context are adjacent in the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from lmforge.errors import ConfigError, DataError
from lmforge.models.common.config import ModelConfig
from lmforge.models.registry import FamilyTraits


@dataclass
class NGramConfig(ModelConfig):
    family, display_name = "ngram", "n-gram"

    vocab_size: int = 256
    order: int = 5
    block_size: int = 256                  # longest input fed in one call (evaluation windows, generation)
    discount: float | None = None          # None: modified KN; a number in (0, 1]: that one discount everywhere
    table_sizes: list[int] | None = None   # distinct k-grams stored for k = 1..order; set by `fit`

    def __post_init__(self):
        self.require_positive("vocab_size", "order", "block_size")
        if self.discount is not None and not 0.0 < self.discount <= 1.0:
            raise ConfigError(f"model.discount must be in (0, 1], got {self.discount}",
                              "drop it for modified Kneser-Ney discounts, or pass e.g. 0.75")
        if self.table_sizes is not None:
            self.table_sizes = [int(n) for n in self.table_sizes]
            if len(self.table_sizes) != self.order or min(self.table_sizes) < 0:
                raise ConfigError(f"model.table_sizes must hold {self.order} non-negative sizes, "
                                  f"got {self.table_sizes}", "load the config.json the model was saved with")


def modified_kn_discounts(count_of_counts: np.ndarray) -> np.ndarray:
    """(D1, D2, D3+) from n1..n4, the numbers of n-grams seen exactly 1..4 times (Chen & Goodman).

    Where a ratio is undefined (some n_r is 0) the single Kneser-Ney discount Y stands in; each
    D_r is kept in [0.01, r] so that a count never goes negative and every context leaves some
    probability to lower orders.
    """
    n1, n2, n3, n4 = (float(x) for x in count_of_counts[:4])
    y = n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else 0.5
    d = []
    for r, (nr, nr1) in enumerate(((n1, n2), (n2, n3), (n3, n4)), start=1):
        d.append(r - (r + 1) * y * nr1 / nr if nr > 0 and nr1 > 0 else y)
    return np.clip(np.array(d), 0.01, [1.0, 2.0, 3.0])


class NGramState:
    """The last `order - 1` tokens of each row, in the role a KV cache plays for transformers.

    `tokens`/`real` are (B, order - 1); `real` is False where a row has no token yet (or a pad).
    A forward pass stages the new history and `advance(n)` commits it.
    """

    def __init__(self, batch_size: int, width: int, *, device, max_len: int | None = None):
        self.tokens = torch.zeros(batch_size, width, dtype=torch.long, device=device)
        self.real = torch.zeros(batch_size, width, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0
        self._staged = None

    def update(self, tokens: torch.Tensor, real: torch.Tensor) -> None:
        self._staged = (tokens, real)

    def advance(self, n: int) -> None:
        if self._staged is None:
            raise ValueError("advance() called without a forward pass since the last one")
        self.tokens, self.real = self._staged
        self._staged = None
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens, self.real = self.tokens[index], self.real[index]


class NGramLM(nn.Module):
    """Count-based model: `fit(tokens)` fills the tables; `forward` returns log-probabilities as logits."""

    family = "ngram"

    def __init__(self, cfg: NGramConfig):
        super().__init__()
        self.config = cfg
        # Generic tools find a model's device from its first parameter; this one holds no numbers.
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        sizes = cfg.table_sizes or [0] * cfg.order
        for k in range(1, cfg.order + 1):
            contexts = 1 if k == 1 else sizes[k - 2]
            self.register_buffer(f"keys_{k}", torch.zeros(sizes[k - 1], dtype=torch.long))
            self.register_buffer(f"counts_{k}", torch.zeros(sizes[k - 1], dtype=torch.long))
            self.register_buffer(f"context_total_{k}", torch.zeros(contexts, dtype=torch.float64))
            self.register_buffer(f"context_gamma_{k}", torch.zeros(contexts, dtype=torch.float64))
        self.register_buffer("discounts", torch.zeros(cfg.order, 3, dtype=torch.float64))

    # ------------------------------------------------------------------ estimation
    def fit(self, tokens) -> "NGramLM":
        """Count every k-gram (k = 1..order) of the token stream `tokens` and set the discounts."""
        cfg = self.config
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n, V = cfg.order, cfg.vocab_size
        if toks.size < n:
            raise DataError(f"an order-{n} model needs at least {n} tokens to fit, got {toks.size}",
                            "fit on more text or lower --model.order")
        if toks.min() < 0 or toks.max() >= V:
            raise DataError(f"token ids must be in [0, {V}), found {int(toks.min())}..{int(toks.max())}",
                            "set --model.vocab_size to the tokenizer's vocabulary size")
        N = toks.size
        prefix_ids = np.zeros(N + 1, dtype=np.int64)  # id of the empty context at every start position
        # Per order: sorted distinct keys, raw counts, the id of the k-gram starting at each position,
        # and the first position of each distinct k-gram.
        tables = []
        for k in range(1, n + 1):
            keys = prefix_ids[:N - k + 1] * V + toks[k - 1:]  # k-gram starting at s = id(prefix at s) * V + token
            uniq, first, ids, raw = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
            tables.append((uniq, raw, ids, first))
            prefix_ids = ids
        sizes = []
        for k in range(1, n + 1):
            uniq, raw, ids, _ = tables[k - 1]
            if k == n:
                counts = raw
            else:
                # Continuation count of g = number of distinct (k+1)-grams "v g": take each distinct
                # (k+1)-gram once (at its first position s) and credit the k-gram starting at s + 1.
                first_longer = tables[k][3]
                counts = np.bincount(ids[first_longer + 1], minlength=uniq.size)
            if cfg.discount is not None:
                d = np.full(3, cfg.discount)
            else:
                d = modified_kn_discounts(np.bincount(np.minimum(counts, 5), minlength=6)[1:5])
            per_gram = np.where(counts > 0, d[np.clip(counts, 1, 3) - 1], 0.0)
            parents = uniq // V
            contexts = 1 if k == 1 else tables[k - 2][0].size
            setattr(self, f"keys_{k}", torch.from_numpy(uniq))
            setattr(self, f"counts_{k}", torch.from_numpy(counts.astype(np.int64)))
            setattr(self, f"context_total_{k}", torch.from_numpy(
                np.bincount(parents, weights=counts, minlength=contexts).astype(np.float64)))
            setattr(self, f"context_gamma_{k}", torch.from_numpy(
                np.bincount(parents, weights=per_gram, minlength=contexts).astype(np.float64)))
            self.discounts[k - 1] = torch.from_numpy(d)
            sizes.append(int(uniq.size))
        cfg.table_sizes = sizes
        return self.to(self.device_anchor.device)

    # ------------------------------------------------------------------ lookups
    def _table(self, k: int):
        return (getattr(self, f"keys_{k}"), getattr(self, f"counts_{k}"), getattr(self, f"context_total_{k}"),
                getattr(self, f"context_gamma_{k}"))

    def _check_fitted(self) -> None:
        if self.config.table_sizes is None:
            raise ConfigError("the n-gram model has no counts yet",
                              "call fit(tokens) first, or train it with `lmforge pretrain --model ngram-5`")

    @staticmethod
    def _find(keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Index of each `query` key in the sorted `keys`, -1 where absent."""
        pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
        return torch.where(keys[pos] == query, pos, -1)

    def _contexts(self, ids: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
        """For k = 1..order, the table index (in order k-1) of the k-1 tokens ending at each position
        of `ids` (B, T): -1 where that context was never seen or reaches past a pad or the row start.
        The empty context of k = 1 has index 0."""
        B, T = ids.shape
        V = self.config.vocab_size
        t = torch.arange(T, device=ids.device)
        last_pad = torch.where(~real, t, -1).cummax(dim=-1).values
        run = t - last_pad  # (B, T): real tokens in a row ending at t
        contexts = [torch.zeros_like(ids)]
        ending = torch.zeros_like(ids)  # index of the (j-1)-gram ending at t - 1, built up j by j
        for j in range(1, self.config.order):
            prev = ending if j == 1 else torch.cat([torch.full((B, 1), -1, dtype=torch.long, device=ids.device),
                                                    ending[:, :-1]], 1)
            # the j-gram ending at t = (the (j-1)-gram ending at t - 1) + token t
            found = self._find(self._table(j)[0], prev.clamp(min=0) * V + ids)
            ending = torch.where((prev >= 0) & (run >= j), found, -1)
            contexts.append(ending)
        return contexts

    def _discount(self, k: int, counts: torch.Tensor) -> torch.Tensor:
        d = self.discounts[k - 1][counts.clamp(1, 3) - 1]
        return torch.where(counts > 0, d, 0.0)

    def _interpolate_dense(self, k: int, ctx: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        """p_k(. | ctx) for each context index in `ctx` (P,), given p_{k-1} as `lower` (P, V)."""
        keys, counts, total, gamma = self._table(k)
        V = self.config.vocab_size
        den = torch.where(ctx >= 0, total[ctx.clamp(min=0)], 0.0)
        rows = (den > 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return lower
        c = ctx[rows]
        # All continuations of context c are the keys in [c * V, c * V + V).
        lo, hi = torch.searchsorted(keys, c * V), torch.searchsorted(keys, c * V + V)
        lens = hi - lo
        owner = torch.repeat_interleave(torch.arange(rows.numel(), device=ctx.device), lens)
        first = torch.cumsum(lens, 0) - lens
        idx = lo[owner] + torch.arange(owner.numel(), device=ctx.device) - first[owner]
        n = counts[idx]
        alpha = torch.zeros(rows.numel(), V, dtype=torch.float64, device=ctx.device)
        alpha[owner, keys[idx] - c[owner] * V] = (n - self._discount(k, n)) / total[c[owner]]
        out = lower.clone()
        out[rows] = alpha + (gamma[c] / total[c])[:, None] * lower[rows]
        return out

    def next_token_log_probs(self, input_ids: torch.Tensor, *, real: torch.Tensor | None = None,
                             last_only: bool = False) -> torch.Tensor:
        """log p(w | tokens up to t) for every position t of `input_ids` (B, T) and every w: (B, T, V) float64
        ((B, 1, V) with `last_only`). Contexts use only tokens marked `real` (default: all)."""
        self._check_fitted()
        B, T = input_ids.shape
        V = self.config.vocab_size
        real = torch.ones_like(input_ids, dtype=torch.bool) if real is None else real.bool()
        contexts = self._contexts(input_ids, real)
        if last_only:
            contexts, T = [c[:, -1:] for c in contexts], 1
        p = torch.full((B * T, V), 1.0 / V, dtype=torch.float64, device=input_ids.device)
        for k, ctx in enumerate(contexts, start=1):
            p = self._interpolate_dense(k, ctx.reshape(-1), p)
        return p.log().view(B, T, V)

    def log_probs(self, tokens) -> np.ndarray:
        """log p(token_t | the up to `order - 1` tokens before it) for each t of the 1-D `tokens`: float64."""
        self._check_fitted()
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.device_anchor.device).reshape(1, -1)
        V = self.config.vocab_size
        if ids.numel() == 0:
            return np.zeros(0)
        if int(ids.min()) < 0 or int(ids.max()) >= V:
            raise DataError(f"token ids must be in [0, {V})", "encode the text with the model's tokenizer")
        word = ids[0]
        p = torch.full(word.shape, 1.0 / V, dtype=torch.float64, device=ids.device)
        for k, ending in enumerate(self._contexts(ids, torch.ones_like(ids, dtype=torch.bool)), start=1):
            # Token t's context is the one ending at t - 1; the first token has only the empty context.
            ctx = torch.cat([torch.full((1,), 0 if k == 1 else -1, device=ids.device), ending[0, :-1]])
            keys, counts, total, gamma = self._table(k)
            c = ctx.clamp(min=0)
            den = torch.where(ctx >= 0, total[c], 0.0)
            at = self._find(keys, c * V + word)
            n = torch.where(at >= 0, counts[at.clamp(min=0)], 0)
            safe = den.clamp(min=1.0)
            p = torch.where(den > 0, (n - self._discount(k, n)) / safe + gamma[c] / safe * p, p)
        return p.log().cpu().numpy()

    # ------------------------------------------------------------------ the neural-model interface
    def forward(self, input_ids: torch.Tensor, *, kv_cache: NGramState | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Log-probabilities (B, T, vocab) of the next token at each position, usable as logits.

        `attention_mask` (B, S) marks real tokens over cache + new tokens; pads are never used as
        context. With `kv_cache` (from `new_kv_cache`) the tokens continue its history and the new
        history is staged for the caller's `advance`. `position_ids` is ignored.
        """
        B, T = input_ids.shape
        real = attention_mask[:, -T:].bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        ids = input_ids
        if kv_cache is not None:
            ids, real = torch.cat([kv_cache.tokens, ids], 1), torch.cat([kv_cache.real, real], 1)
            width = self.config.order - 1
            kv_cache.update(ids[:, ids.shape[1] - width:], real[:, ids.shape[1] - width:])
        out = self.next_token_log_probs(ids, real=real, last_only=last_only)
        return out[:, -T:].float()

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, *, dtype=None, device=None) -> NGramState:
        return NGramState(batch_size, self.config.order - 1, device=device or self.device_anchor.device,
                          max_len=max_len)

    def num_ngrams(self) -> int:
        return sum(self.config.table_sizes or [])


# ---------------------------------------------------------------- presets
FAMILY, CONFIG, MODEL = "ngram", NGramConfig, NGramLM
TRAITS = FamilyTraits(structure="decoder", fitted_by_counting=True)

PRESETS: dict[str, dict] = {
    "ngram-debug": dict(vocab_size=512, order=3, block_size=64),
    "ngram-3": dict(order=3),   # a word- or subword-level trigram model
    "ngram-5": dict(order=5),   # a character-level 5-gram model
}
