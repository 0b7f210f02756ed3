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

from lmforge.config import (AugmentConfig, BalanceConfig, DataConfig, DecodeConfig, DistillConfig, MethodConfig,
                            ModelSpec, PrivacyConfig, StartConfig, TaskDataConfig, TrainConfig)
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
from lmforge.runs.explain import explain as explain_run, explain_eval as explain_eval_run
from lmforge.runs.export import export_run
from lmforge.runs.federate import FederateConfig, federate
from lmforge.runs.finetune import finetune as finetune_run
from lmforge.runs.harness_eval import evaluate_harness as evaluate_harness_run
from lmforge.runs.predict import pipeline, predict
from lmforge.runs.prompt_eval import prompt_eval as prompt_eval_run
from lmforge.runs.prompt_generate import prompt_generate as prompt_generate_run
from lmforge.runs.prompt_report import combined_report
from lmforge.runs.pretrain import pretrain
from lmforge.runs.distill import distill as distill_run
from lmforge.runs.prune import prune_run
from lmforge.runs.report import compress_report as compress_report_of_runs
from lmforge.runs.quantize import quantize_run
from lmforge.runs.rundir import check_out, load
from lmforge.serve.app import create_app
from lmforge.train.plan import PlanRequest, plan as plan_training

__all__ = ["AugmentConfig", "BalanceConfig", "DataConfig", "DecodeConfig", "DistillConfig", "MethodConfig", "ModelSpec",
           "StartConfig", "TaskDataConfig", "TrainConfig", "PrivacyConfig", "DEMO_PROMPTS", "prepare", "pretrain",
           "finetune", "predict", "pipeline", "load", "generate", "stream", "chat", "evaluate_perplexity", "compare",
           "convert", "describe_conversion", "presets", "demo", "serve", "quantize", "prune", "distill",
           "compress_report", "export", "federate", "FederateConfig", "evaluate_harness", "prompt_eval",
           "prompt_generate", "prompt_report", "explain", "explain_eval", "plan"]


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


def evaluate_harness(run_dir: str | Path, tasks, *, include_path: str | Path | None = None,
                     num_fewshot: int | None = None, limit: int | float | None = None, batch_size: int = 16,
                     device: str = "cpu") -> dict:
    """lm-evaluation-harness `tasks` (names, or "a,b") on the decoder of `run_dir`, in process: log-likelihoods
    from batched scoring, generations from the engine. Task YAMLs in `include_path` are found besides lm-eval's
    own. lm-eval's results JSON (and each task's samples) are written into `run_dir/lm_eval/`; returns the results
    with `results_path`. Needs `pip install lmforge[harness]`."""
    return evaluate_harness_run(run_dir, tasks, include_path=include_path, num_fewshot=num_fewshot, limit=limit,
                                batch_size=batch_size, device=device)


def prompt_eval(run_dir: str | Path, *, train: str | Path, template: str | Path, data: str | Path | None = None,
                val_fraction: float | None = None, shots=(0, 1, 4, 8), seeds: int = 5, selection: str = "random",
                order: str = "random", encoder: str | None = None, limit: int | None = None,
                reasoning_tokens: int = 48, out: str | Path, finetuned: str | Path | None = None,
                device: str = "cpu") -> dict:
    """Classification by prompting the decoder of `run_dir`: each label's verbaliser in `template` (a YAML file or
    a built-in `TASK/PATTERN`) scored after 0..k exemplars from `train` (chosen `random`, `balanced` or `nearest`
    by the sentence embeddings of the `encoder` run, ordered `random`, `nearest_last` or `nearest_first`),
    accuracy on `data` (or a `val_fraction` carved from `train`) per number of shots as mean ± std over `seeds`
    exemplar draws, with and without contextual calibration, beside the fine-tuned run `finetuned` when given.
    Writes `out/prompt_eval.json`, `.md` and `.png`; returns the JSON."""
    return prompt_eval_run(run_dir, data=data, train=train, template=template, val_fraction=val_fraction,
                           shots=shots, seeds=seeds, selection=selection, order=order, encoder=encoder, limit=limit,
                           reasoning_tokens=reasoning_tokens, out=out, finetuned=finetuned, device=device)


def prompt_generate(run_dir: str | Path, *, task: str, train: str | Path, template: str | Path,
                    data: str | Path | None = None, out: str | Path, **options) -> dict:
    """Summarization, translation or question answering (`task`: summarize, translate, qa) by prompting the
    decoder of `run_dir` with 0..k exemplars from `train`, scored on `data` with fine-tuning's metrics (ROUGE,
    BLEU/chrF, SQuAD EM/F1) as mean ± std over seeds. `options`: those of
    `lmforge.runs.prompt_generate.prompt_generate` (train_target/data_target for parallel text, shots, seeds,
    selection, order, encoder, limit, max_new_tokens, finetuned, ...). Writes `out/prompt_generate.json` and
    `.md`; returns the JSON."""
    return prompt_generate_run(run_dir, task=task, train=train, template=template, data=data, out=out, **options)


def prompt_report(folders, *, out: str | Path) -> dict:
    """One "prompt vs fine-tune" table (`out/prompt_vs_finetune.md` and `.json`) and one plot (`.png`, a panel per
    task) from the `out` folders of several `prompt_eval` runs; returns the JSON."""
    return combined_report(folders, out)


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


def prune(run_dir: str | Path, out: str | Path, *, method: str = "structured", sparsity: float = 0.3,
          importance: str = "magnitude", recover_steps: int = 0, overwrite: bool = False, whiten: bool = True,
          calibration: str | Path | None = None) -> dict:
    """Write a pruned copy of the run in `run_dir` to `out`. `method="structured"` removes `sparsity` of each
    layer's attention heads (encoders) and MLP neurons, ranked by `importance` ("magnitude", or "taylor" on
    the run's training data), and `out` loads as the smaller model; `method="lowrank"` factorises the blocks'
    linear layers to remove that fraction of their weights, whitened by their inputs on the run's training
    examples or on `calibration` text (language models), or by plain SVD when not `whiten`;
    `method="magnitude"` zeroes that fraction of the blocks' weights. `recover_steps` > 0 fine-tunes the pruned model that many steps on the run's own
    recipe, its head kept. Returns the summary (parameters and bytes before and after)."""
    return prune_run(run_dir, out, method=method, sparsity=sparsity, importance=importance,
                     recover_steps=recover_steps, overwrite=overwrite, whiten=whiten, calibration=calibration)


def distill(teacher: str | Path, out: str | Path, *, student: str = "half", distill: DistillConfig | None = None,
            data: TaskDataConfig | None = None, train: TrainConfig | None = None, method: MethodConfig | None = None,
            overwrite: bool = False) -> dict:
    """Train a student of the fine-tuned classifier or tagger `teacher` into the run directory `out`, on hard
    labels and the teacher's softened predictions (`distill`: temperature and weight). `student`: "half" (the
    teacher's every other layer), layer numbers "0,2,4", a run directory with the teacher's tokenizer, or a
    preset. `data`, `train` and `method` default to the teacher's recipe. Returns the student's summary."""
    return distill_run(teacher, out, student=student, distill=distill, data=data, train=train, method=method,
                       overwrite=overwrite)


def compress_report(runs: list[str | Path], out: str | Path, *, data: str | None = None, seq_len: int = 128,
                    repeats: int = 20, overwrite: bool = False) -> dict:
    """Measure the original run `runs[0]` and its compressed variants: size on disk, parameters, CPU latency at
    batch 1 and 8 on `seq_len`-token sequences, throughput, quality (the task metric on the recipe's validation
    split, or perplexity on the text file `data`) and agreement with the original. Writes report.md,
    report.json and report.png into `out`; returns the report (its rows and a Markdown table)."""
    return compress_report_of_runs(runs, out, data=data, seq_len=seq_len, repeats=repeats, overwrite=overwrite)


def compare(data: str, budget_seconds: float, out: str | Path, *, models=None, tokenizer: str = "char",
            **kwargs) -> dict:
    """Train each of `models` (preset names, a list or "a,b,c"; default n-gram, RNN, LSTM, GRU and a small GPT)
    for `budget_seconds` of wall-clock time on `data` and compare validation bits per character.

    Writes `out/data`, one run directory per model, and `out/compare.md|json|png`; returns the JSON.
    Keyword arguments go to `lmforge.runs.compare.compare` (vocab_size, clean, device, overwrite...).
    """
    return compare_models(data, budget_seconds, out, models=models or DEFAULT_MODELS, tokenizer=tokenizer, **kwargs)


def finetune(task: str, *, data, model, out: str | Path, method=None, train: TrainConfig | None = None,
             balance=None, augment=None, decode=None, resume: bool = False,
             privacy: PrivacyConfig | None = None) -> dict:
    """Fine-tune `model` (run directory, Hugging Face folder or preset) for `task` on `data`
    (a `TaskDataConfig`, or a path to the training file); returns the summary with validation metrics.
    A `privacy` section with an epsilon or a noise multiplier trains with DP-SGD (Opacus)."""
    data = TaskDataConfig(train=data) if isinstance(data, str) else data
    model = StartConfig(init=model) if isinstance(model, str) else model
    return finetune_run(task, data=data, model=model, out=out, method=method, train=train, balance=balance,
                        augment=augment, decode=decode, resume=resume, privacy=privacy)


def serve(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_keys=(), task_models=None,
          max_slots: int = 16, log_level: str = "info", **limits) -> None:
    """Serve the decoder run `model` over HTTP until interrupted: OpenAI-compatible completions and chat
    completions, the task runs in `task_models` ({"classify": RUN, ...}) and a web playground at `/`.

    `limits` go to `lmforge.serve.app.create_app` (max_prompt_tokens, max_tokens_limit, max_body_bytes,
    max_concurrent, request_timeout, max_num_batched_tokens, model_name, max_logprobs)."""
    import uvicorn  # the HTTP server is loaded only by the command that serves

    app = create_app(model, api_keys=tuple(api_keys or ()), task_models=task_models, max_slots=max_slots, **limits)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_keys:
        print(f"warning: serving on {host} without an API key: anyone who can reach this port can use the model",
              flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def explain(model: str | Path, *, text: str | None = None, input: str | None = None, method: str = "attention",
            target: str | None = None, out: str | Path, steps: int | None = None, overwrite: bool = False,
            device: str = "cpu") -> list[dict]:
    """Explain `text` (or each line of the file `input`) as the run `model` reads it. `method`: attention, rollout,
    ig (integrated gradients on the token embeddings, completeness delta reported), saliency (gradient x input) or
    logit-lens (decoder language models). `target`: a classifier's label, a tagger's TAG or TAG@WORD, a language
    model's next token (default: the prediction). Writes `out` (explanations.json, attention.json for bertviz,
    viewer.html, plots/) whole or not at all; returns the explanations."""
    return explain_run(model, text=text, input=input, method=method, target=target, out=out, steps=steps,
                       overwrite=overwrite, device=device)


def explain_eval(model: str | Path, data: str, *, methods="ig,rollout,attention", limit: int | None = None,
                 fraction: float = 0.2, steps: int | None = None, seed: int = 0, output: str | Path | None = None,
                 device: str = "cpu") -> dict:
    """How faithful each method's token scores are for the classifier `model` on the labelled file `data`: ERASER
    comprehensiveness and sufficiency at `fraction` of the tokens against random tokens, integrated gradients'
    completeness error, and the rank correlation between methods. Writes the report to `output` when given."""
    return explain_eval_run(model, data, methods=methods, limit=limit, fraction=fraction, steps=steps, seed=seed,
                            out=output, device=device)
