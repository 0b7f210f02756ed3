"""The CUDA paths against CPU references: attention kernels, model forwards, decoding, the serving
engine, cuDNN recurrent layers, training steps, and the CLI under bf16, torch.compile and NCCL.

Every test here needs a CUDA GPU and skips without one; the rest of the suite covers the same code on CPU.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import free_port, prepare_char_corpus
from lmforge.config import TrainConfig
from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate
from lmforge.infer.sampling import SamplingParams
from lmforge.models.common.attention import naive_attention
from lmforge.models.registry import build_model
from lmforge.parallel import DistInfo
from lmforge.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [11, 12, 13, 14], [20]]
TEXT = "Now is the winter of our discontent made glorious summer by this sun of York.\n" * 120


def _model(preset):
    # Larger weights than the init: greedy decoding of a random model then gives varied tokens with
    # clear margins between the top logits, so CPU and GPU rounding cannot flip a choice.
    torch.manual_seed(0)
    if preset in ("debug", "llama-debug"):
        return build_model(preset, init_std=0.2).eval()
    model = build_model(preset).eval()
    if preset.endswith(("rnn-debug", "lstm-debug", "gru-debug")):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4.0)
    return model


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("is_causal", [True, False])
def test_sdpa_kernels_match_naive_attention_on_cpu(dtype, atol, is_causal):
    """The flash / memory-efficient kernels SDPA picks on the GPU against the fp32 textbook formula."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 64, generator=g) for _ in range(3))
    ref = naive_attention(q, k, v, is_causal=is_causal)
    out = F.scaled_dot_product_attention(*(t.to(CUDA, dtype) for t in (q, k, v)), is_causal=is_causal)
    torch.testing.assert_close(out.float().cpu(), ref, atol=atol, rtol=0)


@pytest.mark.parametrize("preset", ["debug", "llama-debug", "bert-debug", "t5-debug", "lstm-debug", "gru-debug"])
def test_forward_on_gpu_equals_cpu(preset):
    model = _model(preset)
    ids = torch.randint(1, 200, (3, 17), generator=torch.Generator().manual_seed(1))
    kwargs = {"decoder_input_ids": ids[:, :9]} if preset.startswith("t5") else {}
    # cuDNN computes fp32 recurrent layers in TF32 by default (about 1e-3 apart from fp32): compare in fp32.
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(ids, **kwargs)
        out = model.to(CUDA)(ids.to(CUDA), **{k: v.to(CUDA) for k, v in kwargs.items()})
    ref, out = (x[0] if isinstance(x, tuple) else x for x in (ref, out))
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["debug", "llama-debug", "gru-debug"])
def test_cached_generation_on_gpu_equals_uncached_and_cpu(preset):
    model = _model(preset)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    on_cpu = generate(model, PROMPTS, params)
    model = model.to(CUDA)
    cached = generate(model, PROMPTS, params)
    assert cached == generate(model, PROMPTS, params, use_cache=False)
    assert cached == on_cpu


def test_engine_on_gpu_equals_generate():
    model = _model("llama-debug").to(CUDA)
    engine = Engine(model, max_slots=3, max_num_batched_tokens=16, chunked_prefill=True)
    lengths = {"a": 9, "b": 5, "c": 14, "d": 3, "e": 7}
    for i, (rid, n) in enumerate(lengths.items()):
        engine.add_request(PROMPTS[i % len(PROMPTS)] * 2, SamplingParams(temperature=0.0, max_new_tokens=n),
                           request_id=rid)
    tokens: dict[str, list[int]] = {}
    for _ in range(500):
        if not engine.has_unfinished():
            break
        for o in engine.step():
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
    for i, (rid, n) in enumerate(lengths.items()):
        [ref] = generate(model, [PROMPTS[i % len(PROMPTS)] * 2], SamplingParams(temperature=0.0, max_new_tokens=n))
        assert tokens[rid] == ref, rid


def _train_steps(device: torch.device, precision: str, steps: int = 5, micro: int = 1):
    torch.manual_seed(0)
    model = build_model("debug", vocab_size=97, block_size=32, n_embd=32)
    cfg = TrainConfig(lr=3e-3, warmup_steps=0, grad_clip=1.0, precision=precision, device=device.type)
    trainer = Trainer(model, None, cfg, "unused", dist=DistInfo(device=device))
    g = torch.Generator().manual_seed(1)
    pattern = torch.randint(0, 97, (40,), generator=g)  # repeated, so the loss really falls in a few steps
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, 23, (8,), generator=g)
        seq = torch.stack([pattern[s:s + 17] for s in starts.tolist()])
        x, y = seq[:, :-1], seq[:, 1:]
        size = 8 // micro
        losses.append(trainer.train_step([(x[i:i + size], y[i:i + size]) for i in range(0, 8, size)]))
    return losses, {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def _assert_same_training(run, reference):
    (losses, weights), (ref_losses, ref_weights) = run, reference
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for k in ref_weights:
        torch.testing.assert_close(weights[k], ref_weights[k], atol=1e-5, rtol=1e-4)


def test_fp32_training_steps_on_gpu_equal_cpu():
    _assert_same_training(_train_steps(CUDA, "fp32"), _train_steps(torch.device("cpu"), "fp32"))


def test_gradient_accumulation_on_gpu_equals_one_large_batch():
    _assert_same_training(_train_steps(CUDA, "fp32", micro=4), _train_steps(CUDA, "fp32", micro=1))


def test_bf16_training_on_gpu_tracks_fp32():
    fp32, _ = _train_steps(CUDA, "fp32", steps=20)
    bf16, _ = _train_steps(CUDA, "bf16", steps=20)
    assert bf16[-1] < bf16[0]
    assert bf16 == pytest.approx(fp32, rel=2e-2)


# ---------------------------------------------------------------- the CLI on the GPU
def _lmforge(*args, launcher=None):
    cmd = [*(launcher or [sys.executable, "-m"]), "lmforge.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_char_corpus(tmp_path_factory.mktemp("cuda"), TEXT)


def _pretrain_args(root: Path, out: Path, *extra):
    return ["pretrain", "--data", root / "data", "--model", "debug", "--model.block_size", "32",
            "--train.batch_size", "8", "--train.seq_len", "32", "--train.max_steps", "30",
            "--train.checkpoint_interval", "10", "--train.eval_interval", "10", "--train.eval_batches", "2",
            "--train.warmup_steps", "5", "--train.progress", "false", "--train.device", "cuda", "--out", out, *extra]


def test_pretrain_on_gpu_bf16_compiled_resumes_to_the_uninterrupted_weights(prepared):
    """`--train.compile` and bf16 on the GPU; the run taken back to its step-10 checkpoint and resumed
    ends where the uninterrupted run did."""
    extra = ["--train.precision", "bf16", "--train.compile", "true", "--train.keep_last", "3"]
    full = _lmforge(*_pretrain_args(prepared, prepared / "full", *extra))
    assert full.returncode == 0, full.stderr[-2000:]
    shutil.copytree(prepared / "full", prepared / "cut")
    checkpoints = sorted((prepared / "cut" / "checkpoints").glob("step_*"))
    assert [c.name for c in checkpoints] == ["step_00000010", "step_00000020", "step_00000030"]
    for later in checkpoints[1:]:
        shutil.rmtree(later)
    for name in ("model.safetensors", "summary.json"):
        (prepared / "cut" / name).unlink()
    resumed = _lmforge(*_pretrain_args(prepared, prepared / "cut", *extra, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(prepared / "full" / "model.safetensors"))
    b = load_file(str(prepared / "cut" / "model.safetensors"))
    for k in a:
        # Atomic-add reductions in GPU backward kernels may round differently from run to run.
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-3, msg=k)
    summary = json.loads((prepared / "full" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["val_loss"] < summary["initial_val_loss"]


@pytest.mark.skipif(not shutil.which("torchrun") and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_nccl_single_process_equals_plain_run(prepared):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    extra = ["--train.precision", "fp32", "--train.max_steps", "10"]
    plain = _lmforge(*_pretrain_args(prepared, prepared / "plain", *extra))
    assert plain.returncode == 0, plain.stderr[-2000:]
    launcher = [torchrun, "--nproc_per_node", "1", "--master_port", str(free_port()), "-m"]
    ddp = _lmforge(*_pretrain_args(prepared, prepared / "nccl", *extra), launcher=launcher)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a = load_file(str(prepared / "plain" / "model.safetensors"))
    b = load_file(str(prepared / "nccl" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


def test_generate_cli_on_gpu_equals_cpu(prepared):
    run = prepared / "full" if (prepared / "full" / "model.safetensors").exists() else None
    if run is None:
        r = _lmforge(*_pretrain_args(prepared, prepared / "gen", "--train.max_steps", "10"))
        assert r.returncode == 0, r.stderr[-2000:]
        run = prepared / "gen"
    outs = []
    for device in ("cpu", "cuda"):
        r = _lmforge("generate", "--model", run, "--prompt", "Now is", "--max_new_tokens", "20",
                     "--temperature", "0", "--device", device)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    assert len(outs[0].rstrip("\n")) == len("Now is") + 20  # a character-level model: one character a token
