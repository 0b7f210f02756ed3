"""Training objectives: each returns the summed loss and the number of targets it covers, so the
trainer can weight micro-batches by tokens and gradient accumulation equals one large batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def causal_lm_loss(model, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy summed over targets != IGNORE_INDEX, and their count."""
    logits = model(input_ids)  # (B, T, V)
    loss_sum = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (targets != IGNORE_INDEX).sum()


OBJECTIVES = {"clm": causal_lm_loss}
