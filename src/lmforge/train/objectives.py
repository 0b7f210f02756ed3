"""Training objectives.

An objective splits its loss into named terms (`lm`, or `mlm` + `sop`, ...). For each term it
reports the *sum* of the loss over a batch and, separately and before any forward pass, the
*number of units* that sum covers (target tokens, sentences). The trainer divides every term by
its count over the whole global batch, so gradient accumulation and data parallelism give exactly
the gradients of one large batch, however unevenly targets fall into micro-batches.

Batches are dicts of tensors; `(input_ids, labels)` tuples from the LM window loader are accepted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def as_batch(batch) -> dict[str, torch.Tensor]:
    if isinstance(batch, dict):
        return batch
    input_ids, labels = batch
    return {"input_ids": input_ids, "labels": labels}


def token_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every position whose label is not IGNORE_INDEX (fp32 softmax)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def causal_lm_loss(model, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy summed over targets != IGNORE_INDEX, and their count."""
    return token_cross_entropy_sum(model(input_ids), targets), (targets != IGNORE_INDEX).sum()


class Objective:
    """A training objective: what a batch looks like and how its loss terms are computed.

    Subclasses implement `counts` and `__call__` (dicts keyed by loss term) and say how batches are
    drawn from a token stream: `make_loader` for training (an object with `next_batch()`,
    `state_dict()`, `load_state_dict()`, deterministic per step so runs resume exactly) and
    `eval_batches` for a fixed validation set.
    """

    name = "objective"
    families: tuple[str, ...] = ()   # model families it applies to

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def make_loader(self, tokens, seq_len: int, batch_size: int, *, tokenizer, seed: int, rank: int = 0,
                    world_size: int = 1):
        raise NotImplementedError

    def eval_batches(self, tokens, seq_len: int, batch_size: int, *, tokenizer, max_batches: int | None):
        raise NotImplementedError


class CausalLM(Objective):
    """Next-token prediction; `labels` are the inputs shifted by one (IGNORE_INDEX where masked out)."""

    name = "clm"
    families = ("gpt", "rnn")

    def counts(self, batch):
        return {"lm": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model, batch):
        kwargs = {"attention_mask": batch["attention_mask"]} if "attention_mask" in batch else {}
        return {"lm": token_cross_entropy_sum(model(batch["input_ids"], **kwargs), batch["labels"])}

    def make_loader(self, tokens, seq_len, batch_size, *, tokenizer=None, seed, rank=0, world_size=1):
        from lmforge.data.loaders import LMWindowLoader

        return LMWindowLoader(tokens, seq_len, batch_size, seed=seed, rank=rank, world_size=world_size)

    def eval_batches(self, tokens, seq_len, batch_size, *, tokenizer=None, max_batches):
        from lmforge.data.loaders import iter_eval_batches

        for x, y in iter_eval_batches(tokens, seq_len, batch_size, max_batches=max_batches):
            yield {"input_ids": x, "labels": y}


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


OBJECTIVES: dict[str, type[Objective]] = {"clm": CausalLM}


DEFAULT_OBJECTIVE = {"gpt": "clm", "rnn": "clm"}


def build_objective(name: str | None, family: str, **kwargs) -> Objective:
    """The objective `name` (None: the family's default), checked against the model family."""
    from lmforge.errors import ConfigError

    name = name or DEFAULT_OBJECTIVE.get(family)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}", f"choose one of {', '.join(sorted(OBJECTIVES))}")
    objective = OBJECTIVES[name](**kwargs)
    if family not in objective.families:
        usable = sorted(n for n, cls in OBJECTIVES.items() if family in cls.families)
        raise ConfigError(f"objective {name!r} does not apply to {family} models",
                          f"use one of: {', '.join(usable) or 'none'}")
    return objective
