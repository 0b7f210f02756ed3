"""BERT (`BertForPreTraining`; `BertForMaskedLM` and `BertModel` on import) as an lmforge bert.

A post-norm encoder; import takes whichever of pooler, MLM head and sentence-pair head the checkpoint
has, export writes all three.
"""
from __future__ import annotations

from lmforge.interop.adapter import GELUS, Architecture, check_ours, require
from lmforge.interop.keymap import KeyMap, fused, hf_prefix, same
from lmforge.models.bert import BertConfig


def bert_key_map(cfg: BertConfig, hf_keys: set[str] | None = None) -> KeyMap:
    p = hf_prefix(hf_keys, "bert.")
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


def bert_config_from_hf(hf: dict) -> BertConfig:
    arch = "BERT"
    require(hf, arch, "position_embedding_type", "absolute", "absolute")
    require(hf, arch, "is_decoder", False, False)
    require(hf, arch, "add_cross_attention", False, False)
    act = require(hf, arch, "hidden_act", tuple(GELUS), "gelu")
    return BertConfig(vocab_size=hf.get("vocab_size", 30522), block_size=hf.get("max_position_embeddings", 512),
                      n_layer=hf.get("num_hidden_layers", 12), n_head=hf.get("num_attention_heads", 12),
                      n_embd=hf.get("hidden_size", 768), intermediate_size=hf.get("intermediate_size", 3072),
                      type_vocab_size=hf.get("type_vocab_size", 2), position="learned",
                      norm_eps=hf.get("layer_norm_eps", 1e-12), mlp=GELUS[act],
                      dropout=hf.get("hidden_dropout_prob", 0.1), pad_token_id=hf.get("pad_token_id") or 0,
                      init_std=hf.get("initializer_range", 0.02))


def bert_config_to_hf(cfg: BertConfig) -> dict:
    check_ours(cfg, "bert", "BertForPreTraining", position="learned", layer_heads=None, layer_intermediate=None)
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "intermediate_size": cfg.intermediate_size,
            "hidden_act": "gelu_new" if cfg.mlp == "gelu" else "gelu", "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.dropout, "max_position_embeddings": cfg.block_size,
            "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.norm_eps, "pad_token_id": cfg.pad_token_id,
            "position_embedding_type": "absolute", "initializer_range": cfg.init_std, "tie_word_embeddings": True}


BERT = Architecture("BertForPreTraining", "bert", "bert", bert_config_from_hf, bert_config_to_hf, bert_key_map,
                    marker_tokens={"cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}, names_eos=False,
                    config_token_ids=("pad_token_id",),
                    model_input_names=("input_ids", "token_type_ids", "attention_mask"))
