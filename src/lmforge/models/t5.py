"""Encoder-decoder transformers: T5 (Raffel et al. 2020) and the original Transformer (Vaswani et al. 2017).

One config covers both. T5: relative position bias shared by every layer of a stack, pre-norm RMSNorm
without biases, unscaled attention scores, ReLU (v1.0) or GEGLU (v1.1) feed-forward. The Transformer:
sinusoidal positions added to embeddings scaled by sqrt(d_model), post-norm LayerNorm with biases,
scores scaled by 1/sqrt(head_dim).

Reads top to bottom: config -> block -> stack -> model (encode, decode, forward) -> decoding cache -> presets.
Shapes: B batch, S source (encoder) tokens, T target (decoder) tokens, C = n_embd, V vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.models.common.attention import CrossAttention, SelfAttention, causal_mask
from lmforge.models.common.cache import KVCache
from lmforge.models.common.config import ModelConfig
from lmforge.models.common.mlp import MLP
from lmforge.models.common.norms import make_norm
from lmforge.models.common.positions import RelativePositionBias, sinusoidal_table
from lmforge.models.registry import FamilyTraits

POSITIONS = ("relative", "sinusoidal", "learned")
NORMS = ("rmsnorm", "layernorm")
NORM_POSITIONS = ("pre", "post")
# Feed-forward names as in T5 checkpoints (`feed_forward_proj`) -> the shared MLP's kinds.
MLPS = {"relu": "relu", "gated-gelu": "geglu", "gelu": "gelu_exact"}


@dataclass
class T5Config(ModelConfig):
    family, display_name = "t5", "T5"

    vocab_size: int = 32128
    block_size: int = 512           # longest source/target for learned or sinusoidal positions
    n_layer: int = 6                # encoder blocks
    n_decoder_layer: int | None = None  # None = n_layer
    n_head: int = 8
    n_embd: int = 512               # d_model
    head_dim: int | None = None     # d_kv; None = n_embd // n_head
    intermediate_size: int = 2048   # d_ff
    mlp: str = "relu"               # relu (T5 v1.0, Transformer) | gated-gelu (T5 v1.1) | gelu
    position: str = "relative"      # relative (T5) | sinusoidal (Transformer) | learned
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm: str = "rmsnorm"
    norm_position: str = "pre"      # pre: x + f(norm(x)) (T5); post: norm(x + f(x)) (Transformer)
    norm_eps: float = 1e-6
    bias: bool = False
    scaled_attention: bool = False  # divide scores by sqrt(head_dim); T5 folds that factor into its init
    scale_embeddings: bool = False  # multiply embeddings by sqrt(n_embd) (Transformer)
    tie_embeddings: bool = True     # the output layer reuses the (shared encoder/decoder) embedding
    segment_embedding: bool = False  # one learned vector added to every token before positions (BERT's segment 0)
    embedding_norm: bool = False    # LayerNorm over the summed embeddings of each stack, as in BERT
    dropout: float = 0.0
    pad_token_id: int = 0
    decoder_start_token_id: int | None = None  # None = pad_token_id, as in T5

    def __post_init__(self):
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        self.require_positive("vocab_size", "block_size", "n_layer", "n_decoder_layer", "n_head", "n_embd",
                              "intermediate_size")
        if self.head_dim is None:
            self.require_heads_divide_width("choose n_embd as a multiple of n_head, or set model.head_dim")
            self.head_dim = self.n_embd // self.n_head
        if self.head_dim <= 0:
            raise ConfigError(f"model.head_dim must be positive, got {self.head_dim}", "set e.g. --model.head_dim 64")
        self.require_choice("position", POSITIONS)
        self.require_choice("norm", NORMS)
        self.require_choice("norm_position", NORM_POSITIONS)
        self.require_choice("mlp", tuple(MLPS))
        # Bidirectional buckets are halved, and half of each half holds exact distances: at least one each.
        if self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 4:
            raise ConfigError(f"model.relative_buckets ({self.relative_buckets}) must be >= 4 and "
                              f"model.relative_max_distance ({self.relative_max_distance}) above a quarter of it",
                              "use the T5 values 32 and 128")
        for name in ("pad_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"model.{name} ({getattr(self, name)}) is outside the vocabulary "
                                  f"[0, {self.vocab_size})", "use the tokenizer's pad id")
        self.require_dropout("dropout")


class Block(nn.Module):
    """Encoder block (self-attention, MLP) or decoder block (causal self-attention, cross-attention, MLP)."""

    def __init__(self, cfg: T5Config, *, decoder: bool):
        super().__init__()
        C, nh, hs = cfg.n_embd, cfg.n_head, cfg.head_dim
        scale = None if cfg.scaled_attention else 1.0
        self.pre_norm = cfg.norm_position == "pre"
        self.ln_1 = make_norm(cfg.norm, C, cfg.norm_eps, cfg.bias)
        self.attn = SelfAttention(C, nh, nh, bias=cfg.bias, dropout=cfg.dropout, causal=decoder, head_dim=hs,
                                  scale=scale)
        if decoder:
            self.ln_cross = make_norm(cfg.norm, C, cfg.norm_eps, cfg.bias)
            self.cross_attn = CrossAttention(C, nh, head_dim=hs, bias=cfg.bias, dropout=cfg.dropout, scale=scale)
        self.ln_2 = make_norm(cfg.norm, C, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(C, cfg.intermediate_size, kind=MLPS[cfg.mlp], bias=cfg.bias, dropout=cfg.dropout)

    def _sublayer(self, x, norm, fn, *args, **kwargs):
        if self.pre_norm:
            return x + fn(norm(x), *args, **kwargs)
        return norm(x + fn(x, *args, **kwargs))

    def forward(self, x, *, mask=None, memory_kv=None, memory_mask=None, kv_cache=None, layer_idx=0):
        x = self._sublayer(x, self.ln_1, self.attn, mask=mask, kv_cache=kv_cache, layer_idx=layer_idx)
        if memory_kv is not None:
            x = self._sublayer(x, self.ln_cross, self.cross_attn, memory_kv, mask=memory_mask)
        return self._sublayer(x, self.ln_2, self.mlp)


class Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, attending to the encoder output)."""

    def __init__(self, cfg: T5Config, *, decoder: bool):
        super().__init__()
        self.config, self.causal = cfg, decoder
        if cfg.position == "relative":
            self.rel_pos = RelativePositionBias(cfg.n_head, bidirectional=not decoder,
                                                num_buckets=cfg.relative_buckets,
                                                max_distance=cfg.relative_max_distance)
        elif cfg.position == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.register_buffer("wpe_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        if cfg.segment_embedding:
            self.wtt = nn.Parameter(torch.zeros(1, cfg.n_embd))  # (1, C)
        self.ln_emb = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps) if cfg.embedding_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        n = cfg.n_decoder_layer if decoder else cfg.n_layer
        self.blocks = nn.ModuleList(Block(cfg, decoder=decoder) for _ in range(n))
        # Post-norm blocks already end in a norm.
        self.ln_f = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias) if cfg.norm_position == "pre" \
            else nn.Identity()

    def forward(self, x: torch.Tensor, *, padding: torch.Tensor | None = None, past: int = 0,
                memory_kv: list | None = None, memory_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """x: embedded tokens (B, T, C) at positions past..past+T-1 -> hidden states (B, T, C).

        `padding` (B, T) marks real tokens (encoder only); `memory_kv` holds each decoder layer's
        cross-attention keys/values and `memory_mask` (B, 1, 1, S) the real encoder positions.
        """
        T = x.shape[1]
        S = past + T
        cfg = self.config
        if cfg.position != "relative" and S > cfg.block_size:
            raise ValueError(f"sequence of {S} tokens exceeds the model's context length {cfg.block_size}")
        if cfg.segment_embedding:
            x = x + self.wtt
        if cfg.position == "learned":
            x = x + self.wpe(torch.arange(past, S, device=x.device))
        elif cfg.position == "sinusoidal":
            x = x + self.wpe_table[past:S].to(x.dtype)
        x = self.drop(self.ln_emb(x))
        mask = self._self_attention_mask(T, S, padding, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, memory_kv=None if memory_kv is None else memory_kv[i], memory_mask=memory_mask,
                      kv_cache=kv_cache, layer_idx=i)
        return self.ln_f(x)

    def _self_attention_mask(self, T: int, S: int, padding: torch.Tensor | None, device) -> torch.Tensor | None:
        """One mask for every block: bool, or an additive float when it carries the relative position bias.

        The relative bias is computed once per forward and shared by all layers, as in T5.
        """
        keys = None if padding is None else padding[:, None, None, :].bool()  # (B, 1, 1, S)
        if not hasattr(self, "rel_pos"):
            return keys  # causality, if any, is left to the attention's own fast path
        bias = self.rel_pos(T, S, past=S - T)  # (1, nh, T, S)
        if self.causal:
            bias = bias.masked_fill(~causal_mask(T, S, device), float("-inf"))
        if keys is not None:
            bias = bias.masked_fill(~keys, float("-inf"))  # (B, nh, T, S)
        return bias


class EncoderDecoderCache:
    """Decoding state: the decoder's self-attention keys/values, which grow by one position per step,
    and each decoder layer's cross-attention keys/values of the encoder output, computed once.

    As with the decoder-only cache, the caller advances it after each step.
    """

    def __init__(self, self_attn: KVCache):
        self.self_attn = self_attn
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def length(self) -> int:
        return self.self_attn.length

    def advance(self, n: int) -> None:
        self.self_attn.advance(n)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search, dropping finished rows)."""
        self.self_attn.reorder(index)
        if self.cross is not None:
            self.cross = [(k[index], v[index]) for k, v in self.cross]


class T5(nn.Module):
    family = "t5"

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # shared by encoder, decoder (and output if tied)
        self.encoder = Stack(cfg, decoder=False)
        self.decoder = Stack(cfg, decoder=True)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    @property
    def _embedding_std(self) -> float:
        # T5 keeps unit-variance embeddings; the Transformer scales them up by sqrt(C) so starts at 1/sqrt(C).
        return self.config.n_embd ** -0.5 if self.config.scale_embeddings else 1.0

    @property
    def _output_scale(self) -> float:
        # Tied unit-variance T5 embeddings would give logits sqrt(C) too large; T5 rescales the decoder output.
        cfg = self.config
        return cfg.n_embd ** -0.5 if cfg.tie_embeddings and not cfg.scale_embeddings else 1.0

    def reset_parameters(self) -> None:
        """T5's init: every matrix N(0, 1/fan_in); queries also by 1/sqrt(head_dim) when scores are unscaled."""
        cfg = self.config
        C, inner = cfg.n_embd, cfg.n_head * cfg.head_dim
        q_std = C ** -0.5 if cfg.scaled_attention else (C * cfg.head_dim) ** -0.5
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() == 1:
                    nn.init.ones_(p)
                else:
                    nn.init.normal_(p, std=C ** -0.5)
            nn.init.normal_(self.wte.weight, std=self._embedding_std)
            for stack in (self.encoder, self.decoder):
                if cfg.segment_embedding:
                    nn.init.zeros_(stack.wtt)
            for module in self.modules():
                if isinstance(module, SelfAttention):
                    nn.init.normal_(module.qkv.weight[:inner], std=q_std)
                elif isinstance(module, CrossAttention):
                    nn.init.normal_(module.q.weight, std=q_std)
                if isinstance(module, (SelfAttention, CrossAttention)):
                    nn.init.normal_(module.proj.weight, std=inner ** -0.5)
                elif isinstance(module, MLP):
                    nn.init.normal_(module.down.weight, std=cfg.intermediate_size ** -0.5)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids)  # (B, T, C)
        return x * math.sqrt(self.config.n_embd) if self.config.scale_embeddings else x

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states (B, S, C); `attention_mask` (B, S) marks real tokens (padding anywhere)."""
        return self.encoder(self.embed(input_ids), padding=attention_mask)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states (B, S, C) for task heads."""
        return self.encode(input_ids, attention_mask)

    def project_memory(self, encoder_hidden: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys/values (B, nh, S, hs) of the encoder output."""
        return [block.cross_attn.project_memory(encoder_hidden) for block in self.decoder.blocks]

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden: torch.Tensor,
               encoder_mask: torch.Tensor | None = None, *, kv_cache: EncoderDecoderCache | None = None,
               last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for `decoder_input_ids` (B, T) given the encoder output (B, S, C).

        With `kv_cache` the tokens continue the cached ones (the caller advances the cache); the
        cross-attention keys/values are computed on the first call and reused after that.
        """
        if kv_cache is None:
            memory_kv, past, self_cache = self.project_memory(encoder_hidden), 0, None
        else:
            if kv_cache.cross is None:
                kv_cache.cross = self.project_memory(encoder_hidden)
            memory_kv, past, self_cache = kv_cache.cross, kv_cache.length, kv_cache.self_attn
        memory_mask = None if encoder_mask is None else encoder_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        x = self.decoder(self.embed(decoder_input_ids), past=past, memory_kv=memory_kv, memory_mask=memory_mask,
                         kv_cache=self_cache)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x * self._output_scale)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V): the source `input_ids` (B, S) encoded, `decoder_input_ids` (B, T) decoded
        (the targets shifted right behind `decoder_start_token_id`)."""
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required: the targets shifted right behind the start token")
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, *, dtype=None,
                     device=None) -> EncoderDecoderCache:
        cfg, ref = self.config, self.wte.weight
        self_attn = KVCache(cfg.n_decoder_layer, batch_size, cfg.n_head, max_len or cfg.block_size, cfg.head_dim,
                            dtype=dtype or ref.dtype, device=device or ref.device)
        return EncoderDecoderCache(self_attn)


# ---------------------------------------------------------------- presets
FAMILY, CONFIG, MODEL = "t5", T5Config, T5
TRAITS = FamilyTraits(structure="encoder-decoder", pooling="mean", default_tokenizer="bpe")

_TRANSFORMER = dict(position="sinusoidal", norm="layernorm", norm_position="post", norm_eps=1e-5, bias=True,
                    scaled_attention=True, scale_embeddings=True, mlp="relu")

PRESETS: dict[str, dict] = {
    "t5-debug": dict(vocab_size=512, block_size=128, n_layer=2, n_head=4, n_embd=64, intermediate_size=128),
    # Raffel et al. (2020) shapes; 60.5M and 222.9M parameters with the 32,128-token vocabulary.
    "t5-small": dict(n_layer=6, n_head=8, n_embd=512, intermediate_size=2048, dropout=0.1),
    "t5-base": dict(n_layer=12, n_head=12, n_embd=768, intermediate_size=3072, dropout=0.1),
    # T5 v1.1: GEGLU feed-forward, untied output layer; 77.0M parameters.
    "t5-v1_1-small": dict(n_layer=8, n_head=6, n_embd=512, head_dim=64, intermediate_size=1024, mlp="gated-gelu",
                          tie_embeddings=False, dropout=0.1),
    # Vaswani et al. (2017) base model with a shared 37k source/target vocabulary: 63.1M parameters.
    "transformer-base": dict(vocab_size=37000, block_size=1024, n_layer=6, n_head=8, n_embd=512,
                             intermediate_size=2048, dropout=0.1, **_TRANSFORMER),
}
