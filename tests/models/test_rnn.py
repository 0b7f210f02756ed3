"""Recurrent LMs: forward against the cell equations written out, left padding, the recurrent state
as a cache, learning, save/load, generation, config validation."""
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.generate import generate, generate_text
from lmforge.infer.sampling import SamplingParams
from lmforge.models.registry import build_model, load_model, save_model
from lmforge.models.rnn import RNNConfig, RNNLM

CELLS = ["rnn-debug", "lstm-debug", "gru-debug"]
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [11, 12, 13, 14], [20]]


def _model(preset, **kw):
    torch.manual_seed(0)
    model = build_model(preset, **kw).eval()
    # Larger weights than the init, so greedy decoding of an untrained model does not settle on one token.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


def reference_logits(model: RNNLM, ids: torch.Tensor) -> torch.Tensor:
    """The cell equations of the torch.nn.RNN/LSTM/GRU documentation, one time step at a time."""
    cfg = model.config
    B, T = ids.shape
    x = model.wte.weight[ids]  # (B, T, E)
    for layer in range(cfg.n_layer):
        w_ih, w_hh = getattr(model.rnn, f"weight_ih_l{layer}"), getattr(model.rnn, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(model.rnn, f"bias_ih_l{layer}"), getattr(model.rnn, f"bias_hh_l{layer}")
        h = torch.zeros(B, cfg.hidden_size)
        c = torch.zeros(B, cfg.hidden_size)
        outs = []
        for t in range(T):
            gi, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
            if cfg.cell == "rnn":
                h = torch.tanh(gi + gh)
            elif cfg.cell == "lstm":
                i, f, g, o = (gi + gh).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                r = torch.sigmoid(gi.chunk(3, 1)[0] + gh.chunk(3, 1)[0])
                z = torch.sigmoid(gi.chunk(3, 1)[1] + gh.chunk(3, 1)[1])
                n = torch.tanh(gi.chunk(3, 1)[2] + r * gh.chunk(3, 1)[2])
                h = (1 - z) * n + z * h
            outs.append(h)
        x = torch.stack(outs, 1)
    return x @ model.lm_head.weight.T + model.lm_head.bias


@pytest.mark.parametrize("preset", CELLS)
def test_forward_matches_cell_equations(preset):
    model = _model(preset)
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (3, 11, model.config.vocab_size)
        torch.testing.assert_close(logits, reference_logits(model, ids), atol=1e-4, rtol=1e-4)
        assert model(ids, last_only=True).shape == (3, 1, model.config.vocab_size)
        torch.testing.assert_close(model(ids, last_only=True)[:, 0], logits[:, -1])


@pytest.mark.parametrize("preset", CELLS)
def test_left_padding_is_skipped(preset):
    model = _model(preset)
    alone = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        out = model(padded, attention_mask=mask)
        torch.testing.assert_close(out[0, 3:], model(alone)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1], model(padded[1:])[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="left padding"):
        model(padded, attention_mask=torch.tensor([[1, 0, 1, 1, 1, 1, 1]] * 2, dtype=torch.bool))


@pytest.mark.parametrize("preset", CELLS)
def test_state_cache_continues_the_sequence(preset):
    model = _model(preset)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(2)
        first = model(ids[:, :5], kv_cache=cache)
        cache.advance(5)
        model(ids[:, 5:6], kv_cache=cache)  # not advanced: must leave no trace
        rest = model(ids[:, 5:], kv_cache=cache)
        cache.advance(4)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 9
    with pytest.raises(ValueError):
        cache.advance(1)


@pytest.mark.parametrize("preset", CELLS)
def test_loss_decreases_on_a_tiny_batch(preset):
    torch.manual_seed(0)
    model = build_model(preset, vocab_size=32)
    ids = (torch.arange(33)[None] * 3 + torch.arange(4)[:, None] * 5) % 32  # each token determines the next
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(50):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


@pytest.mark.parametrize("preset", CELLS)
def test_save_load_round_trip(preset, tmp_path):
    model = _model(preset, tie_embeddings=True, n_embd=48)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    assert loaded.config == model.config and loaded.lm_head.weight is loaded.wte.weight
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


@pytest.mark.parametrize("preset", CELLS)
def test_generation_cached_uncached_and_alone_agree(preset):
    model = _model(preset)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    cached = generate(model, PROMPTS, params)
    assert cached == generate(model, PROMPTS, params, use_cache=False)
    assert any(len(set(row)) > 2 for row in cached)
    for prompt, row in zip(PROMPTS, cached):
        assert generate(model, [prompt], params) == [row]


def test_generate_text_with_a_tokenizer():
    from lmforge.data.tokenizers import train_tokenizer

    tok = train_tokenizer("char", ["hello world, the quick brown fox"], vocab_size=0)
    model = _model("lstm-debug", vocab_size=tok.vocab_size)
    [[a], [b]] = generate_text(model, tok, ["hello", "the"], SamplingParams(temperature=1.0, seed=3,
                                                                             max_new_tokens=10))
    assert isinstance(a, str) and isinstance(b, str) and len(a) > 0


@pytest.mark.parametrize("bad, field", [
    (dict(cell="transformer"), "model.cell"),
    (dict(hidden_size=0), "model.hidden_size"),
    (dict(tie_embeddings=True, n_embd=32, hidden_size=48), "model.tie_embeddings"),
    (dict(dropout=1.0), "model.dropout"),
])
def test_config_errors_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        RNNConfig(**bad)
    with pytest.raises(ConfigError, match="unknown RNN config keys"):
        RNNConfig.from_dict({"n_head": 4})
