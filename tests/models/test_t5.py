"""The encoder-decoder family against independent references: HF transformers T5 with copied weights,
published parameter counts, a hand count of the original Transformer, the naive attention path, and
full recomputation for cached decoding."""
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.interop.hf import state_from_hf
from lmforge.models.gpt import count_parameters
from lmforge.models.common.attention import use_naive_attention
from lmforge.models.registry import build_model, load_model, preset_config, save_model
from lmforge.models.t5 import T5, T5Config

from decoding_checks import assert_cached_seq2seq_matches_full  # tests/models/decoding_checks.py

ATOL = 1e-4


def _randomise(module: torch.nn.Module, seed: int) -> None:
    # Non-trivial norms, so a norm copied to the wrong place cannot go unnoticed.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.3) + (1.0 if p.dim() == 1 else 0.0))


@pytest.mark.parametrize("mlp", ["relu", "gated-gelu"])
def test_hf_t5_parity_with_encoder_padding(mlp):
    transformers = pytest.importorskip("transformers")
    tied = mlp == "relu"  # v1.0 ties and rescales the output; v1.1 has its own output layer
    # d_kv * heads != d_model, a decoder deeper than the encoder, and sequences long enough to reach
    # the logarithmic buckets: every shape and bucket path is exercised.
    hf_cfg = transformers.T5Config(vocab_size=120, d_model=48, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3,
                                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   dropout_rate=0.0, feed_forward_proj=mlp, tie_word_embeddings=tied,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    _randomise(hf, 1)
    ours = T5(T5Config(vocab_size=120, n_embd=48, head_dim=16, intermediate_size=96, n_layer=2, n_decoder_layer=3,
                       n_head=4, relative_buckets=8, relative_max_distance=20, mlp=mlp,
                       tie_embeddings=tied)).eval()
    state = state_from_hf(hf.state_dict(), "T5ForConditionalGeneration", ours.config)
    assert set(state) == set(ours.state_dict()) - ({"lm_head.weight"} if tied else set())
    ours.load_state_dict(state, strict=False)

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 120, (3, 30), generator=g)
    mask = torch.ones(3, 30, dtype=torch.long)
    mask[1, 21:] = 0   # right padding
    mask[2, :7] = 0    # left padding: relative positions make T5 indifferent to which side
    dec = torch.randint(2, 120, (3, 25), generator=g)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        out = ours(ids, mask, dec)
    assert (out - ref).abs().max().item() <= ATOL
    assert ref.std() > 0.1  # the comparison is not between two near-constant outputs


def test_parameter_counts_match_published_models():
    # HF google-t5/t5-small, t5-base and google/t5-v1_1-small.
    for name, expected in (("t5-small", 60_506_624), ("t5-base", 222_903_552), ("t5-v1_1-small", 76_961_152)):
        n = count_parameters(build_model(name, device="meta"))
        assert abs(n - expected) / expected < 0.01, (name, n)


def test_transformer_base_parameter_count_by_hand():
    # Vaswani et al. base with one 37k vocabulary shared by source, target and output layer.
    V, C, F, L = 37000, 512, 2048, 6
    attn = 4 * (C * C + C)
    ffn = C * F + F + F * C + C
    norm = 2 * C
    expected = V * C + L * (attn + ffn + 2 * norm) + L * (2 * attn + ffn + 3 * norm)
    assert count_parameters(build_model("transformer-base", device="meta")) == expected  # 63.1M


def _tiny(**overrides) -> T5:
    torch.manual_seed(0)
    cfg = preset_config("t5-debug", vocab_size=97, **overrides)
    return T5(cfg).eval()


VARIANTS = {
    "t5": {},
    "t5-v1.1": dict(mlp="gated-gelu", tie_embeddings=False),
    "transformer": dict(position="sinusoidal", norm="layernorm", norm_position="post", bias=True,
                        scaled_attention=True, scale_embeddings=True),
    "learned": dict(position="learned", block_size=64),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decoder_is_causal(variant):
    model = _tiny(**VARIANTS[variant])
    src = torch.randint(0, 97, (2, 12))
    dec = torch.randint(0, 97, (2, 10))
    changed = dec.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 97
    with torch.no_grad():
        a, b = model(src, None, dec), model(src, None, changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-5, rtol=0)
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_decoding_matches_full_recompute(variant):
    model = _tiny(**VARIANTS[variant])
    src = torch.randint(0, 97, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    assert_cached_seq2seq_matches_full(model, src, mask, torch.randint(0, 97, (2, 9)), rtol=0)


@pytest.mark.parametrize("variant", ["t5", "transformer"])
def test_naive_attention_path_matches_sdpa(variant):
    model = _tiny(**VARIANTS[variant])
    src, dec = torch.randint(0, 97, (2, 13)), torch.randint(0, 97, (2, 7))
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[0, :4] = False
    with torch.no_grad():
        fast = model(src, mask, dec)
        with use_naive_attention(model):
            slow = model(src, mask, dec)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_padding_does_not_change_real_positions():
    model = _tiny()
    src = torch.randint(0, 97, (1, 9))
    dec = torch.randint(0, 97, (1, 5))
    padded = torch.cat([src, torch.randint(0, 97, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 9 + [0] * 4])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask, dec), model(src, None, dec), atol=1e-5, rtol=0)


def test_transformer_base_shapes_train():
    torch.manual_seed(0)
    cfg = preset_config("transformer-base", vocab_size=101, n_layer=2, n_embd=64, n_head=4, intermediate_size=128,
                        block_size=32)
    model = T5(cfg).train()
    src, dec = torch.randint(0, 101, (3, 20)), torch.randint(0, 101, (3, 15))
    logits = model(src, torch.ones(3, 20, dtype=torch.long), dec)
    assert logits.shape == (3, 15, 101)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 101), dec.reshape(-1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert model.lm_head.weight is model.wte.weight
    with pytest.raises(ValueError, match="context length"):
        model(torch.randint(0, 101, (1, 40)), None, dec[:1])


def test_relative_bias_gets_gradients_through_sdpa():
    model = _tiny().train()
    logits = model(torch.randint(0, 97, (2, 10)), None, torch.randint(0, 97, (2, 6)))
    logits.square().mean().backward()
    for stack in (model.encoder, model.decoder):
        assert stack.rel_pos.table.weight.grad.abs().sum() > 0


def test_save_and_load_round_trip(tmp_path):
    model = _tiny(tie_embeddings=False)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    src, dec = torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, None, dec), model(src, None, dec), atol=0, rtol=0)
    assert loaded.config == model.config


@pytest.mark.parametrize("overrides, field", [
    (dict(mlp="swish"), "model.mlp"), (dict(position="rope"), "model.position"),
    (dict(norm_position="middle"), "model.norm_position"), (dict(n_embd=66, n_head=4), "model.n_embd"),
    (dict(pad_token_id=600), "model.pad_token_id"), (dict(dropout=1.0), "model.dropout"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        preset_config("t5-debug", **overrides)


def test_activation_checkpointing_covers_both_stacks_and_keeps_gradients():
    from lmforge.parallel import apply_activation_checkpointing

    src, dec = torch.randint(0, 97, (2, 10)), torch.randint(0, 97, (2, 6))
    grads = []
    for checkpointed in (False, True):
        model = _tiny().train()
        if checkpointed:
            apply_activation_checkpointing(model)
            assert all(b.forward.__name__ == "checkpointed" for s in (model.encoder, model.decoder) for b in s.blocks)
        model(src, None, dec).square().mean().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=0)
