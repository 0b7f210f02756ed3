"""Recurrent language models: Elman RNN, LSTM and GRU over token embeddings.

Reads top to bottom: config -> recurrent state (the cache generation uses) -> model.

    embedding (B, T, n_embd) -> dropout -> n_layer stacked cells (B, T, hidden) -> dropout -> logits (B, T, V)

The stacked cells are `torch.nn.RNN/LSTM/GRU`, which run as one fused cuDNN kernel on
GPUs. `block_size` is the training context (the truncated-backpropagation length); the
network itself has no positional limit, and a state can be carried over any distance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmforge.errors import ConfigError
from lmforge.models.common.config import ModelConfig
from lmforge.models.registry import FamilyTraits

CELLS = ("rnn", "lstm", "gru")


@dataclass
class RNNConfig(ModelConfig):
    family, display_name = "rnn", "RNN"

    vocab_size: int = 50257
    block_size: int = 256           # training context (BPTT length); also the window used to evaluate
    n_layer: int = 2
    n_embd: int = 256               # embedding size
    hidden_size: int = 512
    cell: str = "lstm"
    dropout: float = 0.0            # on embeddings, between layers and before the output layer
    tie_embeddings: bool = False    # only possible when n_embd == hidden_size

    @property
    def variant(self) -> str:
        return self.cell

    def __post_init__(self):
        self.require_positive("vocab_size", "block_size", "n_layer", "n_embd", "hidden_size")
        self.require_choice("cell", CELLS, suggest="lstm")
        self.require_dropout("dropout")
        if self.tie_embeddings and self.n_embd != self.hidden_size:
            raise ConfigError(f"model.tie_embeddings needs model.n_embd ({self.n_embd}) == model.hidden_size "
                              f"({self.hidden_size})", "set them equal or pass --model.tie_embeddings false")


class RNNState:
    """The recurrent state of a batch, in the role a KV cache plays for transformers.

    `h` (and `c` for LSTMs) are (n_layer, B, hidden). A forward pass computes the state after
    its tokens and stages it; `advance(n)` commits it, just as a KV cache's length only moves
    when the caller advances it, so a forward pass that is not advanced leaves no trace.
    Unlike a KV cache its size does not grow with the sequence.
    """

    def __init__(self, n_layer: int, batch_size: int, hidden_size: int, *, lstm: bool,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", max_len: int | None = None):
        self.h = torch.zeros(n_layer, batch_size, hidden_size, dtype=dtype, device=device)
        self.c = torch.zeros_like(self.h) if lstm else None
        self.max_len = max_len
        self.length = 0
        self._staged = None

    @property
    def state(self):
        return (self.h, self.c) if self.c is not None else self.h

    def update(self, state) -> None:
        self._staged = state

    def advance(self, n: int) -> None:
        if self._staged is None:
            raise ValueError("advance() called without a forward pass since the last one")
        if self.c is not None:
            self.h, self.c = self._staged
        else:
            self.h = self._staged
        self._staged = None
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search, dropping finished requests)."""
        self.h = self.h[:, index]
        if self.c is not None:
            self.c = self.c[:, index]


class RNNLM(nn.Module):
    family = "rnn"

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.cell]
        # torch applies its dropout between stacked layers only, and warns when there is one layer.
        self.rnn = rnn_cls(cfg.n_embd, cfg.hidden_size, num_layers=cfg.n_layer, batch_first=True,
                           dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embedding and output layer U(-0.1, 0.1) with a zero output bias (Zaremba et al. 2014);
        recurrent weights keep torch's U(-1/sqrt(hidden), 1/sqrt(hidden)). LSTM forget gates start
        with a bias of 1 so that gradients flow through the cell early in training
        (Jozefowicz et al. 2015)."""
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        if not self.config.tie_embeddings:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)
        nn.init.zeros_(self.lm_head.bias)
        self.rnn.reset_parameters()
        if self.config.cell == "lstm":
            H = self.config.hidden_size
            with torch.no_grad():
                for name, p in self.rnn.named_parameters():
                    if name.startswith("bias_"):
                        # Gate order is input, forget, cell, output; the two biases are summed.
                        p[H:2 * H] = 1.0 if name.startswith("bias_ih") else 0.0

    def forward(self, input_ids: torch.Tensor, *, kv_cache: RNNState | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                last_only: bool = False, return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) for `input_ids` (B, T); the recurrent outputs (B, T, hidden) with `return_hidden`.

        With `kv_cache` (an `RNNState` from `new_kv_cache`), the tokens continue from its state
        and the state after them is staged for the caller's `advance`. `attention_mask` (B, S)
        marks real tokens over everything seen so far plus these tokens; pads must come first
        (left padding), and are skipped so that they do not touch the state. `position_ids` is
        accepted for interface parity and ignored: a recurrent model counts positions itself.
        `last_only` computes logits for the final position only.
        """
        B, T = input_ids.shape
        state = kv_cache.state if kv_cache is not None else None
        x = self.drop(self.wte(input_ids))  # (B, T, n_embd)
        pads = None
        if attention_mask is not None:
            real = attention_mask[:, -T:].bool()  # (B, T): the columns of these tokens
            if not bool(real.all()):
                pads = _left_pad_counts(real)
        if pads is None:
            out, new_state = self.rnn(x, state)  # (B, T, hidden)
        else:
            out, new_state = self._run_left_padded(x, state, pads)
        if kv_cache is not None:
            kv_cache.update(new_state)
        if return_hidden:
            return out
        if last_only:
            out = out[:, -1:]
        return self.lm_head(self.drop(out))

    def _run_left_padded(self, x: torch.Tensor, state, pads: torch.Tensor):
        """Run rows of `x` (B, T, C) whose first `pads[b]` positions are padding.

        Each row is rotated so that its real tokens come first, packed so that the cells stop at
        each row's last real token, and rotated back; outputs at pad positions are zeros.
        """
        B, T, C = x.shape
        lengths = T - pads  # (B,)
        t = torch.arange(T, device=x.device)[None]  # (1, T)
        to_front = ((t + pads[:, None]) % T)[..., None]  # (B, T, 1)
        packed = pack_padded_sequence(x.gather(1, to_front.expand(B, T, C)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, new_state = self.rnn(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, hidden), zeros after length
        back = ((t - pads[:, None]) % T)[..., None]
        return out.gather(1, back.expand(B, T, out.shape[-1])), new_state

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Recurrent outputs (B, T, hidden) for task heads; right padding never reaches earlier positions."""
        return self(input_ids, return_hidden=True)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, *, dtype=None, device=None) -> RNNState:
        cfg, ref = self.config, self.lm_head.weight
        return RNNState(cfg.n_layer, batch_size, cfg.hidden_size, lstm=cfg.cell == "lstm",
                        dtype=dtype or ref.dtype, device=device or ref.device, max_len=max_len)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy over targets that are not `ignore_index`."""
        logits = self(input_ids)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=ignore_index)


def _left_pad_counts(real: torch.Tensor) -> torch.Tensor:
    """Number of leading pads per row of the bool mask `real` (B, T); every row must be
    pads-then-tokens with at least one token."""
    if bool((real[:, 1:] < real[:, :-1]).any()):
        raise ValueError("recurrent models take left padding only: attention_mask must be pads then tokens")
    pads = (~real).sum(1)
    if bool((pads == real.shape[1]).any()):
        raise ValueError("every row needs at least one real token in attention_mask")
    return pads


# ---------------------------------------------------------------- presets
FAMILY, CONFIG, MODEL = "rnn", RNNConfig, RNNLM
TRAITS = FamilyTraits(structure="decoder", pooling="last", default_tokenizer="bpe", width_field="hidden_size")

PRESETS: dict[str, dict] = {
    "rnn-debug": dict(vocab_size=512, block_size=64, n_layer=2, n_embd=32, hidden_size=48, cell="rnn"),
    "lstm-debug": dict(vocab_size=512, block_size=64, n_layer=2, n_embd=32, hidden_size=48, cell="lstm"),
    "gru-debug": dict(vocab_size=512, block_size=64, n_layer=2, n_embd=32, hidden_size=48, cell="gru"),
    # CPU-sized character models of about 1M parameters each (vocab_size comes from the tokenizer).
    "rnn-small": dict(vocab_size=256, block_size=128, n_layer=2, n_embd=128, hidden_size=512, cell="rnn"),
    "lstm-small": dict(vocab_size=256, block_size=128, n_layer=2, n_embd=128, hidden_size=256, cell="lstm"),
    "gru-small": dict(vocab_size=256, block_size=128, n_layer=2, n_embd=128, hidden_size=320, cell="gru"),
    # A character GRU of the size of gpt-char-medium (about 9.6M parameters, context 256): for GPU budgets.
    "gru-medium": dict(vocab_size=256, block_size=256, n_layer=3, n_embd=256, hidden_size=768, cell="gru"),
    # Zaremba et al. 2014 "medium" Penn Treebank model: 2 x 650, dropout 0.5, BPTT 35, 10k words.
    "lstm-medium": dict(vocab_size=10000, block_size=35, n_layer=2, n_embd=650, hidden_size=650, cell="lstm",
                        dropout=0.5, tie_embeddings=False),
}
