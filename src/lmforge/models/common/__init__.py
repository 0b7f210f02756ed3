"""Building blocks shared by the model families, one job per module.

    norms       RMSNorm and the norm factory
    positions   sinusoidal tables, rotary embeddings, T5's relative position bias
    attention   self- and cross-attention, the kernels behind them and the naive reference
    mlp         the feed-forward block (GELU, ReLU, SwiGLU, GEGLU)
    loss        the output layer fused with its cross-entropy
    cache       what a model reads from a key/value cache, and the preallocated `KVCache`
    config      the dict format and validation every family config shares
    state       comparing a state dict against the one a model expects

Shapes in comments: B batch, T new tokens, S attended tokens, nh heads, hs head size.
"""
