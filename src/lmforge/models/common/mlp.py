"""The feed-forward block of a transformer layer."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    """GELU MLP (GPT-2/BERT), ReLU MLP (T5, the original Transformer), SwiGLU (Llama) or GEGLU (T5 v1.1),
    chosen by `kind`."""

    def __init__(self, n_embd: int, hidden: int, *, kind: str, bias: bool, dropout: float):
        super().__init__()
        self.kind = kind
        if kind in ("swiglu", "geglu"):
            self.gate = nn.Linear(n_embd, hidden, bias=bias)
        elif kind not in ("gelu", "gelu_exact", "relu"):
            raise ValueError(f"unknown mlp {kind!r}")
        self.up = nn.Linear(n_embd, hidden, bias=bias)
        self.down = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "geglu":
            h = F.gelu(self.gate(x), approximate="tanh") * self.up(x)
        elif self.kind == "relu":
            h = F.relu(self.up(x))
        else:
            # GPT-2 uses the tanh approximation, BERT the exact erf form.
            h = F.gelu(self.up(x), approximate="tanh" if self.kind == "gelu" else "none")
        return self.dropout(self.down(h))
