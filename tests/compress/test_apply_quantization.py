"""Quantizing whole models: every family's linear layers, the save -> load round trip (bit-identical), and a
quantized GPT's logits and loss against its fp32 original."""
import copy

import pytest
import torch
import torch.nn as nn

from lmforge.compress import Int8Linear, apply_quantization, linear_layers, quantization_of, rebuild_quantized
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, load_model, preset_config, save_model, traits_of

VOCAB = 128
FAMILY_CASES = ["debug", "llama-debug", "bert-debug", "t5-debug", "lstm-debug", "gru-debug", "rnn-debug",
                "classify[bert-debug]", "classify[debug]"]


def _model(case: str) -> nn.Module:
    torch.manual_seed(0)
    if case.startswith("classify["):
        backbone = preset_config(case[len("classify["):-1], vocab_size=VOCAB)
        model = TaskModel(TaskModelConfig(backbone=backbone.to_dict(), labels=["no", "yes"]))
    else:
        model = build_model(preset_config(case, vocab_size=VOCAB))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial biases and norms
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _outputs(model: nn.Module, ids: torch.Tensor):
    with torch.no_grad():
        if traits_of(model).structure == "encoder-decoder":
            return model(_ids(2, 9, seed=5), None, ids)
        return model(ids)


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_every_linear_layer_is_quantized_and_the_run_loads_back_bit_identically(case, tmp_path):
    model = _model(case)
    names = [name for name, _ in linear_layers(model)]
    record = apply_quantization(model)
    assert record["method"] == "int8" and record["modules"] == names and names
    assert not linear_layers(model) and all(isinstance(model.get_submodule(n), Int8Linear) for n in names)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    assert quantization_of(loaded) == record
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert set(saved) == set(reloaded) and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    ids = _ids(2, 12, seed=3)
    assert torch.equal(_outputs(model, ids), _outputs(loaded, ids))


def test_quantized_gpt_predicts_like_the_fp32_one():
    torch.manual_seed(0)
    fp32 = build_model(preset_config("gpt-mini", vocab_size=512, block_size=64)).eval()
    quantized = copy.deepcopy(fp32)
    apply_quantization(quantized)
    ids = _ids(4, 64, seed=0) % 512
    exact, approx = _outputs(fp32, ids), _outputs(quantized, ids)  # (B, T, V)
    error = approx - exact
    # int8 weights and bfloat16 products: about 2% of the logits' spread, worst entry well under it.
    assert error.pow(2).mean().sqrt() <= 0.03 * exact.std() and error.abs().max() <= 0.15 * exact.std()
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.97
    with torch.no_grad():  # the fused loss reads the output layer's weight directly: the dequantized one
        loss_exact, loss_approx = fp32(ids, labels=ids), quantized(ids, labels=ids)
    assert loss_approx.item() == pytest.approx(loss_exact.item(), rel=1e-3)


def test_tied_output_layer_is_quantized_on_its_own():
    model = _model("debug")
    assert model.lm_head.weight is model.wte.weight
    apply_quantization(model)
    assert isinstance(model.lm_head, Int8Linear) and model.wte.weight.dtype == torch.float32


def test_quantizing_twice_or_a_model_without_linear_layers_is_a_user_error():
    model = _model("debug")
    apply_quantization(model)
    with pytest.raises(ConfigError, match="already quantized"):
        apply_quantization(model)
    with pytest.raises(ConfigError, match="unknown quantization method"):
        apply_quantization(_model("debug"), "int3")
    with pytest.raises(ConfigError, match="no linear layers"):
        apply_quantization(build_model("ngram-debug"))


def test_a_record_this_version_cannot_rebuild_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="quantization method 'int2'"):
        rebuild_quantized(_model("debug"), {"method": "int2", "modules": []})
    with pytest.raises(CheckpointError, match="not a linear layer"):
        rebuild_quantized(_model("debug"), {"method": "int8", "modules": ["wte"]})
