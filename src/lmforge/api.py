"""The Python API; every CLI verb is a thin call into one of these functions.

    import lmforge.api as lf
    lf.prepare("python-docs", "data/pydocs", tokenizer="bpe", vocab_size=4096)
    summary = lf.pretrain("data/pydocs", "debug", out="runs/debug", train=lf.TrainConfig(max_steps=200))
    print(lf.generate("runs/debug", ["The function"], max_new_tokens=40))
    print(lf.evaluate_perplexity("runs/debug", "data/pydocs"))
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from lmforge.config import (AugmentConfig, BalanceConfig, DataConfig, DecodeConfig, MethodConfig, ModelSpec,
                            StartConfig, TaskDataConfig, TrainConfig)
from lmforge.data.shards import prepare_dataset
from lmforge.eval.perplexity import perplexity_of_run
from lmforge.infer.chat import chat_loop
from lmforge.infer.compiled import check_compilable
from lmforge.infer.generate import generate_text, stream_text
from lmforge.infer.sampling import SamplingParams
from lmforge.interop.hf import convert as convert_folder, describe as describe_conversion
from lmforge.models.gpt import count_parameters
from lmforge.models.registry import PRESETS, build_model
from lmforge.runs.compare import DEFAULT_MODELS, compare as compare_models
from lmforge.runs.demo import DEMO_PROMPTS, demo
from lmforge.runs.export import export_run
from lmforge.runs.finetune import finetune as finetune_run
from lmforge.runs.predict import pipeline, predict
from lmforge.runs.pretrain import pretrain
from lmforge.runs.quantize import quantize_run
from lmforge.runs.rundir import check_out, load
from lmforge.serve.app import create_app
from lmforge.train.plan import PlanRequest, plan as plan_training

__all__ = ["AugmentConfig", "BalanceConfig", "DataConfig", "DecodeConfig", "MethodConfig", "ModelSpec",
           "StartConfig", "TaskDataConfig", "TrainConfig", "DEMO_PROMPTS", "prepare", "pretrain", "finetune",
           "predict", "pipeline", "load", "generate", "stream", "chat", "evaluate_perplexity", "compare", "convert",
           "describe_conversion", "presets", "demo", "serve", "quantize", "export", "plan"]


def prepare(data: str, out: str | Path, *, tokenizer: str = "bpe", vocab_size: int = 8192, val_fraction: float = 0.1,
            seed: int = 1337, text_field: str = "text", column: str | None = None, clean: bool = True,
            overwrite: bool = False, progress: bool = True, extra_ids: int = 0) -> dict:
    """Clean `data`, train a tokenizer, write token shards to `out`; returns the dataset's meta.

    `extra_ids` adds that many T5 sentinel tokens to the tokenizer (span-corruption pretraining)."""
    check_out(out)
    return prepare_dataset(data, out, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                           seed=seed, text_field=text_field, column=column, clean=clean, overwrite=overwrite,
                           progress=progress, extra_ids=extra_ids)


def generate(run_dir_or_model, prompts: str | list[str], *, tokenizer=None, compile: bool = False,
             **sampling) -> list[list[str]]:
    """Sampled continuations: one list of `num_samples` strings per prompt.

    `compile=True` (CPU, GPT family) compiles the decode step into one graph on first use: tens of
    seconds once, then about 2.5x faster decoding at batch 1 (see `lmforge.infer.compiled`)."""
    if isinstance(run_dir_or_model, (str, Path)):
        model, tokenizer = load(run_dir_or_model)
    else:
        model = run_dir_or_model
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if compile:
        check_compilable(model)
    return generate_text(model, tokenizer, prompts, SamplingParams(**sampling), compile=compile)


def stream(model, tokenizer, prompts: list[str], *, compile: bool = False, output: TextIO | None = None,
           **sampling) -> None:
    """Write each prompt and its samples to `output` (stdout) token by token as they are generated.

    Each sample has its own seed (`seed + i`), so every sample streams as it is produced."""
    output = output or sys.stdout
    params = SamplingParams(**sampling)
    if compile:
        check_compilable(model)  # before anything is written
    total = len(prompts) * params.num_samples
    for p, prompt in enumerate(prompts):
        for i in range(params.num_samples):
            seed = None if params.seed is None else params.seed + i
            if total > 1:  # several completions are numbered, so that each one's start is visible
                output.write(f"[{p * params.num_samples + i + 1}/{total}] ")
            output.write(prompt)
            stream_text(model, tokenizer, prompt, replace(params, num_samples=1, seed=seed), output=output,
                        compile=compile)
            output.write("\n")


def chat(run_dir: str | Path, *, system: str | None = None, device: str = "cpu", **sampling) -> list:
    """Chat with a run in the terminal until end of input; returns the conversation."""
    model, tokenizer = load(run_dir, device=device)
    return chat_loop(model, tokenizer, SamplingParams(**sampling), system=system)


def export(run_dir: str | Path, out: str | Path, *, format: str = "onnx", overwrite: bool = False) -> dict:
    """Export the model of the run in `run_dir` to the folder `out` for another runtime. `format="onnx"`:
    model.onnx for onnxruntime (a fine-tuned encoder classifier: logits from input_ids and attention_mask; a
    GPT/Llama language model: one decoding step with the key/value cache as inputs and outputs), with the run's
    tokenizer and configs and an export.json describing the graph. `out` is written whole or not at all;
    returns export.json's record."""
    return export_run(run_dir, out, format=format, overwrite=overwrite)


def presets() -> dict[str, int]:
    """Every model preset and its parameter count (counted on the meta device: nothing is allocated)."""
    return {name: count_parameters(build_model(name, device="meta")) for name in sorted(PRESETS)}


def plan(model: str, **options) -> dict:
    """What training preset `model` needs before a run starts: parameters, FLOPs per token, memory per GPU
    (weights, gradients, optimizer states, activations, buffers), the largest micro-batch that fits,
    tokens/s at an MFU, wall and GPU hours, and a verdict. `options` are `PlanRequest`'s fields
    (gpus, gpu, gpu_memory, seq_len, micro_batch, global_batch_tokens, tokens, precision, parallel,
    activation_checkpointing, mfu, peak_tflops, reshard_after_forward)."""
    return plan_training(PlanRequest(model=model, **options))


def evaluate_perplexity(run_dir: str | Path, data: str, **kwargs) -> dict:
    """Perplexity and bits per byte of a run's model on a text file or a prepared dataset's val split."""
    return perplexity_of_run(run_dir, data, **kwargs)


def convert(src: str | Path, dst: str | Path, *, to: str = "hf", overwrite: bool = False) -> dict:
    """Convert an lmforge run directory into a Hugging Face transformers folder (`to="hf"`), or a Hugging Face
    folder (GPT-2, Llama, BERT, T5) into an lmforge model directory that `load` and `generate` read
    (`to="lmforge"`). `dst` is written whole or not at all; returns a summary of what was written."""
    return convert_folder(src, dst, to=to, overwrite=overwrite)


def quantize(run_dir: str | Path, out: str | Path, *, method: str = "int8", overwrite: bool = False,
             group_size: int | None = None, calibration: str | Path | None = None) -> dict:
    """Write a quantized copy of the run in `run_dir` to `out`, itself a run directory that `load`, `generate`,
    `predict`, `pipeline`, `serve` and `evaluate_perplexity` read as they read `run_dir`. `method="int8"`: each
    linear layer's weight in int8 with one scale per output channel; `method="int4"`: 4-bit weights with a scale
    and zero point per `group_size` (default 128) input columns, calibrated on the text file `calibration` when
    given. Returns the new run's summary."""
    return quantize_run(run_dir, out, method=method, overwrite=overwrite, group_size=group_size,
                        calibration=calibration)


def compare(data: str, budget_seconds: float, out: str | Path, *, models=None, tokenizer: str = "char",
            **kwargs) -> dict:
    """Train each of `models` (preset names, a list or "a,b,c"; default n-gram, RNN, LSTM, GRU and a small GPT)
    for `budget_seconds` of wall-clock time on `data` and compare validation bits per character.

    Writes `out/data`, one run directory per model, and `out/compare.md|json|png`; returns the JSON.
    Keyword arguments go to `lmforge.runs.compare.compare` (vocab_size, clean, device, overwrite...).
    """
    return compare_models(data, budget_seconds, out, models=models or DEFAULT_MODELS, tokenizer=tokenizer, **kwargs)


def finetune(task: str, *, data, model, out: str | Path, method=None, train: TrainConfig | None = None,
             balance=None, augment=None, decode=None, resume: bool = False) -> dict:
    """Fine-tune `model` (run directory, Hugging Face folder or preset) for `task` on `data`
    (a `TaskDataConfig`, or a path to the training file); returns the summary with validation metrics."""
    data = TaskDataConfig(train=data) if isinstance(data, str) else data
    model = StartConfig(init=model) if isinstance(model, str) else model
    return finetune_run(task, data=data, model=model, out=out, method=method, train=train, balance=balance,
                        augment=augment, decode=decode, resume=resume)


def serve(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_keys=(), task_models=None,
          max_slots: int = 16, log_level: str = "info", **limits) -> None:
    """Serve the decoder run `model` over HTTP until interrupted: OpenAI-compatible completions and chat
    completions, the task runs in `task_models` ({"classify": RUN, ...}) and a web playground at `/`.

    `limits` go to `lmforge.serve.app.create_app` (max_prompt_tokens, max_tokens_limit, max_body_bytes,
    max_concurrent, request_timeout, max_num_batched_tokens, model_name)."""
    import uvicorn  # the HTTP server is loaded only by the command that serves

    app = create_app(model, api_keys=tuple(api_keys or ()), task_models=task_models, max_slots=max_slots, **limits)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_keys:
        print(f"warning: serving on {host} without an API key: anyone who can reach this port can use the model",
              flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
