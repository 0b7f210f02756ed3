"""Decoding for encoder-decoder models: greedy and beam search over a KV cache.

The source is encoded once. Each decoder step feeds one token per row; self-attention keys/values
accumulate in a preallocated cache, and the cross-attention keys/values of the encoder output are
computed on the first step and reused. Beam search keeps `num_beams` rows per source and reorders
the cache rows as beams are chosen.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.infer.sampling import apply_rules


def _check(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, num_beams: int) -> int:
    if not hasattr(model, "encode") or not hasattr(model, "decode"):
        raise ConfigError(f"{type(model).__name__} is not an encoder-decoder model", "use a t5-family model")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ConfigError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}",
                          "pass a 2-D tensor of source token ids")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}", "pass e.g. 64")
    if num_beams < 1:
        raise ConfigError(f"num_beams must be >= 1, got {num_beams}", "pass 1 for greedy decoding or e.g. 4")
    cfg = model.config
    # Learned or sinusoidal positions stop at the context length; relative positions do not.
    return max_new_tokens if cfg.position == "relative" else min(max_new_tokens, cfg.block_size)


@dataclass(frozen=True)
class TargetRules:
    """Rules on the target generated so far (see `lmforge.infer.sampling.apply_rules`): a repetition
    penalty, no repeated n-gram of this size (0: off), and no end-of-text before `min_new_tokens`."""

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0

    @property
    def active(self) -> bool:
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0 or self.min_new_tokens > 0

    def apply(self, logp: torch.Tensor, prefix: torch.Tensor, eos_id: int | None) -> torch.Tensor:
        """`logp` (R, V) of the token after each decoder `prefix` (R, 1 + generated) under the rules."""
        if not self.active:
            return logp
        targets = prefix[:, 1:].tolist()  # the decoder start token is not part of the target
        return apply_rules(logp, targets, [len(t) for t in targets], eos_id=eos_id,
                           repetition_penalty=self.repetition_penalty,
                           no_repeat_ngram_size=self.no_repeat_ngram_size, min_new_tokens=self.min_new_tokens)


@torch.no_grad()
def generate_seq2seq(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                     attention_mask: torch.Tensor | None = None, eos_id: int | None = None, num_beams: int = 1,
                     length_penalty: float = 1.0, use_cache: bool = True,
                     rules: TargetRules = TargetRules()) -> list[list[int]]:
    """Target token ids for each source row of `input_ids` (B, S) (decoder start and eos excluded).

    `attention_mask` (B, S) marks real source tokens. A row ends at `eos_id` or after
    `max_new_tokens`. `num_beams` > 1 runs beam search, ranking finished hypotheses by
    sum of log-probabilities / length ** `length_penalty` (length counts generated tokens,
    eos included; 0 ranks by total log-probability, > 0 favours longer outputs). `rules` shape each
    step's log-probabilities (every beam's) before the choice.
    `use_cache=False` re-decodes the whole prefix at every step: slow, kept as a reference.
    """
    max_new_tokens = _check(model, input_ids, max_new_tokens, num_beams)
    was_training = model.training
    model.eval()
    try:
        if num_beams == 1:
            return _greedy(model, input_ids, attention_mask, max_new_tokens, eos_id, use_cache, rules)
        return _beam_search(model, input_ids, attention_mask, max_new_tokens, eos_id, num_beams, length_penalty,
                            use_cache, rules)
    finally:
        model.train(was_training)


class _Decoder:
    """Next-token log-probabilities of growing decoder prefixes, cached or recomputed."""

    def __init__(self, model, encoder_hidden, encoder_mask, rows: int, max_len: int, use_cache: bool):
        self.model, self.hidden, self.mask = model, encoder_hidden, encoder_mask
        self.cache = model.new_kv_cache(rows, max_len) if use_cache else None

    def log_probs(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix (R, t) -> log-probabilities (R, V) of the token after it."""
        if self.cache is None:
            logits = self.model.decode(prefix, self.hidden, self.mask, last_only=True)
        else:
            new = prefix[:, self.cache.length:]  # only the tokens the cache has not seen
            logits = self.model.decode(new, self.hidden, self.mask, kv_cache=self.cache, last_only=True)
            self.cache.advance(new.shape[1])
        return torch.log_softmax(logits[:, -1].float(), dim=-1)

    def reorder(self, index: torch.Tensor) -> None:
        self.hidden = self.hidden[index]
        self.mask = None if self.mask is None else self.mask[index]
        if self.cache is not None:
            self.cache.reorder(index)


def _greedy(model, input_ids, attention_mask, max_new_tokens, eos_id, use_cache, rules) -> list[list[int]]:
    B = input_ids.shape[0]
    hidden = model.encode(input_ids, attention_mask)  # (B, S, C)
    decoder = _Decoder(model, hidden, attention_mask, B, max_new_tokens, use_cache)
    prefix = torch.full((B, 1), model.config.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
    out: list[list[int]] = [[] for _ in range(B)]
    running = [True] * B
    for _ in range(max_new_tokens):
        token = rules.apply(decoder.log_probs(prefix), prefix, eos_id).argmax(dim=-1)  # (B,)
        for row, t in enumerate(token.tolist()):
            if running[row]:
                if t == eos_id:
                    running[row] = False
                else:
                    out[row].append(t)
        if not any(running):
            break
        prefix = torch.cat([prefix, token[:, None]], dim=1)
    return out


def _beam_search(model, input_ids, attention_mask, max_new_tokens, eos_id, K, length_penalty,
                 use_cache, rules) -> list[list[int]]:
    B, device = input_ids.shape[0], input_ids.device
    hidden = model.encode(input_ids, attention_mask).repeat_interleave(K, dim=0)  # (B*K, S, C)
    mask = None if attention_mask is None else attention_mask.repeat_interleave(K, dim=0)
    decoder = _Decoder(model, hidden, mask, B * K, max_new_tokens, use_cache)
    prefix = torch.full((B * K, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
    # Every beam starts identical: only the first may expand, or the same hypothesis would fill all K.
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # (normalised score, tokens)
    done = [False] * B

    def normalise(total: float, length: int) -> float:
        return total / length ** length_penalty

    for step in range(1, max_new_tokens + 1):
        logp = rules.apply(decoder.log_probs(prefix), prefix, eos_id)  # (B*K, V)
        V = logp.shape[-1]
        candidates = (scores.reshape(-1, 1) + logp).view(B, K * V)
        top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)  # enough to refill K after eos picks
        next_beam = torch.zeros(B, K, dtype=torch.long, device=device)
        next_token = torch.zeros(B, K, dtype=torch.long, device=device)
        next_score = torch.full((B, K), float("-inf"), device=device)
        for b in range(B):
            if done[b]:
                continue
            live = 0
            for rank, (s, i) in enumerate(zip(top_scores[b].tolist(), top_index[b].tolist())):
                if s == float("-inf") or live == K:
                    break
                beam, token = divmod(i, V)
                if token == eos_id:
                    if rank < K:  # an eos outside the top K candidates would not have been chosen
                        tokens = prefix[b * K + beam, 1:].tolist()
                        finished[b].append((normalise(s, step), tokens))
                    continue
                next_beam[b, live], next_token[b, live], next_score[b, live] = beam, token, s
                live += 1
            finished[b] = sorted(finished[b], key=lambda h: -h[0])[:K]
            # Done once K hypotheses are finished and no live beam can still beat the worst of them.
            best_live = next_score[b].max().item()
            if live == 0 or (len(finished[b]) == K and normalise(best_live, step) <= finished[b][-1][0]):
                done[b] = True
        if all(done):
            break
        source_rows = (torch.arange(B, device=device)[:, None] * K + next_beam).view(-1)
        decoder.reorder(source_rows)
        prefix = torch.cat([prefix[source_rows], next_token.view(-1, 1)], dim=1)
        scores = next_score
    for b in range(B):
        if not done[b]:  # out of steps: live beams compete as they are
            for k in range(K):
                if scores[b, k] > float("-inf"):
                    finished[b].append((normalise(scores[b, k].item(), max_new_tokens), prefix[b * K + k, 1:].tolist()))
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
