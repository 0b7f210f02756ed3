"""T5 (`T5ForConditionalGeneration`) as an lmforge t5: relative positions; relu, gated-gelu or gelu feed-forward."""
from __future__ import annotations

from lmforge.interop.adapter import Architecture, check_ours, require
from lmforge.interop.keymap import KeyMap, Row, fused, same
from lmforge.models.t5 import T5Config


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


def t5_config_from_hf(hf: dict) -> T5Config:
    arch = "T5"
    mlp = require(hf, arch, "feed_forward_proj", ("relu", "gated-gelu", "gelu"), "relu")
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
    check_ours(cfg, "t5", "T5ForConditionalGeneration", position="relative", norm="rmsnorm", norm_position="pre",
               bias=False, scaled_attention=False, scale_embeddings=False, segment_embedding=False,
               embedding_norm=False)
    return {"vocab_size": cfg.vocab_size, "d_model": cfg.n_embd, "d_kv": cfg.head_dim, "d_ff": cfg.intermediate_size,
            "num_layers": cfg.n_layer, "num_decoder_layers": cfg.n_decoder_layer, "num_heads": cfg.n_head,
            "relative_attention_num_buckets": cfg.relative_buckets,
            "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": cfg.mlp, "n_positions": cfg.block_size,
            "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.tie_embeddings,
            "is_encoder_decoder": True, "pad_token_id": cfg.pad_token_id,
            "decoder_start_token_id": cfg.decoder_start_token_id}


T5 = Architecture("T5ForConditionalGeneration", "t5", "t5", t5_config_from_hf, t5_config_to_hf, t5_key_map,
                  config_token_ids=("pad_token_id", "decoder_start_token_id"))
