"""Adapting a pretrained model before fine-tuning. Growing its vocabulary: every old token computes exactly
what it did, tied weights stay tied, new tokens get distinct, typical embeddings, and the grown model saves
and loads. Replacing its dropout rates: same weights and outputs, and no randomness left at rate 0."""
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models.registry import build_model, load_model, resize_vocabulary, save_model, with_dropout

OLD, NEW = 61, 75


def _embedding(model) -> torch.nn.Embedding:
    return model.embeddings.wte if model.family == "bert" else model.wte


def _outputs(model, ids: torch.Tensor) -> torch.Tensor:
    if model.family == "t5":
        return model(ids, decoder_input_ids=ids.flip(1))
    return model(ids)


@pytest.mark.parametrize("preset, overrides", [
    ("bert-debug", {}),
    ("debug", {}),                              # tied output layer
    ("debug", {"tie_embeddings": False}),       # an output layer of its own
    ("t5-debug", {}),
    ("lstm-small", {}),
])
def test_old_tokens_compute_what_they_did_and_new_rows_are_distinct(preset, overrides, tmp_path):
    torch.manual_seed(0)
    model = build_model(preset, vocab_size=OLD, **overrides).eval()
    ids = torch.randint(1, OLD, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = _outputs(model, ids)
    tied_before = model.lm_head.weight is _embedding(model).weight if hasattr(model, "lm_head") else None

    assert resize_vocabulary(model, NEW) is model
    assert model.config.vocab_size == NEW and _embedding(model).weight.shape[0] == NEW
    with torch.no_grad():
        after = _outputs(model, ids)
    if model.family == "bert":  # hidden states
        torch.testing.assert_close(after, before, rtol=0, atol=0)
        assert model.mlm_head.decoder.weight is _embedding(model).weight
        assert model.mlm_head.decoder.bias.shape == (NEW,)
    else:  # logits over the old tokens unchanged, new columns appended
        assert after.shape[-1] == NEW
        torch.testing.assert_close(after[..., :OLD], before, rtol=0, atol=0)
        assert (model.lm_head.weight is _embedding(model).weight) == tied_before
    new_rows = _embedding(model).weight[OLD:].detach()
    assert torch.cdist(new_rows, new_rows).add(torch.eye(NEW - OLD) * 1e9).min() > 0  # no two alike
    old_norm = _embedding(model).weight[:OLD].detach().norm(dim=1).mean()
    assert 0.2 < new_rows.norm(dim=1).mean() / old_norm < 5  # the scale of the old rows, not far off

    save_model(model, tmp_path)
    again = load_model(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(_outputs(again, ids), after)


def test_growing_is_deterministic_and_cannot_shrink():
    torch.manual_seed(0)
    a = build_model("debug", vocab_size=OLD)
    b = build_model("debug", vocab_size=OLD)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(resize_vocabulary(a, NEW).wte.weight, resize_vocabulary(b, NEW).wte.weight)
    with pytest.raises(ConfigError, match="shrink"):
        resize_vocabulary(a, OLD)
    assert resize_vocabulary(a, NEW).config.vocab_size == NEW  # same size: nothing to do


@pytest.mark.parametrize("preset", ["bert-debug", "debug", "t5-debug"])
def test_with_dropout_keeps_the_weights_and_sets_every_rate(preset):
    torch.manual_seed(0)
    model = build_model(preset, vocab_size=OLD, dropout=0.3)
    ids = torch.randint(1, OLD, (2, 12), generator=torch.Generator().manual_seed(1))
    model.train()
    with torch.no_grad():
        assert not torch.equal(_outputs(model, ids), _outputs(model, ids))  # dropout is on
        model.eval()
        reference = _outputs(model, ids)
        model.train()
    quiet = with_dropout(model, 0.0)
    assert quiet.training and quiet.config.dropout == 0.0
    assert getattr(quiet.config, "attention_dropout", None) in (None, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(_outputs(quiet, ids), _outputs(quiet, ids), rtol=0, atol=0)  # train mode
        torch.testing.assert_close(_outputs(quiet, ids), reference)
    assert all(m.p == 0.0 for m in quiet.modules() if isinstance(m, torch.nn.Dropout))
    assert with_dropout(quiet, 0.0) is quiet
