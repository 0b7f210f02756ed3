"""MFU and peak memory as the trainer logs them: the FLOPs per token against PyTorch's own FLOP counter on a
real forward and backward pass, and the logged figures against the run's own tokens/s."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from distributed_runs import FixedBatches, tiny_llama, train_config
from lmforge.models.registry import build_model
from lmforge.train import trainer as trainer_module
from lmforge.train.metrics_log import read_metrics
from lmforge.train.trainer import Trainer
from lmforge.train.utilisation import model_flops_per_token


@pytest.mark.parametrize("preset, overrides", [("llama-debug", {}), ("debug", {"n_kv_head": 2})])
def test_flops_per_token_equal_what_pytorch_counts_in_forward_and_backward(preset, overrides):
    model = build_model(preset, **overrides)
    seq_len = model.config.block_size
    ids = torch.randint(0, model.config.vocab_size, (2, seq_len))
    # Attention as plain matmuls and the output layer unfused, so that the counter sees every matmul (causal
    # masking does not halve them, as in PaLM's count); lookups, norms and activations count in neither.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(ids)
        F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="sum").backward()
    assert model_flops_per_token(model, seq_len) == pytest.approx(counter.get_total_flops() / ids.numel(), rel=1e-9)


def test_non_decoder_families_have_no_mfu():
    assert model_flops_per_token(build_model("lstm-debug"), 16) is None


def test_the_log_holds_peak_memory_and_mfu_against_the_device_peak(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "device_peak_tflops", lambda device, precision: 1.0)
    cfg = train_config(batch_size=4, max_steps=4, log_interval=2)
    model = tiny_llama()
    Trainer(model, FixedBatches(0, 1, 4), cfg, tmp_path).fit()
    logged = [r for r in read_metrics(tmp_path) if "train_loss" in r]
    assert [r["step"] for r in logged] == [2, 4]
    flops = model_flops_per_token(model, 16)
    for record in logged:
        assert record["mfu"] == pytest.approx(record["tokens_per_second"] * flops / 1e12, rel=1e-3, abs=1e-4)
        assert 0.05 < record["peak_memory_gb"] < 64  # this process's peak resident memory
