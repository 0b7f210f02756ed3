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
    """Base class: `counts(batch)` and `__call__(model, batch)` return dicts keyed by loss term."""

    name = "objective"

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class CausalLM(Objective):
    """Next-token prediction; `labels` are the inputs shifted by one (IGNORE_INDEX where masked out)."""

    name = "clm"

    def counts(self, batch):
        return {"lm": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model, batch):
        kwargs = {"attention_mask": batch["attention_mask"]} if "attention_mask" in batch else {}
        return {"lm": token_cross_entropy_sum(model(batch["input_ids"], **kwargs), batch["labels"])}


OBJECTIVES: dict[str, type[Objective]] = {"clm": CausalLM}


def build_objective(name: str, **kwargs) -> Objective:
    from lmforge.errors import ConfigError

    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}", f"choose one of {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](**kwargs)
