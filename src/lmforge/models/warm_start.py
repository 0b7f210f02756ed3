"""An encoder-decoder warm-started from a pretrained encoder (BERT2BERT, Rothe et al. 2020).

Both stacks of a `T5`-family model start from the BERT checkpoint: the encoder is the checkpoint
itself, and the decoder reuses its embeddings, self-attention (now causal) and feed-forward weights;
the output layer starts as a copy of the word embeddings. Only the decoder's cross-attention is new. The layout that makes this exact is BERT's:
- post-norm blocks with biases;
- learned positions;
- a LayerNorm over the summed embeddings;
- the segment-0 embedding kept as one vector added to every token.

So the encoder computes exactly what the BERT model did for single-segment inputs.
"""
from __future__ import annotations

import torch

from lmforge.errors import ConfigError
from lmforge.models.bert import Bert
from lmforge.models.t5 import MLPS, T5, T5Config

# BERT feed-forward kinds -> the T5 config's `mlp` name for the same function.
_T5_MLP = {kind: name for name, kind in MLPS.items()}


def encoder_decoder_config(encoder: Bert) -> T5Config:
    """The config of the encoder-decoder `encoder_decoder_from_encoder` builds from `encoder`."""
    cfg = encoder.config
    if cfg.position != "learned":
        raise ConfigError(f"warm-starting an encoder-decoder needs learned positions, this BERT has {cfg.position}",
                          "start from a BERT checkpoint with learned position embeddings")
    if cfg.mlp not in _T5_MLP:
        raise ConfigError(f"warm-starting an encoder-decoder does not support a {cfg.mlp} feed-forward",
                          f"start from a BERT whose feed-forward is one of {', '.join(_T5_MLP)}")
    return T5Config(vocab_size=cfg.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                    n_decoder_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                    intermediate_size=cfg.intermediate_size, mlp=_T5_MLP[cfg.mlp], position="learned",
                    norm="layernorm", norm_position="post", norm_eps=cfg.norm_eps, bias=True, scaled_attention=True,
                    scale_embeddings=False, tie_embeddings=False, segment_embedding=True, embedding_norm=True,
                    dropout=cfg.dropout, pad_token_id=cfg.pad_token_id, decoder_start_token_id=cfg.pad_token_id)


def encoder_decoder_from_encoder(encoder: Bert) -> T5:
    """A new encoder-decoder whose encoder and decoder start from `encoder`'s weights (cross-attention fresh)."""
    if not isinstance(encoder, Bert):
        raise ConfigError(f"an encoder-decoder can be warm-started from a BERT-family encoder, not a "
                          f"{getattr(encoder, 'family', type(encoder).__name__)} model",
                          "start from a BERT-family checkpoint, or drop --model.encoder_decoder")
    model = T5(encoder_decoder_config(encoder))
    bert = encoder.state_dict()
    # The output layer starts as a copy of the word embeddings, untied: tied T5 outputs are scaled for
    # unit-variance embeddings (by 1/sqrt(width)), which would start BERT's logits near zero.
    state = {"wte.weight": bert["embeddings.wte.weight"], "lm_head.weight": bert["embeddings.wte.weight"]}
    for stack in ("encoder", "decoder"):
        state.update(_stack_state(bert, stack, encoder.config.n_layer))
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = [k for k in missing if ".cross_attn." not in k and ".ln_cross." not in k]
    if fresh or unexpected:
        raise ConfigError(f"cannot map {type(encoder).__name__} onto an encoder-decoder "
                          f"(unmapped: {', '.join((fresh + unexpected)[:3])})", "start from a BERT-family model")
    return model.train(encoder.training)


def _stack_state(bert: dict[str, torch.Tensor], stack: str, n_layer: int) -> dict[str, torch.Tensor]:
    state = {f"{stack}.wpe.weight": bert["embeddings.wpe.weight"],
             f"{stack}.wtt": bert["embeddings.wtt.weight"][:1],
             f"{stack}.ln_emb.weight": bert["embeddings.ln.weight"],
             f"{stack}.ln_emb.bias": bert["embeddings.ln.bias"]}
    for i in range(n_layer):
        for key, value in bert.items():
            prefix = f"blocks.{i}."
            if key.startswith(prefix) and key.split(".")[2] in ("attn", "ln_1", "mlp", "ln_2"):
                state[f"{stack}.{key}"] = value
    return {k: v.detach().clone() for k, v in state.items()}

