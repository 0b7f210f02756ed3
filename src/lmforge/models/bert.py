"""BERT-style bidirectional encoder with the pretraining heads of the original paper.

Reads top to bottom: config -> embeddings -> block -> model (encoder, pooler, MLM and sentence-pair
heads) -> presets. Layer order, activations and epsilons follow Devlin et al. (2019) exactly as
Hugging Face's `BertForPreTraining` implements them, so its weights map onto these one to one:

    embeddings = LayerNorm(word + position + token type)
    each block:  x = LayerNorm(x + attn(x));  x = LayerNorm(x + mlp(x))      (post-norm)
    pooler     = tanh(dense(hidden[:, 0]))                                     ([CLS] summary)
    MLM head   = decoder(LayerNorm(gelu(dense(hidden)))) + bias, decoder tied to the word embeddings
    pair head  = 2-way linear on the pooled output (NSP: 0 = B follows A; SOP: 1 = swapped)

Fine-tuning heads (classification, tagging, span extraction) sit on `forward`'s hidden states or
`pool`'s summary vector.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models.common.attention import SelfAttention
from lmforge.models.common.config import ModelConfig
from lmforge.models.common.mlp import MLP
from lmforge.models.common.positions import sinusoidal_table
from lmforge.models.registry import FamilyTraits

POSITIONS = ("learned", "sinusoidal")
MLPS = ("gelu", "gelu_exact")


@dataclass
class BertConfig(ModelConfig):
    family, display_name = "bert", "BERT"

    vocab_size: int = 30522
    block_size: int = 512           # most positions a sequence may have
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    intermediate_size: int | None = None  # None = 4 * n_embd
    type_vocab_size: int = 2        # segment ids: 0 for sentence A, 1 for sentence B
    position: str = "learned"
    norm_eps: float = 1e-12
    mlp: str = "gelu_exact"
    dropout: float = 0.1            # on embeddings, attention weights and every residual branch
    pad_token_id: int = 0           # its embedding row starts at zero and is never updated by lookups
    init_std: float = 0.02
    # Per-layer sizes left by structured pruning (`lmforge prune`); None = n_head / intermediate_size everywhere.
    layer_heads: list[int] | None = None
    layer_intermediate: list[int] | None = None

    def __post_init__(self):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        self.require_positive("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "intermediate_size",
                              "type_vocab_size")
        self.require_heads_divide_width()
        self.require_choice("position", POSITIONS)
        self.require_choice("mlp", MLPS)
        self.require_dropout("dropout")
        self.require_layer_sizes("layer_heads", "layer_intermediate")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"model.pad_token_id ({self.pad_token_id}) is not a token id below model.vocab_size "
                              f"({self.vocab_size})", "pass the tokenizer's [PAD] id")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def padding_to_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) with 1 for real tokens -> bool (B, 1, 1, T): every query may attend to every real key.

    Padded query rows still see the real keys, so they never softmax over nothing; their outputs
    are simply ignored.
    """
    return attention_mask.bool()[:, None, None, :]


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.position = cfg.position
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, padding_idx=cfg.pad_token_id)
        if cfg.position == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.register_buffer("wpe_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.ln = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        # One row of positions per example, as in GPT: per-example gradient rules (DP-SGD) need the batch
        # dimension on every layer's input.
        positions = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        pos = self.wpe(positions) if self.position == "learned" else self.wpe_table[:T]  # (B, T, C) or (T, C)
        x = self.wte(input_ids) + self.wtt(token_type_ids) + pos  # (B, T, C)
        return self.drop(self.ln(x))


class Block(nn.Module):
    """Post-norm encoder block: LayerNorm after each residual sum, as in the original Transformer and BERT."""

    def __init__(self, cfg: BertConfig, layer: int = 0):
        super().__init__()
        heads = cfg.layer_size("layer_heads", layer, cfg.n_head)
        self.attn = SelfAttention(cfg.n_embd, heads, heads, bias=True, dropout=cfg.dropout, causal=False,
                                  head_dim=cfg.head_dim)
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.n_embd, cfg.layer_size("layer_intermediate", layer, cfg.intermediate_size), kind=cfg.mlp,
                       bias=True, dropout=cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, mask=mask))
        return self.ln_2(x + self.mlp(x))


class MLMHead(nn.Module):
    """Transform each hidden state, then score it against every word embedding (tied) plus a bias."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.gelu_approximate = "tanh" if cfg.mlp == "gelu" else "none"
        self.ln = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.ln(F.gelu(self.dense(hidden), approximate=self.gelu_approximate))
        return self.decoder(h)  # (..., vocab)


class Bert(nn.Module):
    family = "bert"

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlm_head = MLMHead(cfg, self.embeddings.wte)
        self.pair_head = nn.Linear(cfg.n_embd, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT init: N(0, 0.02) for every matrix and embedding, zero biases, unit norms, zero [PAD] row."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=self.config.init_std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)
        with torch.no_grad():
            self.embeddings.wte.weight[self.config.pad_token_id].zero_()

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) for `input_ids` (B, T).

        `token_type_ids` (B, T) default to all zeros (one segment); `attention_mask` (B, T) marks
        real tokens with 1 and padding with 0 (default: no padding).
        """
        B, T = input_ids.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the model's {self.config.block_size} positions")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = padding_to_attention_mask(attention_mask) if attention_mask is not None else None
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask=mask)
        return x

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) for task heads (padding anywhere, marked by `attention_mask`)."""
        return self(input_ids, token_type_ids, attention_mask)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Sequence summary (B, C): tanh(dense(hidden state of the first token, [CLS]))."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., vocab) for hidden states (..., C).

        Pass only the positions that were masked (`hidden[labels != -100]`): scoring all of them
        costs a vocabulary-sized matmul per token for nothing.
        """
        return self.mlm_head(hidden)

    def pair_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Sentence-pair logits (B, 2) from hidden states (B, T, C): NSP or SOP."""
        return self.pair_head(self.pool(hidden))

    def forward_pretraining(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                            attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM logits at every position (B, T, vocab) and pair logits (B, 2), as `BertForPreTraining`."""
        hidden = self(input_ids, token_type_ids, attention_mask)
        return self.mlm_logits(hidden), self.pair_logits(hidden)

    def sentence_pair_modules(self) -> list[nn.Module]:
        """The modules only a sentence-pair loss (NSP/SOP) trains; masked-LM loss alone never reaches them."""
        return [self.pooler, self.pair_head]


# ---------------------------------------------------------------- presets
FAMILY, CONFIG, MODEL = "bert", BertConfig, Bert
TRAITS = FamilyTraits(structure="encoder", input_format="cls-sep", pooling="pooler",
                      default_tokenizer="wordpiece")

PRESETS: dict[str, dict] = {
    "bert-debug": dict(vocab_size=1024, block_size=128, n_layer=2, n_head=4, n_embd=64),
    # Devlin et al. (2019): 110M and 340M parameters with the uncased 30,522-token WordPiece vocabulary.
    "bert-base": dict(n_layer=12, n_head=12, n_embd=768, intermediate_size=3072),
    "bert-large": dict(n_layer=24, n_head=16, n_embd=1024, intermediate_size=4096),
}
