"""Hugging Face `transformers` checkpoints to and from lmforge models, through explicit key maps.

    HF architecture                         lmforge family  what it covers
    GPT2LMHeadModel                         gpt             learned positions, LayerNorm, GELU; tied or untied head
    LlamaForCausalLM                        gpt             RoPE, RMSNorm, SwiGLU; MHA, GQA or MQA; tied or untied head
    BertForPreTraining, BertForMaskedLM,    bert            post-norm encoder; whichever of pooler, MLM head and
      BertModel (import)                                    sentence-pair head the checkpoint has (export: all three)
    T5ForConditionalGeneration              t5              relative positions; relu, gated-gelu or gelu feed-forward

A checkpoint folder is `config.json` plus `model.safetensors` (or shards listed in
`model.safetensors.index.json`); `pytorch_model.bin` files are read with `torch.load(weights_only=True)`,
which refuses anything but tensors. Reading and writing never import `transformers`.

Each architecture has a key map: one `Row` per lmforge tensor naming the HF tensor(s) it is made of.
Import is strict: every HF tensor must be used by a row, be a known duplicate of a tied weight, or be a
known non-weight buffer; every row must find its tensors with the shapes the config implies.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from lmforge.atomic import atomic_directory
from lmforge.data.tokenizers import Tokenizer
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.bert import BertConfig
from lmforge.models.gpt import GPTConfig, count_parameters
from lmforge.models.registry import build_model, load_model, save_model
from lmforge.models.t5 import T5Config



# ---------------------------------------------------------------- key maps
@dataclass(frozen=True)
class Row:
    """One lmforge tensor and the HF tensor(s) it is made of.

    Several HF tensors are concatenated along dim 0 (q, k, v -> our fused qkv), with `split` giving
    each one's rows. `transpose` marks GPT-2's Conv1D, which stores (in, out) where nn.Linear has (out, in).
    `group` names an optional part that some checkpoints leave out (BERT's heads): it is taken whole or
    not at all, and when it is absent our freshly initialised tensors stay.
    """

    ours: str
    theirs: tuple[str, ...]
    split: tuple[int, ...] | None = None
    transpose: bool = False
    group: str | None = None


def same(ours: str, theirs: str, group: str | None = None) -> Row:
    return Row(ours, (theirs,), group=group)


def fused(ours: str, theirs: tuple[str, ...], split: tuple[int, ...]) -> Row:
    return Row(ours, theirs, split=split)


def conv1d(ours: str, theirs: str) -> Row:
    return Row(ours, (theirs,), transpose=True)


@dataclass
class KeyMap:
    rows: list[Row]
    # HF keys some checkpoints store although they duplicate another HF tensor (tied weights): key -> original.
    aliases: dict[str, str] = field(default_factory=dict)
    # HF keys that hold no weights (attention masks, rotary frequencies, position ids) and are dropped.
    buffers: set[str] = field(default_factory=set)


def _prefix(hf_keys: set[str] | None, prefix: str) -> str:
    """`prefix` ("transformer.", "bert.") unless the checkpoint was saved from the bare base model without it."""
    if hf_keys is None or any(k.startswith(prefix) for k in hf_keys):
        return prefix
    return ""


def gpt2_key_map(cfg: GPTConfig, hf_keys: set[str] | None = None) -> KeyMap:
    p = _prefix(hf_keys, "transformer.")
    km = KeyMap([same("wte.weight", f"{p}wte.weight"), same("wpe.weight", f"{p}wpe.weight"),
                 same("ln_f.weight", f"{p}ln_f.weight"), same("ln_f.bias", f"{p}ln_f.bias")])
    if cfg.tie_embeddings:
        km.aliases["lm_head.weight"] = f"{p}wte.weight"
    else:
        km.rows.append(same("lm_head.weight", "lm_head.weight"))
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"{p}h.{i}."
        km.rows += [
            same(f"{o}ln_1.weight", f"{h}ln_1.weight"), same(f"{o}ln_1.bias", f"{h}ln_1.bias"),
            conv1d(f"{o}attn.qkv.weight", f"{h}attn.c_attn.weight"), same(f"{o}attn.qkv.bias", f"{h}attn.c_attn.bias"),
            conv1d(f"{o}attn.proj.weight", f"{h}attn.c_proj.weight"), same(f"{o}attn.proj.bias", f"{h}attn.c_proj.bias"),
            same(f"{o}ln_2.weight", f"{h}ln_2.weight"), same(f"{o}ln_2.bias", f"{h}ln_2.bias"),
            conv1d(f"{o}mlp.up.weight", f"{h}mlp.c_fc.weight"), same(f"{o}mlp.up.bias", f"{h}mlp.c_fc.bias"),
            conv1d(f"{o}mlp.down.weight", f"{h}mlp.c_proj.weight"), same(f"{o}mlp.down.bias", f"{h}mlp.c_proj.bias"),
        ]
        km.buffers |= {f"{h}attn.bias", f"{h}attn.masked_bias"}  # causal masks older versions saved
    return km


def llama_key_map(cfg: GPTConfig, hf_keys: set[str] | None = None) -> KeyMap:
    p = _prefix(hf_keys, "model.")
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    km = KeyMap([same("wte.weight", f"{p}embed_tokens.weight"), same("ln_f.weight", f"{p}norm.weight")],
                buffers={f"{p}rotary_emb.inv_freq"})
    if cfg.tie_embeddings:
        km.aliases["lm_head.weight"] = f"{p}embed_tokens.weight"
    else:
        km.rows.append(same("lm_head.weight", "lm_head.weight"))
    parts = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"{p}layers.{i}."
        km.rows += [same(f"{o}ln_1.weight", f"{h}input_layernorm.weight"),
                    same(f"{o}ln_2.weight", f"{h}post_attention_layernorm.weight")]
        for w in parts:
            km.rows += [
                fused(f"{o}attn.qkv.{w}", tuple(f"{h}self_attn.{x}_proj.{w}" for x in "qkv"), (q, kv, kv)),
                same(f"{o}attn.proj.{w}", f"{h}self_attn.o_proj.{w}"),
                same(f"{o}mlp.gate.{w}", f"{h}mlp.gate_proj.{w}"),
                same(f"{o}mlp.up.{w}", f"{h}mlp.up_proj.{w}"),
                same(f"{o}mlp.down.{w}", f"{h}mlp.down_proj.{w}"),
            ]
        km.buffers.add(f"{h}self_attn.rotary_emb.inv_freq")
    return km


def bert_key_map(cfg: BertConfig, hf_keys: set[str] | None = None) -> KeyMap:
    p = _prefix(hf_keys, "bert.")
    C = cfg.n_embd
    km = KeyMap([
        same("embeddings.wte.weight", f"{p}embeddings.word_embeddings.weight"),
        same("embeddings.wpe.weight", f"{p}embeddings.position_embeddings.weight"),
        same("embeddings.wtt.weight", f"{p}embeddings.token_type_embeddings.weight"),
        same("embeddings.ln.weight", f"{p}embeddings.LayerNorm.weight"),
        same("embeddings.ln.bias", f"{p}embeddings.LayerNorm.bias"),
    ], aliases={"cls.predictions.decoder.weight": f"{p}embeddings.word_embeddings.weight",
                "cls.predictions.decoder.bias": "cls.predictions.bias"},
        buffers={f"{p}embeddings.position_ids", f"{p}embeddings.token_type_ids"})
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"{p}encoder.layer.{i}."
        for w in ("weight", "bias"):
            km.rows += [
                fused(f"{o}attn.qkv.{w}", tuple(f"{h}attention.self.{x}.{w}" for x in ("query", "key", "value")),
                      (C, C, C)),
                same(f"{o}attn.proj.{w}", f"{h}attention.output.dense.{w}"),
                same(f"{o}ln_1.{w}", f"{h}attention.output.LayerNorm.{w}"),
                same(f"{o}mlp.up.{w}", f"{h}intermediate.dense.{w}"),
                same(f"{o}mlp.down.{w}", f"{h}output.dense.{w}"),
                same(f"{o}ln_2.{w}", f"{h}output.LayerNorm.{w}"),
            ]
    for w in ("weight", "bias"):
        km.rows += [
            same(f"pooler.{w}", f"{p}pooler.dense.{w}", group="pooler"),
            same(f"mlm_head.dense.{w}", f"cls.predictions.transform.dense.{w}", group="MLM head"),
            same(f"mlm_head.ln.{w}", f"cls.predictions.transform.LayerNorm.{w}", group="MLM head"),
            same(f"pair_head.{w}", f"cls.seq_relationship.{w}", group="sentence-pair head"),
        ]
    km.rows.append(same("mlm_head.decoder.bias", "cls.predictions.bias", group="MLM head"))
    return km


def t5_key_map(cfg: T5Config, hf_keys: set[str] | None = None) -> KeyMap:
    inner = cfg.n_head * cfg.head_dim
    km = KeyMap([
        same("wte.weight", "shared.weight"),
        same("encoder.rel_pos.table.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        same("decoder.rel_pos.table.weight", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        same("encoder.ln_f.weight", "encoder.final_layer_norm.weight"),
        same("decoder.ln_f.weight", "decoder.final_layer_norm.weight"),
    ], aliases={"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"})
    if cfg.tie_embeddings:
        km.aliases["lm_head.weight"] = "shared.weight"
    elif hf_keys is None or "lm_head.weight" in hf_keys:
        km.rows.append(same("lm_head.weight", "lm_head.weight"))
    else:
        # transformers 5 saves an unscaled T5 whose output layer still equals the embedding without lm_head.
        km.rows.append(same("lm_head.weight", "shared.weight"))

    def mlp(o: str, h: str) -> list[Row]:
        ff = f"{h}.DenseReluDense"
        up = [same(f"{o}.mlp.gate.weight", f"{ff}.wi_0.weight"), same(f"{o}.mlp.up.weight", f"{ff}.wi_1.weight")] \
            if cfg.mlp == "gated-gelu" else [same(f"{o}.mlp.up.weight", f"{ff}.wi.weight")]
        return up + [same(f"{o}.mlp.down.weight", f"{ff}.wo.weight"), same(f"{o}.ln_2.weight", f"{h}.layer_norm.weight")]

    for stack, n in (("encoder", cfg.n_layer), ("decoder", cfg.n_decoder_layer)):
        for i in range(n):
            o, h = f"{stack}.blocks.{i}", f"{stack}.block.{i}.layer"
            att = f"{h}.0.SelfAttention"
            km.rows += [fused(f"{o}.attn.qkv.weight", (f"{att}.q.weight", f"{att}.k.weight", f"{att}.v.weight"),
                              (inner, inner, inner)),
                        same(f"{o}.attn.proj.weight", f"{att}.o.weight"),
                        same(f"{o}.ln_1.weight", f"{h}.0.layer_norm.weight")]
            if stack == "encoder":
                km.rows += mlp(o, f"{h}.1")
            else:
                cross = f"{h}.1.EncDecAttention"
                km.rows += [same(f"{o}.cross_attn.q.weight", f"{cross}.q.weight"),
                            fused(f"{o}.cross_attn.kv.weight", (f"{cross}.k.weight", f"{cross}.v.weight"),
                                  (inner, inner)),
                            same(f"{o}.cross_attn.proj.weight", f"{cross}.o.weight"),
                            same(f"{o}.ln_cross.weight", f"{h}.1.layer_norm.weight")]
                km.rows += mlp(o, f"{h}.2")
    return km


# ---------------------------------------------------------------- configs
def _unsupported(arch: str, what: str) -> CheckpointError:
    return CheckpointError(f"this {arch} checkpoint uses {what}, which lmforge does not implement",
                           "only the standard form of each supported architecture can be imported")


def _require(hf: dict, arch: str, key: str, allowed, default):
    value = hf.get(key, default)
    if value not in (allowed if isinstance(allowed, tuple) else (allowed,)):
        raise _unsupported(arch, f"{key}={value!r}")
    return value


def _no_lmforge_twin(family: str, field_name: str, value, hf_arch: str) -> ConfigError:
    return ConfigError(f"model.{field_name}={value!r} has no equivalent in Hugging Face {hf_arch}",
                       f"only {family} models with the {hf_arch} layout can be exported")


def _check_ours(cfg, family: str, hf_arch: str, **expected) -> None:
    for name, allowed in expected.items():
        value = getattr(cfg, name)
        if value not in (allowed if isinstance(allowed, tuple) else (allowed,)):
            raise _no_lmforge_twin(family, name, value, hf_arch)


# Activation names in HF configs -> our MLP kinds (GPT-2 and BERT).
_GELUS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}


def gpt2_config_from_hf(hf: dict) -> GPTConfig:
    arch = "GPT-2"
    _require(hf, arch, "scale_attn_weights", True, True)
    _require(hf, arch, "scale_attn_by_inverse_layer_idx", False, False)
    _require(hf, arch, "add_cross_attention", False, False)
    act = _require(hf, arch, "activation_function", tuple(_GELUS), "gelu_new")
    return GPTConfig(vocab_size=hf.get("vocab_size", 50257), block_size=hf.get("n_positions", 1024),
                     n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=hf.get("n_embd", 768),
                     intermediate_size=hf.get("n_inner"), position="learned", norm="layernorm",
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp=_GELUS[act], bias=True,
                     tie_embeddings=hf.get("tie_word_embeddings", True), dropout=hf.get("resid_pdrop", 0.1),
                     attention_dropout=_attention_dropout_from_hf(hf.get("attn_pdrop", 0.1), hf.get("resid_pdrop", 0.1)),
                     init_std=hf.get("initializer_range", 0.02))


def _attention_dropout_from_hf(attention: float, residual: float) -> float | None:
    """GPTConfig.attention_dropout: None (the same as dropout) unless the HF config sets it apart."""
    return None if attention == residual else attention


def _attention_dropout(cfg: GPTConfig) -> float:
    return cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout


def gpt2_config_to_hf(cfg: GPTConfig) -> dict:
    _check_ours(cfg, "gpt", "GPT2LMHeadModel", position="learned", norm="layernorm", mlp=("gelu", "gelu_exact"),
                bias=True, n_kv_head=cfg.n_head)
    return {"vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_inner": cfg.intermediate_size,
            "activation_function": "gelu_new" if cfg.mlp == "gelu" else "gelu", "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": _attention_dropout(cfg),
            "scale_attn_weights": True, "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings}


def _rope(hf: dict) -> tuple[float, str]:
    """(theta, scaling type): transformers 5 nests both in `rope_parameters`, 4.x has `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), kind


def llama_config_from_hf(hf: dict) -> GPTConfig:
    arch = "Llama"
    _require(hf, arch, "hidden_act", "silu", "silu")
    theta, kind = _rope(hf)
    if kind != "default":
        raise _unsupported(arch, f"rope scaling {kind!r}")
    n_embd, n_head = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise _unsupported(arch, f"head_dim={hf['head_dim']} (not hidden_size / num_attention_heads)")
    bias = hf.get("attention_bias", False)
    if hf.get("mlp_bias", False) != bias:
        raise _unsupported(arch, "biases in only one of attention and MLP")
    return GPTConfig(vocab_size=hf.get("vocab_size", 32000), block_size=hf.get("max_position_embeddings", 2048),
                     n_layer=hf.get("num_hidden_layers", 32), n_head=n_head,
                     n_kv_head=hf.get("num_key_value_heads") or n_head, n_embd=n_embd,
                     intermediate_size=hf.get("intermediate_size", 11008), position="rope", rope_theta=theta,
                     norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", bias=bias,
                     tie_embeddings=hf.get("tie_word_embeddings", False), dropout=hf.get("attention_dropout", 0.0),
                     init_std=hf.get("initializer_range", 0.02))


def llama_config_to_hf(cfg: GPTConfig) -> dict:
    _check_ours(cfg, "gpt", "LlamaForCausalLM", position="rope", norm="rmsnorm", mlp="swiglu")
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "rope_scaling": None, "hidden_act": "silu", "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
            "attention_dropout": _attention_dropout(cfg), "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tie_embeddings}


def bert_config_from_hf(hf: dict) -> BertConfig:
    arch = "BERT"
    _require(hf, arch, "position_embedding_type", "absolute", "absolute")
    _require(hf, arch, "is_decoder", False, False)
    _require(hf, arch, "add_cross_attention", False, False)
    act = _require(hf, arch, "hidden_act", tuple(_GELUS), "gelu")
    return BertConfig(vocab_size=hf.get("vocab_size", 30522), block_size=hf.get("max_position_embeddings", 512),
                      n_layer=hf.get("num_hidden_layers", 12), n_head=hf.get("num_attention_heads", 12),
                      n_embd=hf.get("hidden_size", 768), intermediate_size=hf.get("intermediate_size", 3072),
                      type_vocab_size=hf.get("type_vocab_size", 2), position="learned",
                      norm_eps=hf.get("layer_norm_eps", 1e-12), mlp=_GELUS[act],
                      dropout=hf.get("hidden_dropout_prob", 0.1), pad_token_id=hf.get("pad_token_id") or 0,
                      init_std=hf.get("initializer_range", 0.02))


def bert_config_to_hf(cfg: BertConfig) -> dict:
    _check_ours(cfg, "bert", "BertForPreTraining", position="learned")
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "intermediate_size": cfg.intermediate_size,
            "hidden_act": "gelu_new" if cfg.mlp == "gelu" else "gelu", "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.dropout, "max_position_embeddings": cfg.block_size,
            "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.norm_eps, "pad_token_id": cfg.pad_token_id,
            "position_embedding_type": "absolute", "initializer_range": cfg.init_std, "tie_word_embeddings": True}


def t5_config_from_hf(hf: dict) -> T5Config:
    arch = "T5"
    mlp = _require(hf, arch, "feed_forward_proj", ("relu", "gated-gelu", "gelu"), "relu")
    # Whether the decoder output is scaled by d_model**-0.5 before the output layer, which goes with
    # sharing that layer with the embedding. transformers 5 records it as `scale_decoder_outputs`.
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    pad = hf.get("pad_token_id")
    pad = 0 if pad is None else pad
    start = hf.get("decoder_start_token_id")
    return T5Config(vocab_size=hf.get("vocab_size", 32128), block_size=hf.get("n_positions", 512),
                    n_layer=hf.get("num_layers", 6), n_decoder_layer=hf.get("num_decoder_layers"),
                    n_head=hf.get("num_heads", 8), n_embd=hf.get("d_model", 512), head_dim=hf.get("d_kv", 64),
                    intermediate_size=hf.get("d_ff", 2048), mlp=mlp, position="relative",
                    relative_buckets=hf.get("relative_attention_num_buckets", 32),
                    relative_max_distance=hf.get("relative_attention_max_distance", 128), norm="rmsnorm",
                    norm_position="pre", norm_eps=hf.get("layer_norm_epsilon", 1e-6), bias=False,
                    scaled_attention=False, scale_embeddings=False, tie_embeddings=bool(scaled),
                    dropout=hf.get("dropout_rate", 0.1), pad_token_id=pad,
                    decoder_start_token_id=pad if start is None else start)


def t5_config_to_hf(cfg: T5Config) -> dict:
    _check_ours(cfg, "t5", "T5ForConditionalGeneration", position="relative", norm="rmsnorm", norm_position="pre",
                bias=False, scaled_attention=False, scale_embeddings=False)
    return {"vocab_size": cfg.vocab_size, "d_model": cfg.n_embd, "d_kv": cfg.head_dim, "d_ff": cfg.intermediate_size,
            "num_layers": cfg.n_layer, "num_decoder_layers": cfg.n_decoder_layer, "num_heads": cfg.n_head,
            "relative_attention_num_buckets": cfg.relative_buckets,
            "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": cfg.mlp, "n_positions": cfg.block_size,
            "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.tie_embeddings,
            "is_encoder_decoder": True, "pad_token_id": cfg.pad_token_id,
            "decoder_start_token_id": cfg.decoder_start_token_id}


# ---------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Architecture:
    name: str                 # `architectures[0]` in config.json
    model_type: str
    family: str               # the lmforge family it becomes
    config_from_hf: Callable[[dict], object]
    config_to_hf: Callable[[object], dict]
    key_map: Callable[[object, set[str] | None], KeyMap]


GPT2 = Architecture("GPT2LMHeadModel", "gpt2", "gpt", gpt2_config_from_hf, gpt2_config_to_hf, gpt2_key_map)
LLAMA = Architecture("LlamaForCausalLM", "llama", "gpt", llama_config_from_hf, llama_config_to_hf, llama_key_map)
BERT = Architecture("BertForPreTraining", "bert", "bert", bert_config_from_hf, bert_config_to_hf, bert_key_map)
T5 = Architecture("T5ForConditionalGeneration", "t5", "t5", t5_config_from_hf, t5_config_to_hf, t5_key_map)

# Every name accepted on import; the BERT checkpoints differ only in which heads they hold.
ARCHITECTURES: dict[str, Architecture] = {
    "GPT2LMHeadModel": GPT2, "LlamaForCausalLM": LLAMA, "BertForPreTraining": BERT, "BertForMaskedLM": BERT,
    "BertModel": BERT, "T5ForConditionalGeneration": T5,
}
_BY_MODEL_TYPE = {"gpt2": GPT2, "llama": LLAMA, "bert": BERT, "t5": T5}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise CheckpointError(f"unsupported architecture {name}",
                              f"lmforge converts {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def export_architecture(model_or_config) -> Architecture:
    """The HF architecture an lmforge model (or config) is written as."""
    cfg = getattr(model_or_config, "config", model_or_config)
    family = cfg.to_dict()["family"]
    if family == "gpt":
        return LLAMA if cfg.position == "rope" else GPT2
    if family == "bert":
        return BERT
    if family == "t5":
        return T5
    raise ConfigError(f"the {family} model family has no Hugging Face transformers twin",
                      "export a gpt, bert or t5 model")


# ---------------------------------------------------------------- state dicts
def state_from_hf(hf_state: dict[str, torch.Tensor], arch: str | Architecture, cfg) -> dict[str, torch.Tensor]:
    """lmforge state dict (tied duplicates left out) from an HF state dict; strict, see the module docstring."""
    return _state_from_hf(hf_state, arch, cfg, source="the state dict")[0]


def _state_from_hf(hf_state: dict, arch: str | Architecture, cfg, *, source: str):
    """(our state dict, optional groups the checkpoint lacks)."""
    arch = architecture(arch) if isinstance(arch, str) else arch
    keys = set(hf_state)
    km = arch.key_map(cfg, keys)
    expected = _expected_shapes(cfg)

    groups: dict[str | None, list[Row]] = {}
    for row in km.rows:
        groups.setdefault(row.group, []).append(row)
    absent = [g for g, rows in groups.items()
              if g is not None and not any(k in keys for r in rows for k in r.theirs)]
    rows = [r for r in km.rows if r.group not in absent]

    missing = [k for r in rows for k in r.theirs if k not in keys]
    consumed = {k for r in rows for k in r.theirs} | (km.buffers & keys) | (set(km.aliases) & keys)
    unexpected = sorted(keys - consumed)
    state, shapes = {}, []
    if not missing:
        for row in rows:
            tensor = _assemble(row, hf_state, expected[row.ours], shapes)
            if tensor is not None:
                state[row.ours] = tensor
    for alias, original in km.aliases.items():
        if alias in keys and original in keys and not torch.equal(hf_state[alias], hf_state[original]):
            raise CheckpointError(f"{alias} in {source} differs from {original}, although the config ties them",
                                  "set tie_word_embeddings to false in config.json if the checkpoint is untied")
    if missing or unexpected or shapes:
        detail = "; ".join(f"{label} {_first_few(items)}" for label, items in
                           (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items)
        raise CheckpointError(f"weights in {source} do not match the config ({detail})",
                              "use the config.json the weights were saved with")
    return state, absent


def _first_few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _assemble(row: Row, hf_state: dict, want: torch.Size, problems: list[str]) -> torch.Tensor | None:
    """Our tensor for `row`, or None after recording each HF tensor whose shape does not fit the config."""
    whole = (want[1], want[0]) if row.transpose else tuple(want)  # our tensor in HF's layout
    fits = True
    for key, size in zip(row.theirs, row.split or (whole[0],)):
        shape, target = tuple(hf_state[key].shape), (size, *whole[1:])
        if shape != target:
            problems.append(f"{key} is {shape}, the config implies {target}")
            fits = False
    if not fits:
        return None
    parts = [hf_state[key] for key in row.theirs]
    tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    tensor = tensor.t() if row.transpose else tensor
    return tensor.detach().to(torch.float32).contiguous()


def _expected_shapes(cfg) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in build_model(cfg, device="meta").state_dict().items()}


def state_to_hf(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF state dict (tied duplicates left out, as `save_pretrained` writes it) of an lmforge model."""
    arch = export_architecture(model)
    ours = model.state_dict()
    out = {}
    for row in arch.key_map(model.config, None).rows:
        t = ours[row.ours].detach()
        t = t.t() if row.transpose else t
        parts = t.split(list(row.split), dim=0) if row.split else (t,)
        for key, part in zip(row.theirs, parts):
            out[key] = part.contiguous().clone()  # safetensors refuses views that share storage
    return out


# ---------------------------------------------------------------- reading a checkpoint folder
def read_hf_config(src: Path) -> tuple[dict, str, Architecture]:
    """(config.json, the architecture name it gives, how lmforge reads it)."""
    path = src / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", "pass a Hugging Face model folder (config.json + weights)")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({getattr(e, 'msg', e)})", "restore the file") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} does not hold a JSON object", "restore the file")
    if "family" in hf and "model_type" not in hf:
        raise CheckpointError(f"{src} is an lmforge model folder, not a Hugging Face one",
                              "load it with lmforge.api.load, or convert it with --to hf")
    names = hf.get("architectures") or []
    if names:
        return hf, names[0], architecture(names[0])
    if hf.get("model_type") in _BY_MODEL_TYPE:
        arch = _BY_MODEL_TYPE[hf["model_type"]]
        return hf, arch.name, arch
    raise CheckpointError(f"{path} names no architecture (no 'architectures' or known 'model_type')",
                          f"lmforge converts {', '.join(ARCHITECTURES)}")


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: safetensors (single or sharded), else pytorch_model.bin."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (src / single).is_file():
            return _read_weight_file(src / single)
        if (src / index_name).is_file():
            return _read_sharded(src, index_name)
    raise CheckpointError(f"no weights in {src} (looked for model.safetensors, model.safetensors.index.json, "
                          "pytorch_model.bin)", "save the model with save_pretrained into that folder")


def _read_sharded(src: Path, index_name: str) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads((src / index_name).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{src / index_name} has no valid weight_map", "restore the index file") from None
    state = {}
    for shard in sorted(set(weight_map.values())):
        if not (src / shard).is_file():
            raise CheckpointError(f"shard {src / shard} listed in {index_name} is missing", "restore the shard")
        state.update(_read_weight_file(src / shard))
    return state


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own types for truncated or corrupt files
            raise CheckpointError(f"{path} is corrupt or unreadable ({type(e).__name__})",
                                  "restore the file or save the model again") from None
    try:
        # weights_only: the unpickler accepts tensors and plain containers and refuses any code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} could not be read as a tensors-only checkpoint ({type(e).__name__})",
                              "convert it to model.safetensors with save_pretrained") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors", "save the model with save_pretrained")
    return state


def _import(src: str | Path):
    """(model in eval mode, Tokenizer or None, architecture name, optional parts the checkpoint lacked)."""
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src} does not exist" if not src.exists() else f"{src} is not a folder",
                              "pass a Hugging Face model folder (config.json + model.safetensors)")
    hf, name, arch = read_hf_config(src)
    try:
        cfg = arch.config_from_hf(hf)
    except ConfigError as e:
        raise CheckpointError(f"{src / 'config.json'} does not describe a valid model ({e.what})",
                              "restore the config.json the weights were saved with") from None
    state, absent = _state_from_hf(read_hf_weights(src), arch, cfg, source=str(src))
    # Parts the checkpoint lacks (BERT heads) start from the same values on every conversion.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg)
    model.load_state_dict(state, strict=False)
    tokenizer = Tokenizer.load(src) if (src / "tokenizer.json").is_file() else None
    if tokenizer is not None:
        # Some HF tokenizer.json files pad or truncate every text to a fixed length (sentence-transformers
        # saves 128); lmforge pads batches itself and must see every token of a training text.
        tokenizer.hf.no_padding()
        tokenizer.hf.no_truncation()
    return model.eval(), tokenizer, name, absent


def import_hf(src_dir: str | Path):
    """(lmforge model in eval mode, lmforge Tokenizer or None) from a Hugging Face model folder.

    Weights become float32. A BERT checkpoint without some of the pooler, MLM head and sentence-pair
    head (BertModel, BertForMaskedLM) leaves those parts freshly initialised.
    """
    model, tokenizer, _, _ = _import(src_dir)
    return model, tokenizer


# ---------------------------------------------------------------- writing a checkpoint folder
def hf_config(model: nn.Module, tokenizer=None) -> dict:
    """config.json for `model` in HF form, with special-token ids taken from `tokenizer` when given."""
    arch = export_architecture(model)
    cfg = model.config
    out = {"architectures": [arch.name], "model_type": arch.model_type, **arch.config_to_hf(cfg),
           "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if tokenizer is not None:
        out.update({f"{role}_token_id": tokenizer.token_to_id(token)
                    for role, token in _special_tokens(tokenizer, arch).items() if role in ("bos", "eos", "pad")})
    if arch.family == "t5":
        out.update(pad_token_id=cfg.pad_token_id, decoder_start_token_id=cfg.decoder_start_token_id)
    elif arch.family == "bert":
        out.update(pad_token_id=cfg.pad_token_id)
    return out


def _special_tokens(tokenizer, arch: Architecture) -> dict[str, str]:
    """Role -> token for tokenizer_config.json: the roles the tokenizer has a token for."""
    def first(*candidates: str) -> str | None:
        return next((t for t in candidates if tokenizer.token_to_id(t) is not None), None)

    eos = tokenizer.id_to_token(tokenizer.eos_id)
    roles = {"eos": eos, "pad": tokenizer.id_to_token(tokenizer.pad_id), "unk": first("<unk>", "[UNK]")}
    if arch.family == "gpt":
        roles["bos"] = first("<s>", "<|begin_of_text|>") or eos  # GPT-2 starts and ends texts with one token
    if arch.family == "bert":
        roles.update(cls=first("[CLS]"), sep=first("[SEP]"), mask=first("[MASK]"), eos=None)
    return {role: token for role, token in roles.items() if token is not None}


def write_hf_tokenizer(tokenizer, dst: Path, model: nn.Module) -> None:
    """tokenizer.json plus a tokenizer_config.json that `AutoTokenizer.from_pretrained` reads as a fast tokenizer."""
    arch = export_architecture(model)
    tokenizer.save(dst / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size,
              "clean_up_tokenization_spaces": False,
              **{f"{role}_token": token for role, token in _special_tokens(tokenizer, arch).items()}}
    if arch.family == "bert":
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def export_hf(model: nn.Module, dst_dir: str | Path, tokenizer=None, *, overwrite: bool = False) -> str:
    """Write `model` (and `tokenizer`) as a Hugging Face model folder; returns the architecture name.

    The folder (config.json, model.safetensors, and tokenizer.json + tokenizer_config.json when a
    tokenizer is given) appears whole or not at all.
    """
    from safetensors.torch import save_file

    dst = Path(dst_dir)
    check_destination(dst, overwrite=overwrite)
    config = hf_config(model, tokenizer)  # unsupported configs fail before anything is written
    state = state_to_hf(model)
    with atomic_directory(dst) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, model)
    return config["architectures"][0]


def check_destination(dst: Path, *, overwrite: bool, src: Path | None = None) -> None:
    if src is not None and src.exists() and dst.exists() and (
            dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents):
        raise ConfigError(f"destination {dst} would replace the source {src}", "choose another destination")
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())) and not overwrite:
        raise ConfigError(f"destination {dst} already exists and is not empty",
                          "pass --overwrite to replace it, or choose another destination")


# ---------------------------------------------------------------- whole-folder conversion
def convert(src: str | Path, dst: str | Path, *, to: str = "hf", overwrite: bool = False) -> dict:
    """Convert an lmforge run/model folder into a Hugging Face folder (`to="hf"`) or back (`to="lmforge"`).

    Both need a tokenizer.json in `src`. Returns what was written: destination, architecture,
    family, parameter count and the optional parts `src` lacked (initialised fresh).
    """
    if to not in ("hf", "lmforge"):
        raise ConfigError(f"unknown conversion target {to!r}", "pass --to hf or --to lmforge")
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise CheckpointError(f"source {src} does not exist",
                              "pass an lmforge run directory or a Hugging Face model folder")
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src / 'config.json'} is missing",
                              "pass an lmforge run directory or a Hugging Face model folder")
    check_destination(dst, overwrite=overwrite, src=src)
    is_hf = _is_hf_folder(src)
    absent: list[str] = []
    if to == "hf":
        if is_hf:
            raise ConfigError(f"{src} is already a Hugging Face model folder", "pass --to lmforge to import it")
        model = load_model(src)
        tokenizer = _required_tokenizer(src, Tokenizer)
        _check_vocabulary(tokenizer, model, src)
        name = export_hf(model, dst, tokenizer, overwrite=overwrite)
    else:
        if not is_hf:
            raise ConfigError(f"{src} is already an lmforge model folder", "pass --to hf to export it")
        read_hf_config(src)  # an unsupported architecture is the first thing to report
        _required_tokenizer(src, Tokenizer)
        model, tokenizer, name, absent = _import(src)
        _check_vocabulary(tokenizer, model, src)
        with atomic_directory(dst) as tmp:
            save_model(model, tmp)
            tokenizer.save(tmp / "tokenizer.json")
    return {"dst": str(dst), "architecture": name, "family": model.family,
            "parameters": count_parameters(model), "initialised_fresh": absent}


def _is_hf_folder(src: Path) -> bool:
    try:
        cfg = json.loads((src / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{src / 'config.json'} is not valid JSON ({getattr(e, 'msg', e)})",
                              "restore the file") from None
    return isinstance(cfg, dict) and "family" not in cfg


def _required_tokenizer(src: Path, tokenizer_cls):
    path = src / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the converted model needs its tokenizer)",
                              "put the model's tokenizer.json there (for a Hugging Face folder, "
                              "AutoTokenizer.from_pretrained(...).save_pretrained(folder) writes one)")
    return tokenizer_cls.load(path)


def _check_vocabulary(tokenizer, model: nn.Module, src: Path) -> None:
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{src / 'tokenizer.json'} has {tokenizer.vocab_size} tokens but the model's vocabulary "
                              f"holds {model.config.vocab_size}", "put the tokenizer the model was trained with there")


def describe(result: dict) -> str:
    """One line for the CLI about a finished conversion."""
    line = (f"wrote {result['dst']}: {result['architecture']} ({result['family']}, "
            f"{result['parameters'] / 1e6:.2f}M parameters)")
    if result["initialised_fresh"]:
        line += f"; not in the source, initialised fresh: {', '.join(result['initialised_fresh'])}"
    return line


__all__ = ["ARCHITECTURES", "Architecture", "KeyMap", "Row", "convert", "export_hf", "import_hf", "state_from_hf",
           "state_to_hf", "read_hf_weights"]
