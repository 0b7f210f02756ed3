"""What an explanation is about: one tokenised input, a model, and the scalar F(ids) being explained.

F is the probability the model gives the target (a class, a token's tag, the next token); every method
attributes it to the input tokens. Shapes: B batch (interpolation steps, deleted variants), T tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn


@dataclass
class Subject:
    model: nn.Module                                  # eval mode; attention layers from lmforge.models.common
    input_ids: torch.Tensor                           # (1, T)
    tokens: list[str]                                 # T display strings
    score: Callable[[torch.Tensor], torch.Tensor]     # ids (B, T') -> F (B,), any T' (deleting tokens shortens)
    baseline_ids: torch.Tensor                        # (1, T): special tokens kept, every other token padding
    embedding: nn.Module                              # the token embedding whose output attributions integrate
    focus: list[int]                                  # query rows the target reads (rollout / attention row)
    special: list[bool]                               # positions never scored nor deleted ([CLS], [SEP], <eos>)
    stack: str = "self"                               # the attention kind over the input's own tokens
    target: dict = field(default_factory=dict)        # what F is: {"kind", "label" or "token", "position"...}

    def __post_init__(self):
        assert self.input_ids.shape == self.baseline_ids.shape and self.input_ids.shape[1] == len(self.tokens)

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    def value(self) -> float:
        with torch.no_grad():
            return float(self.score(self.input_ids)[0])


def token_embedding(model: nn.Module) -> nn.Module:
    """The model's vocabulary embedding (the `nn.Embedding` every family names `wte`)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.split(".")[-1] == "wte":
            return module
    raise ValueError(f"{type(model).__name__} has no token embedding named wte")
