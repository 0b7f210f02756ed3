"""GPT model: causality, config validation, presets and their sizes, save/load, FLOPs estimate."""
import json

import pytest
import torch

from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.gpt import GPT, GPTConfig, count_parameters, flops_per_token
from lmforge.models.registry import build_model, load_model, preset_config, save_model

SMALL = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)

CAUSAL_CASES = {
    "debug (learned)": lambda: build_model("debug"),
    "debug (sinusoidal)": lambda: build_model("debug", position="sinusoidal"),
    "llama-debug (rope, GQA)": lambda: build_model("llama-debug"),
    "mqa (rope)": lambda: GPT(GPTConfig(**SMALL, n_kv_head=1, position="rope", norm="rmsnorm", mlp="swiglu")),
}


@pytest.mark.parametrize("name", list(CAUSAL_CASES))
def test_no_future_token_leaks(name):
    torch.manual_seed(0)
    model = CAUSAL_CASES[name]().eval()
    T, t = 16, 9
    ids = torch.randint(0, model.config.vocab_size, (2, T))
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert (a[:, t:] - b[:, t:]).abs().amax() > 1e-4  # the change is visible from position t on


@pytest.mark.parametrize("overrides", [
    dict(n_kv_head=2),                      # GQA
    dict(n_kv_head=1),                      # MQA
    dict(tie_embeddings=True),
    dict(tie_embeddings=False),
    dict(bias=True), dict(bias=False),
    dict(position="rope", norm="rmsnorm", mlp="swiglu", intermediate_size=80),
    dict(position="sinusoidal", mlp="gelu_exact"),
])
def test_config_variants_build_and_run(overrides):
    model = GPT(GPTConfig(**{**SMALL, **overrides}))
    tied = model.lm_head.weight is model.wte.weight
    assert tied == model.config.tie_embeddings
    if not model.config.bias:
        assert all(not n.endswith("bias") or "ln" in n for n, _ in model.named_parameters())
    kv = model.config.n_kv_head * model.config.head_dim
    assert model.blocks[0].attn.qkv.weight.shape == (model.config.n_embd + 2 * kv, model.config.n_embd)
    logits = model(torch.randint(0, 97, (2, 8)))
    assert logits.shape == (2, 8, 97) and torch.isfinite(logits).all()


def test_llama_7b_parameter_count_on_meta():
    model = build_model("llama-7b", device="meta")
    assert model.wte.weight.is_meta
    n = count_parameters(model)
    assert abs(n - 6.74e9) / 6.74e9 < 0.01, n
    # Independent count from the published shapes.
    C, L, V, I = 4096, 32, 32000, 11008
    assert n == 2 * V * C + L * (4 * C * C + 3 * C * I + 2 * C) + C


def test_gpt2_124m_parameter_count():
    model = build_model("gpt2-124m", device="meta")
    assert model.lm_head.weight is model.wte.weight
    assert count_parameters(model) == 124_439_808


@pytest.mark.parametrize("bad, word", [
    (dict(n_embd=65), "divisible"),
    (dict(n_kv_head=3), "n_kv_head"),
    (dict(n_head=0), "n_head"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(position="alibi"), "position"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp="relu"), "mlp"),
    (dict(dropout=1.0), "dropout"),
    (dict(attention_dropout=-0.1), "attention_dropout"),
    (dict(position="rope", n_embd=36, n_head=4), "even"),  # head size 9
])
def test_invalid_configs_raise_config_error(bad, word):
    with pytest.raises(ConfigError) as e:
        GPTConfig(**{**SMALL, **bad})
    assert word in str(e.value) and e.value.fix


def test_attention_dropout_is_separate_from_residual_dropout():
    """attention_dropout=0 keeps dropout on embeddings and residual branches but leaves the
    attention probabilities whole: with every other dropout layer switched to eval mode, a
    training-mode forward equals the eval forward only when attention dropout is off."""
    torch.manual_seed(0)
    x = torch.randint(0, SMALL["vocab_size"], (2, 16))
    for attention_dropout, same in ((0.0, True), (None, False)):
        model = GPT(GPTConfig(**{**SMALL, "dropout": 0.5, "attention_dropout": attention_dropout}))
        assert all(b.attn.dropout == (0.5 if attention_dropout is None else 0.0) for b in model.blocks)
        with torch.no_grad():
            reference = model.eval()(x)
            model.train()
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.eval()
            assert torch.allclose(model(x), reference, atol=1e-6) == same


def test_unknown_config_key_and_preset():
    with pytest.raises(ConfigError, match="unknown GPT config keys"):
        GPTConfig.from_dict({**SMALL, "n_layers": 3})
    with pytest.raises(ConfigError) as e:
        preset_config("gpt2-124")
    assert "gpt2-124m" in e.value.fix  # suggests the closest preset
    with pytest.raises(ConfigError):
        build_model("no-such-model")


def test_corrupt_or_missing_checkpoint_raises_checkpoint_error(tmp_path):
    model = build_model("debug")
    save_model(model, tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError):
        load_model(tmp_path)
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError):
        load_model(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "nowhere")


def test_weights_of_another_config_raise_checkpoint_error(tmp_path):
    save_model(build_model("debug"), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(GPTConfig(**SMALL).to_dict()))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path)


def test_flops_per_token_is_about_six_times_params():
    cfg = preset_config("gpt2-124m")
    model = build_model(cfg, device="meta")
    n = count_parameters(model)
    f = flops_per_token(cfg, seq_len=1)
    assert f > 0
    # 6N rule of thumb (Kaplan et al. 2020) once attention over the context is negligible.
    assert abs(f - 6 * n) / (6 * n) < 0.02
    assert flops_per_token(cfg, seq_len=1, training=False) == pytest.approx(f / 3)
    assert flops_per_token(cfg, seq_len=1024) > f  # longer context costs attention FLOPs
