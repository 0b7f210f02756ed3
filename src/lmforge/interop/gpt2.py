"""GPT-2 (`GPT2LMHeadModel`) as an lmforge gpt: learned positions, LayerNorm, GELU; tied or untied head."""
from __future__ import annotations

from lmforge.interop.adapter import (GELUS, Architecture, attention_dropout, attention_dropout_from_hf, check_ours,
                                     require)
from lmforge.interop.keymap import KeyMap, conv1d, hf_prefix, output_layer, same
from lmforge.models.gpt import GPTConfig


def gpt2_key_map(cfg: GPTConfig, hf_keys: set[str] | None = None) -> KeyMap:
    p = hf_prefix(hf_keys, "transformer.")
    km = KeyMap([same("wte.weight", f"{p}wte.weight"), same("wpe.weight", f"{p}wpe.weight"),
                 same("ln_f.weight", f"{p}ln_f.weight"), same("ln_f.bias", f"{p}ln_f.bias")])
    output_layer(km, cfg.tie_embeddings, f"{p}wte.weight")
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


def gpt2_config_from_hf(hf: dict) -> GPTConfig:
    arch = "GPT-2"
    require(hf, arch, "scale_attn_weights", True, True)
    require(hf, arch, "scale_attn_by_inverse_layer_idx", False, False)
    require(hf, arch, "add_cross_attention", False, False)
    act = require(hf, arch, "activation_function", tuple(GELUS), "gelu_new")
    return GPTConfig(vocab_size=hf.get("vocab_size", 50257), block_size=hf.get("n_positions", 1024),
                     n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=hf.get("n_embd", 768),
                     intermediate_size=hf.get("n_inner"), position="learned", norm="layernorm",
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp=GELUS[act], bias=True,
                     tie_embeddings=hf.get("tie_word_embeddings", True), dropout=hf.get("resid_pdrop", 0.1),
                     attention_dropout=attention_dropout_from_hf(hf.get("attn_pdrop", 0.1), hf.get("resid_pdrop", 0.1)),
                     init_std=hf.get("initializer_range", 0.02))


def gpt2_config_to_hf(cfg: GPTConfig) -> dict:
    check_ours(cfg, "gpt", "GPT2LMHeadModel", position="learned", norm="layernorm", mlp=("gelu", "gelu_exact"),
               bias=True, n_kv_head=cfg.n_head, layer_intermediate=None)
    return {"vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_inner": cfg.intermediate_size,
            "activation_function": "gelu_new" if cfg.mlp == "gelu" else "gelu", "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": attention_dropout(cfg),
            "scale_attn_weights": True, "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings}


# Spellings of a start-of-text token in decoder-only tokenizers (GPT-2's own has none: it uses end-of-text).
DECODER_BOS_TOKENS = ("<s>", "<|begin_of_text|>")

GPT2 = Architecture("GPT2LMHeadModel", "gpt2", "gpt", gpt2_config_from_hf, gpt2_config_to_hf, gpt2_key_map,
                    bos_tokens=DECODER_BOS_TOKENS)
