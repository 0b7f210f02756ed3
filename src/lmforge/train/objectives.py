"""Training objectives.

An objective splits its loss into named terms (`lm`, or `mlm` + `sop`, ...). For each term it
reports the *sum* of the loss over a batch and, separately and before any forward pass, the
*number of units* that sum covers (target tokens, sentences). The trainer divides every term by
its count over the whole global batch, so gradient accumulation and data parallelism give exactly
the gradients of one large batch, however unevenly targets fall into micro-batches.

Batches are dicts of tensors; `(input_ids, labels)` tuples from the LM window loader are accepted.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from lmforge.data.collate import Seq2SeqLoader, collate_seq2seq, shift_right
from lmforge.data.mlm_pretraining import PretrainingLoader, iter_pretraining_eval_batches
from lmforge.data.span_corruption import SpanCorruptionLoader, iter_span_corruption_eval_batches
from lmforge.data.loaders import LMWindowLoader, iter_eval_batches
from lmforge.errors import ConfigError
from lmforge.models.registry import traits_of
from lmforge.parallel import unwrap

IGNORE_INDEX = -100


def as_batch(batch) -> dict[str, torch.Tensor]:
    if isinstance(batch, dict):
        return batch
    input_ids, labels = batch
    return {"input_ids": input_ids, "labels": labels}


def token_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy summed over every position whose label is not IGNORE_INDEX (fp32 softmax)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)


def causal_lm_loss(model, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy summed over targets != IGNORE_INDEX, and their count."""
    return token_cross_entropy_sum(model(input_ids), targets), (targets != IGNORE_INDEX).sum()


class Objective(ABC):
    """A training objective: what a batch looks like and how its loss terms are computed.

    Subclasses implement `counts` and `__call__` (dicts keyed by loss term) and say how batches are
    drawn from a token stream: `make_loader` for training (an object with `next_batch()`,
    `state_dict()`, `load_state_dict()`, deterministic per step so runs resume exactly) and
    `eval_batches` for a fixed validation set.
    """

    name = "objective"
    structure = "decoder"            # the model structure it trains (see lmforge.models.registry.FamilyTraits)
    default_tokenizer = "bpe"        # the tokenizer kind raw data is prepared with when none is asked for
    extra_ids = 0                    # sentinel tokens <extra_id_N> that tokenizer must have (T5 span corruption)

    def prepare_model(self, model) -> None:
        """Adjust a freshly built model before training starts (e.g. freeze parts the loss never reaches)."""

    @abstractmethod
    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Units (targets) per loss term in `batch`: the denominators of the per-unit losses."""

    @abstractmethod
    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Summed loss per term over `batch`."""

    def make_loader(self, tokens, seq_len: int, batch_size: int, *, tokenizer, seed: int, rank: int = 0,
                    world_size: int = 1):
        # Application tasks draw examples, not windows of a token stream (see lmforge.tasks).
        raise TypeError(f"the {self.name} objective does not train from a token stream")

    def eval_batches(self, tokens, seq_len: int, batch_size: int, *, tokenizer, max_batches: int | None):
        raise TypeError(f"the {self.name} objective is not evaluated on a token stream")


class CausalLM(Objective):
    """Next-token prediction; `labels` are the inputs shifted by one (IGNORE_INDEX where masked out)."""

    name = "clm"
    structure = "decoder"  # n-gram models too: fitted by counting, then scored by this loss
    label_key = "labels"   # the batch entry holding the targets (distillation masks by it)

    def counts(self, batch):
        return {"lm": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model, batch):
        kwargs = {"attention_mask": batch["attention_mask"]} if "attention_mask" in batch else {}
        if getattr(unwrap(model), "sums_loss_from_labels", False):
            # The model sums the loss itself a chunk of positions at a time, never holding every logit.
            return {"lm": model(batch["input_ids"], labels=batch["labels"], **kwargs)}
        return {"lm": token_cross_entropy_sum(model(batch["input_ids"], **kwargs), batch["labels"])}

    def make_loader(self, tokens, seq_len, batch_size, *, tokenizer=None, seed, rank=0, world_size=1):
        return LMWindowLoader(tokens, seq_len, batch_size, seed=seed, rank=rank, world_size=world_size)

    def eval_batches(self, tokens, seq_len, batch_size, *, tokenizer=None, max_batches):
        for x, y in iter_eval_batches(tokens, seq_len, batch_size, max_batches=max_batches):
            yield {"input_ids": x, "labels": y}


class MaskedLM(Objective):
    """BERT's masked-language-model loss (term `mlm`, per masked token), optionally plus a sentence-pair
    loss (term `nsp` or `sop`, per pair): the total is mean MLM loss + mean pair loss, as in BERT.

    `mask_prob` of the non-special tokens are chosen (80% -> [MASK], 10% random, 10% kept);
    `whole_word` chooses whole words at a time. The tokenizer needs [CLS], [SEP] and [MASK].
    """

    name = "mlm"
    structure = "encoder"
    pair_task: str | None = None
    default_tokenizer = "wordpiece"

    def __init__(self, mask_prob: float = 0.15, whole_word: bool = False):
        self.mask_prob, self.whole_word = mask_prob, whole_word

    def prepare_model(self, model) -> None:
        # Without a pair loss the pooler and pair head get no gradient: freezing them keeps the optimizer
        # from tracking them and lets DDP run without searching for unused parameters.
        if self.pair_task is None:
            for module in model.sentence_pair_modules():
                module.requires_grad_(False)

    def counts(self, batch):
        counts = {"mlm": (batch["labels"] != IGNORE_INDEX).sum()}
        if self.pair_task:
            counts[self.pair_task] = torch.tensor(batch["pair_labels"].numel(), device=batch["labels"].device)
        return counts

    def __call__(self, model, batch):
        hidden = model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                       attention_mask=batch["attention_mask"])  # (B, T, C)
        bert = unwrap(model)
        labels = batch["labels"]
        selected = labels != IGNORE_INDEX
        # Vocabulary logits only where a token was masked: the other positions carry no loss.
        terms = {"mlm": token_cross_entropy_sum(bert.mlm_logits(hidden[selected]), labels[selected])}
        if self.pair_task:
            terms[self.pair_task] = F.cross_entropy(bert.pair_logits(hidden).float(), batch["pair_labels"],
                                                    reduction="sum")
        return terms

    def make_loader(self, tokens, seq_len, batch_size, *, tokenizer, seed, rank=0, world_size=1):
        return PretrainingLoader(tokens, seq_len, batch_size, tokenizer=tokenizer, pairs=self.pair_task,
                                 mask_prob=self.mask_prob, whole_word=self.whole_word, seed=seed, rank=rank,
                                 world_size=world_size)

    def eval_batches(self, tokens, seq_len, batch_size, *, tokenizer, max_batches):
        return iter_pretraining_eval_batches(tokens, seq_len, batch_size, tokenizer=tokenizer, pairs=self.pair_task,
                                             mask_prob=self.mask_prob, whole_word=self.whole_word,
                                             max_batches=max_batches)


class MaskedLMWithNSP(MaskedLM):
    """MLM + next-sentence prediction (BERT): B follows A (label 0) or comes from elsewhere (label 1)."""

    name = "mlm+nsp"
    pair_task = "nsp"


class MaskedLMWithSOP(MaskedLM):
    """MLM + sentence-order prediction (ALBERT): A and B consecutive, in order (0) or swapped (1)."""

    name = "mlm+sop"
    pair_task = "sop"


class Seq2Seq(Objective):
    """Cross-entropy of the target tokens given a source, for encoder-decoder models (term `lm`, per
    target token). Batches hold `input_ids`, `attention_mask` and `labels` (IGNORE_INDEX past each
    target); `decoder_input_ids` default to the labels shifted right behind the model's start token.

    Training data is a sequence of `(source_ids, target_ids)` pairs, such as a translation corpus.
    """

    name = "seq2seq"
    structure = "encoder-decoder"

    def counts(self, batch):
        return {"lm": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model, batch):
        decoder_input_ids = batch.get("decoder_input_ids")
        if decoder_input_ids is None:
            cfg = unwrap(model).config
            decoder_input_ids = shift_right(batch["labels"], cfg.decoder_start_token_id, cfg.pad_token_id)
        logits = model(batch["input_ids"], batch.get("attention_mask"), decoder_input_ids)
        return {"lm": token_cross_entropy_sum(logits, batch["labels"])}

    def _pairs(self, data):
        if hasattr(data, "dtype"):  # a flat token stream: there is no target to predict
            raise ConfigError(f"the {self.name} objective trains on (source, target) pairs, not raw text",
                              "pretrain on raw text with --objective span-corruption, or fine-tune on a paired task")
        return data

    def make_loader(self, tokens, seq_len, batch_size, *, tokenizer, seed, rank=0, world_size=1):
        return Seq2SeqLoader(self._pairs(tokens), batch_size, pad_id=tokenizer.pad_id,
                             decoder_start_id=tokenizer.pad_id, max_source_length=seq_len, max_target_length=seq_len,
                             seed=seed, rank=rank, world_size=world_size)

    def eval_batches(self, tokens, seq_len, batch_size, *, tokenizer, max_batches):
        pairs = self._pairs(tokens)
        n = len(pairs) if max_batches is None else min(len(pairs), max_batches * batch_size)
        for i in range(0, n, batch_size):
            yield collate_seq2seq([(s[:seq_len], t[:seq_len]) for s, t in pairs[i:min(i + batch_size, n)]],
                                  pad_id=tokenizer.pad_id, decoder_start_id=tokenizer.pad_id)


class SpanCorruption(Seq2Seq):
    """T5's pretraining objective on raw text: spans of about `mean_span_length` tokens covering
    `noise_density` of each window are replaced by sentinels, and the decoder writes them out
    (term `lm`, per target token). Raw text is prepared with a Unigram tokenizer that has T5's
    100 sentinel tokens."""

    name = "span-corruption"
    default_tokenizer = "unigram"
    extra_ids = 100

    def __init__(self, noise_density: float = 0.15, mean_span_length: float = 3.0):
        self.noise_density, self.mean_span_length = noise_density, mean_span_length

    def make_loader(self, tokens, seq_len, batch_size, *, tokenizer, seed, rank=0, world_size=1):
        return SpanCorruptionLoader(tokens, seq_len, batch_size, tokenizer=tokenizer,
                                    noise_density=self.noise_density, mean_span_length=self.mean_span_length,
                                    seed=seed, rank=rank, world_size=world_size)

    def eval_batches(self, tokens, seq_len, batch_size, *, tokenizer, max_batches):
        return iter_span_corruption_eval_batches(tokens, seq_len, batch_size, tokenizer=tokenizer,
                                                 noise_density=self.noise_density,
                                                 mean_span_length=self.mean_span_length, max_batches=max_batches)


def evaluate_objective(objective: Objective, model, batches) -> dict[str, float]:
    """Loss per unit of each term over `batches`, and their sum under `loss`."""
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for batch in batches:
        batch = {k: v.to(device) for k, v in as_batch(batch).items()}
        for term, n in objective.counts(batch).items():
            counts[term] = counts.get(term, 0.0) + float(n)
        for term, s in objective(model, batch).items():
            sums[term] = sums.get(term, 0.0) + float(s)
    per_term = {t: sums[t] / max(counts[t], 1.0) for t in sums}
    return {"loss": sum(per_term.values()), **per_term}


OBJECTIVES: dict[str, type[Objective]] = {"clm": CausalLM, "mlm": MaskedLM, "mlm+nsp": MaskedLMWithNSP,
                                          "mlm+sop": MaskedLMWithSOP, "seq2seq": Seq2Seq,
                                          "span-corruption": SpanCorruption}


DEFAULT_OBJECTIVE = {"decoder": "clm", "encoder": "mlm", "encoder-decoder": "span-corruption"}


def build_objective(name: str | None, family: str, **kwargs) -> Objective:
    """The objective `name` (None: the default for the model's structure), checked against the model family."""
    structure = traits_of(family).structure
    name = name or DEFAULT_OBJECTIVE.get(structure)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}", f"choose one of {', '.join(sorted(OBJECTIVES))}")
    objective = OBJECTIVES[name](**kwargs)
    if structure != objective.structure:
        usable = sorted(n for n, cls in OBJECTIVES.items() if cls.structure == structure)
        raise ConfigError(f"objective {name!r} does not apply to {family} models",
                          f"use one of: {', '.join(usable) or 'none'}")
    return objective
