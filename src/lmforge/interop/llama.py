"""Llama (`LlamaForCausalLM`) as an lmforge gpt: RoPE, RMSNorm, SwiGLU; MHA, GQA or MQA; tied or untied head."""
from __future__ import annotations

from lmforge.interop.adapter import Architecture, attention_dropout, check_ours, require, unsupported
from lmforge.interop.gpt2 import DECODER_BOS_TOKENS
from lmforge.interop.keymap import KeyMap, fused, hf_prefix, output_layer, same
from lmforge.models.gpt import GPTConfig


def llama_key_map(cfg: GPTConfig, hf_keys: set[str] | None = None) -> KeyMap:
    p = hf_prefix(hf_keys, "model.")
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    km = KeyMap([same("wte.weight", f"{p}embed_tokens.weight"), same("ln_f.weight", f"{p}norm.weight")],
                buffers={f"{p}rotary_emb.inv_freq"})
    output_layer(km, cfg.tie_embeddings, f"{p}embed_tokens.weight")
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


def _rope(hf: dict) -> tuple[float, str]:
    """(theta, scaling type): transformers 5 nests both in `rope_parameters`, 4.x has `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), kind


def llama_config_from_hf(hf: dict) -> GPTConfig:
    arch = "Llama"
    require(hf, arch, "hidden_act", "silu", "silu")
    theta, kind = _rope(hf)
    if kind != "default":
        raise unsupported(arch, f"rope scaling {kind!r}")
    n_embd, n_head = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise unsupported(arch, f"head_dim={hf['head_dim']} (not hidden_size / num_attention_heads)")
    bias = hf.get("attention_bias", False)
    if hf.get("mlp_bias", False) != bias:
        raise unsupported(arch, "biases in only one of attention and MLP")
    return GPTConfig(vocab_size=hf.get("vocab_size", 32000), block_size=hf.get("max_position_embeddings", 2048),
                     n_layer=hf.get("num_hidden_layers", 32), n_head=n_head,
                     n_kv_head=hf.get("num_key_value_heads") or n_head, n_embd=n_embd,
                     intermediate_size=hf.get("intermediate_size", 11008), position="rope", rope_theta=theta,
                     norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", bias=bias,
                     tie_embeddings=hf.get("tie_word_embeddings", False), dropout=hf.get("attention_dropout", 0.0),
                     init_std=hf.get("initializer_range", 0.02))


def llama_config_to_hf(cfg: GPTConfig) -> dict:
    check_ours(cfg, "gpt", "LlamaForCausalLM", position="rope", norm="rmsnorm", mlp="swiglu",
               layer_intermediate=None)
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "rope_scaling": None, "hidden_act": "silu", "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
            "attention_dropout": attention_dropout(cfg), "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tie_embeddings}


LLAMA = Architecture("LlamaForCausalLM", "llama", "gpt", llama_config_from_hf, llama_config_to_hf, llama_key_map,
                     bos_tokens=DECODER_BOS_TOKENS)
