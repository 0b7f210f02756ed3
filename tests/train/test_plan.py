"""`lmforge plan`: its activation accounting against what autograd really saves, its arithmetic against hand
computations, and its command line (a plan that does not fit is a verdict; bad input is an error)."""
import json

import pytest
import torch

from cli_run import assert_user_error, lmforge
from lmforge.errors import ConfigError
from lmforge.models.registry import build_model
from lmforge.train.plan import GB, PlanRequest, memory_per_rank, plan, resolve
from lmforge.train.saved_memory import DecoderShape, activation_bytes

B, T = 2, 24


def saved_by_autograd(model, ids) -> int:
    """Bytes of every distinct storage autograd saves for backward in a forward pass, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=ids)
    return sum(storages.values())


@pytest.mark.parametrize("preset, overrides", [
    ("debug", {}),                                   # GPT-2: LayerNorm, GELU, learned positions, MHA
    ("debug", {"n_kv_head": 2}),                     # grouped KV heads without rotary positions
    ("llama-debug", {}),                             # RMSNorm, SwiGLU, rotary positions, GQA
    ("llama-debug", {"n_kv_head": 4, "n_layer": 3}),  # rotary positions with MHA
    ("gpt-char-small", {"mlp": "gelu_exact"}),
])
def test_activation_formula_equals_what_autograd_saves_in_fp32(preset, overrides):
    torch.manual_seed(0)
    model = build_model(preset, **overrides)
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    shape = DecoderShape.of(cfg)
    planned = activation_bytes(shape, B * T, T, compute=4, residual=4, checkpointing="none")
    # The fused output layer saves its input gradient (B*T, C) and weight gradient (V, C) for backward.
    planned += 4 * B * T * cfg.n_embd + 4 * cfg.vocab_size * cfg.n_embd
    assert planned == saved_by_autograd(model, ids)


def test_memory_parts_by_hand_for_llama_7b_under_fsdp():
    req, sizes, _ = resolve(PlanRequest("llama-7b", gpus=8, gpu_memory=80, parallel="fsdp", micro_batch=1,
                                        global_batch_tokens=8 * 4096 * 4))
    assert sizes.parameters == 6_738_415_616  # Llama 2 7B
    memory = memory_per_rank(sizes, req, 1, grad_accum=4)
    P = sizes.parameters
    assert memory.weights == pytest.approx(4 * P / 8)           # fp32 master weights, sharded 8 ways
    assert memory.gradients == pytest.approx(4 * P / 8)         # held across accumulated micro-batches
    assert memory.optimizer_states == pytest.approx(8 * P / 8)  # AdamW's two moments
    ddp = memory_per_rank(sizes, PlanRequest(**{**req.__dict__, "parallel": "ddp"}), 1, grad_accum=4)
    assert ddp.weights == pytest.approx(4 * P) and ddp.optimizer_states == pytest.approx(8 * P)


def test_largest_micro_batch_is_the_edge_of_fitting():
    result = plan(PlanRequest("gpt2-124m", gpu="cpu", gpu_memory=6, seq_len=512))
    best = result["max_micro_batch"]
    assert best >= 1
    fits = [plan(PlanRequest("gpt2-124m", gpu="cpu", gpu_memory=6, seq_len=512, micro_batch=b))["fits"]
            for b in (best, best + 1)]
    assert fits == [True, False]


def test_throughput_and_hours_follow_from_mfu_and_peak():
    result = plan(PlanRequest("gpt2-124m", gpus=4, gpu="a100", mfu=0.5, tokens=1e9))
    per_second = 0.5 * 312e12 * 4 / result["flops_per_token"]
    assert result["tokens_per_second"] == pytest.approx(per_second, rel=1e-6)
    assert result["wall_hours"] == pytest.approx(1e9 / per_second / 3600, abs=0.01)
    assert result["gpu_hours"] == pytest.approx(4 * 1e9 / per_second / 3600, abs=0.1)


def test_cli_json_for_7b_on_8_gpus():
    r = lmforge("plan", "--model", "llama-7b", "--gpus", "8", "--gpu_memory", "80", "--parallel", "fsdp", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    memory = result["memory_per_gpu_gb"]
    parts = ("weights", "gradients", "optimizer_states", "activations", "buffers")
    assert sum(memory[k] for k in parts) == pytest.approx(memory["total"], abs=0.01)
    assert result["fits"] and result["max_micro_batch"] >= 1 and memory["total"] <= 80
    for key in ("parameters", "flops_per_token", "tokens_per_second", "wall_hours", "gpu_hours"):
        assert result[key] > 0, key


def test_a_plan_that_does_not_fit_is_a_verdict_with_what_would_fit():
    r = lmforge("plan", "--model", "llama-7b", "--gpus", "8", "--gpu_memory", "80", "--parallel", "ddp")
    assert r.returncode == 0, r.stderr
    assert "does not fit" in r.stdout and "--parallel fsdp" in r.stdout
    result = plan(PlanRequest("llama-7b", gpus=8, gpu_memory=80))
    assert not result["fits"] and result["max_micro_batch"] == 0
    assert result["memory_per_gpu_gb"]["total"] * GB > 80 * GB


@pytest.mark.parametrize("args, fragment", [
    (["--model", "llama-8x"], "unknown model preset"),
    (["--model", "llama-7b", "--gpus", "0"], "--gpus must be positive"),
    (["--model", "gpt2-124m", "--micro_batch", "-2"], "--micro_batch must be positive"),
    (["--model", "gpt2-124m", "--seq_len", "4096"], "longer than"),
    (["--model", "bert-base"], "transformer decoders"),
    (["--model", "gpt2-124m", "--gpu", "cpu"], "--gpu_memory"),
])
def test_bad_input_is_one_error_line(args, fragment):
    assert_user_error(lmforge("plan", *args), fragment)


def test_bad_request_raises_config_error_in_python():
    with pytest.raises(ConfigError, match="mfu"):
        plan(PlanRequest("debug", mfu=1.5))
