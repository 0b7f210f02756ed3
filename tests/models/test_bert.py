"""The BERT encoder: sizes against HF's, bidirectional padded attention against the naive reference,
padding invariance, and logit parity with HF transformers' BertForPreTraining under an explicit key map."""
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.interop.hf import state_from_hf
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.common.attention import use_naive_attention
from lmforge.models.gpt import count_parameters
from lmforge.models.registry import build_model, preset_config

ATOL = 1e-4


def tiny(**overrides) -> Bert:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, intermediate_size=48, dropout=0.0)
    return Bert(BertConfig(**{**cfg, **overrides})).eval()


def _randomise(module: torch.nn.Module, seed: int) -> None:
    # Non-trivial norms and biases, so a key copied to the wrong place cannot go unnoticed.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0.0))


def _padded_batch(vocab: int, lengths: list[int], T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    types = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        types[i, n // 2:n] = 1
    return ids, types, mask


# ---------------------------------------------------------------- sizes and configs
def test_presets_build_on_meta_with_hf_sizes():
    from transformers import BertConfig as HFConfig, BertForPreTraining, BertModel

    base = build_model("bert-base", device="meta")
    assert base.embeddings.wte.weight.is_meta
    heads = count_parameters(base.mlm_head) - base.config.vocab_size * base.config.n_embd  # tied decoder not counted
    encoder_and_pooler = count_parameters(base) - heads - count_parameters(base.pair_head)
    # bert-base-uncased (BertModel with pooler): 109,482,240 parameters.
    assert abs(encoder_and_pooler - 109_482_240) / 109_482_240 < 0.01
    with torch.device("meta"):
        hf_model, hf_pretraining = BertModel(HFConfig()), BertForPreTraining(HFConfig())
    assert encoder_and_pooler == count_parameters(hf_model)
    assert count_parameters(base) == count_parameters(hf_pretraining)
    with torch.device("meta"):
        hf_large = BertForPreTraining(HFConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                intermediate_size=4096))
    large = build_model("bert-large", device="meta")
    assert count_parameters(large) == count_parameters(hf_large)
    assert 330e6 < count_parameters(large) < 340e6
    debug = preset_config("bert-debug")
    assert (debug.n_layer, debug.n_head, debug.n_embd, debug.vocab_size, debug.block_size) == (2, 4, 64, 1024, 128)


@pytest.mark.parametrize("field,value", [("n_head", 5), ("position", "rope"), ("mlp", "swiglu"), ("dropout", 1.0),
                                         ("pad_token_id", 5000), ("type_vocab_size", 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        preset_config("bert-debug", **{field: value})


def test_unknown_config_key():
    with pytest.raises(ConfigError, match="n_kv_head"):
        BertConfig.from_dict({"n_kv_head": 2})


# ---------------------------------------------------------------- attention
def test_sdpa_matches_naive_attention_with_padding():
    model = tiny()
    _randomise(model, 1)
    ids, types, mask = _padded_batch(97, [32, 17, 5], 32)
    with torch.no_grad():
        fast = model(ids, types, mask)
        with use_naive_attention(model):
            slow = model(ids, types, mask)
    real = mask.bool()
    torch.testing.assert_close(fast[real], slow[real], atol=1e-5, rtol=0)
    assert torch.isfinite(fast).all()  # padded rows are not NaN either


def test_padding_does_not_change_real_tokens():
    model = tiny()
    _randomise(model, 2)
    ids, types, _ = _padded_batch(97, [10], 10)
    with torch.no_grad():
        alone = model(ids, types)
        padded_ids = torch.cat([ids, torch.randint(5, 97, (1, 7))], dim=1)  # pad *content* must not matter
        padded_types = torch.cat([types, torch.zeros(1, 7, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 7)], dim=1).long()
        padded = model(padded_ids, padded_types, mask)
    torch.testing.assert_close(padded[:, :10], alone, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- HF parity
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_hf_bert_for_pretraining_parity(attn_implementation):
    from transformers import BertConfig as HFConfig, BertForPreTraining

    hf_cfg = HFConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=40, type_vocab_size=2,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      attn_implementation=attn_implementation)
    torch.manual_seed(0)
    hf = BertForPreTraining(hf_cfg).eval()
    _randomise(hf, 1)
    ours = Bert(BertConfig(vocab_size=99, block_size=40, n_layer=2, n_head=4, n_embd=64, intermediate_size=96,
                           norm_eps=hf_cfg.layer_norm_eps, dropout=0.0)).eval()
    state = state_from_hf(hf.state_dict(), "BertForPreTraining", ours.config)
    assert set(state) == set(ours.state_dict()) - {"mlm_head.decoder.weight"}  # tied to the word embeddings
    ours.load_state_dict(state, strict=False)

    ids, types, mask = _padded_batch(99, [40, 23, 9], 40, seed=3)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        mlm, pair = ours.forward_pretraining(ids, types, mask)
        hidden = ours(ids, types, mask)
        ref_hidden = hf.bert(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (mlm[real] - ref.prediction_logits[real]).abs().max().item() <= ATOL
    assert (pair - ref.seq_relationship_logits).abs().max().item() <= ATOL
    assert (hidden[real] - ref_hidden[real]).abs().max().item() <= ATOL
    assert ref.prediction_logits.std() > 0.1 and ref.seq_relationship_logits.std() > 0.1
    # Scoring only selected positions gives the same logits as scoring all of them.
    torch.testing.assert_close(ours.mlm_logits(hidden[real]), mlm[real], atol=1e-6, rtol=0)
