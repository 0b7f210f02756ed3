"""The Python API; every CLI verb is a thin call into one of these functions.

    import lmforge.api as lf
    lf.prepare("python-docs", "data/pydocs", tokenizer="bpe", vocab_size=4096)
    summary = lf.pretrain("data/pydocs", "debug", out="runs/debug", train=lf.TrainConfig(max_steps=200))
    print(lf.generate("runs/debug", ["The function"], max_new_tokens=40))
    print(lf.evaluate_perplexity("runs/debug", "data/pydocs"))
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lmforge.atomic import RunDirectory, write_json_atomic, write_text_atomic
from lmforge.config import (AugmentConfig, BalanceConfig, DataConfig, DecodeConfig, MethodConfig, ModelSpec,  # noqa: F401
                            StartConfig, TaskDataConfig, TrainConfig, to_yaml)
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.models.registry import build_model, load_model, preset_config
from lmforge.train.budget import TimeBudget
from lmforge.train.precision import cpu_has_native_bf16

__all__ = ["DataConfig", "ModelSpec", "TrainConfig", "prepare", "pretrain", "load", "generate",
           "evaluate_perplexity", "compare", "convert", "demo"]


# ---------------------------------------------------------------------- data
def prepare(data: str, out: str | Path, *, tokenizer: str = "bpe", vocab_size: int = 8192, val_fraction: float = 0.1,
            seed: int = 1337, text_field: str = "text", column: str | None = None, clean: bool = True,
            overwrite: bool = False, progress: bool = True, extra_ids: int = 0) -> dict:
    """Clean `data`, train a tokenizer, write token shards to `out`; returns the dataset's meta.

    `extra_ids` adds that many T5 sentinel tokens to the tokenizer (span-corruption pretraining)."""
    from lmforge.data.shards import prepare_dataset

    return prepare_dataset(data, out, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                           seed=seed, text_field=text_field, column=column, clean=clean, overwrite=overwrite,
                           progress=progress, extra_ids=extra_ids)


def _is_prepared(path: str) -> bool:
    return (Path(path) / "meta.json").is_file()


# ---------------------------------------------------------------------- training
def pretrain(data: str | DataConfig, model: str | ModelSpec = "debug", *, out: str | Path,
             train: TrainConfig | None = None, objective: str | None = None, resume: bool = False,
             on_step=None, init_from: str | Path | None = None) -> dict:
    """Train a language model from scratch (or `resume` one) and write a complete run directory.

    `data` is a prepared dataset directory, or any source `prepare` accepts (then it is prepared
    into `out/data` first). `objective` defaults to the model family's own (next-token prediction
    for decoders). Works unchanged under `torchrun --nproc_per_node N`.

    `init_from` continues pretraining from the weights of another run (or a Hugging Face model
    folder) instead of a fresh model, e.g. to adapt a model to a new domain: its config and
    tokenizer are used (the model preset is ignored), and raw data is tokenized with its tokenizer.
    """
    from lmforge.data.shards import load_dataset_meta, open_tokens
    from lmforge.data.tokenizers import Tokenizer
    from lmforge.train.objectives import build_objective
    from lmforge.parallel import broadcast_object, init_distributed, shutdown_distributed
    from lmforge.train.trainer import Trainer, plot_losses

    data = DataConfig(path=data) if isinstance(data, str) else data
    spec = ModelSpec(preset=model) if isinstance(model, str) else model
    train = train or TrainConfig()
    run_dir = Path(out)
    start = _load_init(init_from) if init_from is not None else None
    family = (start[0].family if start is not None
              else preset_config(spec.preset).to_dict()["family"])  # unknown presets fail before anything is written
    objective = build_objective(objective, family)  # and so do objectives that do not fit the model
    dist = init_distributed(train.device)
    _check_run_dir(run_dir, resume)
    run = RunDirectory(run_dir, owner=dist.is_main)
    broadcast_object(None, dist)  # every rank checks the run directory before rank 0 writes to it
    try:
        with run:
            data_dir = Path(data.path) if _is_prepared(data.path) else run_dir / "data"
            if not _is_prepared(str(data_dir)):
                if dist.is_main:
                    if start is not None:
                        from lmforge.data.shards import prepare_dataset

                        prepare_dataset(data.path, data_dir, tokenizer_path=str(start[2]),
                                        val_fraction=data.val_fraction,
                                        seed=train.seed, text_field=data.text_field, clean=data.clean,
                                        progress=train.progress)
                    else:
                        prepare(data.path, data_dir, tokenizer=data.tokenizer or objective.default_tokenizer,
                                vocab_size=data.vocab_size,
                                val_fraction=data.val_fraction, seed=train.seed, text_field=data.text_field,
                                clean=data.clean, progress=train.progress, extra_ids=objective.extra_ids)
                broadcast_object(None, dist)  # other ranks wait for the shards
            meta = load_dataset_meta(data_dir)
            if start is not None:
                cfg = start[0].config
                if meta["vocab_size"] > cfg.vocab_size:
                    raise DataError(f"{data_dir} was tokenized with {meta['vocab_size']:,} ids but the model in "
                                    f"{init_from} has {cfg.vocab_size:,}",
                                    f"pass raw data so it is tokenized with {init_from}'s tokenizer")
            else:
                cfg = _model_config(spec, meta)
            seq_len = train.seq_len or cfg.block_size
            if seq_len > cfg.block_size:
                raise ConfigError(f"train.seq_len ({seq_len}) is larger than the model's context length "
                                  f"({cfg.block_size})",
                                  f"lower --train.seq_len or raise --model.block_size to at least {seq_len}")
            train_tokens = open_tokens(data_dir / "train.bin", meta["dtype"])
            val_tokens = open_tokens(data_dir / "val.bin", meta["dtype"])
            tokenizer = Tokenizer.load(data_dir)
            loader = objective.make_loader(train_tokens, seq_len, train.batch_size, tokenizer=tokenizer,
                                           seed=train.seed,
                                           rank=dist.rank, world_size=dist.world_size)
            if len(val_tokens) <= seq_len:
                raise DataError(f"validation split has {len(val_tokens)} tokens, fewer than one context of {seq_len}",
                                "use more data, a larger --data.val_fraction or a smaller --train.seq_len")
            torch.manual_seed(train.seed)
            net = start[0].train() if start is not None else build_model(cfg)
            objective.prepare_model(net)
            if dist.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(run_dir / "config.yaml", to_yaml({
                    "data": replace(data, path=str(data_dir), tokenizer=meta.get("tokenizer", data.tokenizer)),
                    "model": _resolved_spec(spec, cfg), "train": train,
                    **({"init_from": str(init_from)} if init_from is not None else {})}))
                shutil.copyfile(data_dir / "tokenizer.json", run_dir / "tokenizer.json")
            evaluate = _val_evaluator(objective, val_tokens, seq_len, train.batch_size, train.eval_batches, meta,
                                      tokenizer)
            if family == "ngram":  # count-based: fitted in one pass over the training tokens, not by the trainer
                from lmforge.train.ngram_fit import fit_ngram

                run.started()
                summary = fit_ngram(net, train_tokens, run_dir, evaluate=evaluate, save=dist.is_main)
            else:
                trainer = Trainer(net, loader, train, run_dir, dist=dist, objective=objective, evaluate=evaluate,
                                  on_step=on_step)
                run.started()
                summary = trainer.fit(resume=resume)
            if dist.is_main:
                summary.update(parameters=sum(p.numel() for p in net.parameters()), model=spec.preset,
                               data=str(data_dir))
                write_json_atomic(run_dir / "summary.json", summary)
                plot_losses(run_dir)
            return summary
    finally:
        shutdown_distributed()


def _load_init(path: str | Path):
    """(model, tokenizer, tokenizer.json path) of the run or Hugging Face folder pretraining continues from."""
    from lmforge.data.tokenizers import Tokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a model folder (no config.json)",
                              "pass --init_from a run directory or a Hugging Face model folder")
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path} has no tokenizer.json", "continue from a folder that has its tokenizer")
    import json

    if "family" in json.loads((path / "config.json").read_text()):
        model = load_model(path)
        if model.family == "task":
            model = model.plain_backbone()
        return model, Tokenizer.load(path), path / "tokenizer.json"
    from lmforge.interop.hf import import_hf

    model, tokenizer = import_hf(path)
    return model, tokenizer, path / "tokenizer.json"


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    # A run killed before its first checkpoint has a directory but no checkpoints: resuming it starts over.
    if resume and not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"nothing to resume in {run_dir} (no run directory there)",
                              "drop --resume to start a new run, or pass the run directory you trained into")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} already exists and is not empty",
                          "pass --resume to continue it, or choose another --out")


def _model_config(spec: ModelSpec, meta: dict):
    overrides = spec.overrides()
    vocab = overrides.pop("vocab_size", None) or meta["vocab_size"]
    if vocab < meta["vocab_size"]:
        raise ConfigError(f"model.vocab_size ({vocab}) is smaller than the tokenizer's ({meta['vocab_size']})",
                          "drop --model.vocab_size to use the tokenizer's size")
    cfg = preset_config(spec.preset, vocab_size=vocab, **overrides)
    # Ids the model and the data must agree on (padding, T5's decoder start) come from the tokenizer.
    ids = {name: meta["pad_id"] for name in ("pad_token_id", "decoder_start_token_id")
           if hasattr(cfg, name) and meta.get("pad_id") is not None}
    return replace(cfg, **ids) if ids else cfg


def _resolved_spec(spec: ModelSpec, cfg) -> dict:
    return {"preset": spec.preset, **{k: v for k, v in cfg.to_dict().items() if k != "family"}}


def _val_evaluator(objective, val_tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int, meta: dict,
                   tokenizer):
    """Validation loss on a fixed, evenly spread set of batches; for next-token objectives also
    perplexity and bits per byte."""
    from lmforge.train.objectives import evaluate_objective

    bytes_per_token = meta["val_bytes"] / max(1, meta["val_tokens"])

    def evaluate(model) -> dict:
        batches = objective.eval_batches(val_tokens, seq_len, batch_size, tokenizer=tokenizer,
                                         max_batches=max_batches)
        result = evaluate_objective(objective, model, batches)
        loss = result.pop("loss")
        figures = {"val_loss": loss}
        if set(result) == {"lm"}:
            figures.update(val_ppl=math.exp(min(loss, 700.0)))
            if objective.name == "clm":  # bits per byte of text only when every token of the text is predicted
                figures.update(val_bpb=loss / math.log(2) / bytes_per_token)
        elif len(result) > 1:
            figures.update({f"val_{t}": v for t, v in result.items()})
        return figures

    return evaluate


# ---------------------------------------------------------------------- inference
def load(run_dir: str | Path, *, device: str = "cpu"):
    """(model, tokenizer) from a run directory, the model in eval mode on `device` (cpu, cuda[:N], or
    auto: a GPU when present)."""
    from lmforge.data.tokenizers import Tokenizer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist", "pass the --out directory of a training run")
    from lmforge.infer.generate import prepare_for_inference

    model = load_model(run_dir, device=device)
    if model.family == "task":  # a fine-tuned run: generation uses its (adapter-merged) language model
        if model.config.head != "lm":
            raise ConfigError(f"{run_dir} is a fine-tuned {model.config.task} model, which does not generate text",
                              f"use `lmforge predict --model {run_dir}` or lmforge.pipeline")
        model = model.plain_backbone()
    model = prepare_for_inference(model)
    tokenizer = Tokenizer.load(run_dir)
    return model, tokenizer


def generate(run_dir_or_model, prompts: str | list[str], *, tokenizer=None, compile: bool = False,
             **sampling) -> list[list[str]]:
    """Sampled continuations: one list of `num_samples` strings per prompt.

    `compile=True` (CPU, GPT family) compiles the decode step into one graph on first use: tens of
    seconds once, then about 2.5x faster decoding at batch 1 (see `lmforge.infer.compiled`)."""
    from lmforge.infer.generate import generate_text
    from lmforge.infer.sampling import SamplingParams

    if isinstance(run_dir_or_model, (str, Path)):
        model, tokenizer = load(run_dir_or_model)
    else:
        model = run_dir_or_model
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return generate_text(model, tokenizer, prompts, SamplingParams(**sampling), compile=compile)


def evaluate_perplexity(run_dir: str | Path, data: str, **kwargs) -> dict:
    """Perplexity and bits per byte of a run's model on a text file or a prepared dataset's val split."""
    from lmforge.eval.perplexity import perplexity_of_run

    return perplexity_of_run(run_dir, data, **kwargs)


# ---------------------------------------------------------------------- Hugging Face interop
def convert(src: str | Path, dst: str | Path, *, to: str = "hf", overwrite: bool = False) -> dict:
    """Convert an lmforge run directory into a Hugging Face transformers folder (`to="hf"`), or a Hugging Face
    folder (GPT-2, Llama, BERT, T5) into an lmforge model directory that `load` and `generate` read
    (`to="lmforge"`). `dst` is written whole or not at all; returns a summary of what was written."""
    from lmforge.interop.hf import convert as convert_folder

    return convert_folder(src, dst, to=to, overwrite=overwrite)


# ---------------------------------------------------------------------- comparing model families
def compare(data: str, budget_seconds: float, out: str | Path, *, models=None, tokenizer: str = "char",
            **kwargs) -> dict:
    """Train each of `models` (preset names, a list or "a,b,c"; default n-gram, RNN, LSTM, GRU and a small GPT)
    for `budget_seconds` of wall-clock time on `data` and compare validation bits per character.

    Writes `out/data`, one run directory per model, and `out/compare.md|json|png`; returns the JSON.
    Keyword arguments go to `lmforge.eval.compare.compare` (vocab_size, clean, device, overwrite...).
    """
    from lmforge.eval.compare import DEFAULT_MODELS, compare as compare_models

    return compare_models(data, budget_seconds, out, models=models or DEFAULT_MODELS, tokenizer=tokenizer, **kwargs)


# ---------------------------------------------------------------------- applications
def finetune(task: str, *, data, model, out: str | Path, method=None, train: TrainConfig | None = None,
             balance=None, augment=None, decode=None, resume: bool = False) -> dict:
    """Fine-tune `model` (run directory, Hugging Face folder or preset) for `task` on `data`
    (a `TaskDataConfig`, or a path to the training file); returns the summary with validation metrics."""
    from lmforge.tasks.finetune import finetune as run

    data = TaskDataConfig(train=data) if isinstance(data, str) else data
    model = StartConfig(init=model) if isinstance(model, str) else model
    return run(task, data=data, model=model, out=out, method=method, train=train, balance=balance,
               augment=augment, decode=decode, resume=resume)


def predict(model: str | Path, input: str, *, output: str = "-", format: str | None = None,
            batch_size: int = 32, device: str = "cpu") -> int:
    """Answers of a fine-tuned run for every example in `input` (a file, or - for stdin), one JSON
    object per line in input order, to `output` (a file written atomically, or - for stdout)."""
    import json
    import sys
    import tempfile

    from lmforge.atomic import atomic_path
    from lmforge.tasks.finetune import load_task_run

    net, task = load_task_run(model, device=device)
    if format:
        task.data = replace(task.data, format=format)
    elif task.data.format == "parallel":
        task.data = replace(task.data, format="auto")
    source = input
    if input == "-":
        tmp = tempfile.NamedTemporaryFile("w", suffix=_stdin_suffix(task), delete=False, encoding="utf-8")
        tmp.write(sys.stdin.read())
        tmp.close()
        source = tmp.name
    try:
        examples = task.read(source, require_labels=False)
        with torch.no_grad():
            answers = task.predict(net, examples, batch_size=batch_size)
    finally:
        if input == "-":
            Path(source).unlink(missing_ok=True)
    lines = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
    if output == "-":
        sys.stdout.write(lines)
    else:
        with atomic_path(Path(output)) as tmp_out:
            Path(tmp_out).write_text(lines, encoding="utf-8")
    return len(answers)


def _stdin_suffix(task) -> str:
    return {"squad": ".json", "alpaca": ".json", "jsonl": ".jsonl", "tsv": ".tsv", "csv": ".csv",
            "conll": ".conll", "bmes": ".bmes"}.get(task.data.format, ".txt")


PIPELINE_TASKS = {"sentiment-analysis": "classify", "text-classification": "classify", "classify": "classify",
                  "ner": "ner", "token-classification": "ner", "question-answering": "qa", "qa": "qa",
                  "translation": "translate", "translate": "translate", "summarization": "summarize",
                  "summarize": "summarize", "text-generation": "chat", "chat": "chat"}


def pipeline(task: str, model: str | Path, *, batch_size: int = 32, device: str = "cpu"):
    """A callable that applies a fine-tuned run to plain Python inputs, like transformers' `pipeline`.

    sentiment-analysis: str or list[str] -> {"label", "score"} (or a list); ner: str (words split on
    spaces, characters for Chinese) or a token list -> {"tokens", "tags", "entities": [{"type", "start",
    "end", "text"}]}; question-answering:
    question=..., context=... -> {"answer", "score"}; translation/summarization: str -> str;
    text-generation: an instruction -> the reply (a run tuned with `chat`, or any pretrained GPT run).
    """
    from lmforge.tasks.pipelines import build_pipeline

    if task not in PIPELINE_TASKS:
        raise ConfigError(f"unknown pipeline task {task!r}", "choose one of: " + ", ".join(sorted(PIPELINE_TASKS)))
    return build_pipeline(PIPELINE_TASKS[task], model, batch_size=batch_size, device=device)


# ---------------------------------------------------------------------- the demo
DEMO_PROMPTS = ("The function", "This module provides", "If the value is")


def demo(out: str | Path = "runs/demo", *, max_seconds: float = 150.0, overwrite: bool = True) -> dict:
    """Built-in corpus -> BPE tokenizer -> small GPT -> perplexity before/after -> samples, on CPU."""
    out = Path(out)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    t0 = time.perf_counter()
    print(f"lmforge demo: preparing the built-in 'python-docs' corpus into {out}/data ...", flush=True)
    spec = ModelSpec(preset="gpt-mini", block_size=128, n_layer=4, n_head=4, n_embd=192)
    # bf16 where the CPU computes it natively (about twice the steps in the same time); the cosine
    # schedule is stretched to the steps that fit in the budget on this machine, however fast it is.
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    train = TrainConfig(batch_size=16, seq_len=128, max_steps=1200, max_seconds=max_seconds, lr=2e-3,
                        warmup_steps=30, weight_decay=0.1, eval_interval=200, eval_batches=16,
                        checkpoint_interval=400, min_lr_ratio=0.1, precision=precision, device="cpu")
    summary = pretrain(DataConfig(path="python-docs", tokenizer="bpe", vocab_size=4096), spec, out=out, train=train,
                       on_step=TimeBudget(max_seconds))
    before, after = summary["initial_val_loss"], summary["val_loss"]
    print(f"\nvalidation perplexity: {math.exp(before):,.1f} (untrained) -> {math.exp(after):,.1f} "
          f"after {summary['steps']} steps ({math.exp(before - after):.0f}x lower)")
    samples = generate(out, list(DEMO_PROMPTS), max_new_tokens=48, temperature=0.8, top_k=40, seed=0)
    print("\nsamples:")
    for prompt, (text,) in zip(DEMO_PROMPTS, samples):
        print(f"  {prompt!r} -> {prompt}{text}")
    print(f"\nrun directory: {out}  (total {time.perf_counter() - t0:.0f}s)")
    summary["samples"] = {p: s[0] for p, s in zip(DEMO_PROMPTS, samples)}
    write_json_atomic(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------- serving
def serve(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_keys=(), task_models=None,
          max_slots: int = 16, log_level: str = "info", **limits) -> None:
    """Serve the decoder run `model` over HTTP until interrupted: OpenAI-compatible completions and chat
    completions, the task runs in `task_models` ({"classify": RUN, ...}) and a web playground at `/`.

    `limits` go to `lmforge.serve.app.create_app` (max_prompt_tokens, max_tokens_limit, max_body_bytes,
    max_concurrent, request_timeout, max_num_batched_tokens, model_name)."""
    import uvicorn

    from lmforge.serve.app import create_app

    app = create_app(model, api_keys=tuple(api_keys or ()), task_models=task_models, max_slots=max_slots, **limits)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_keys:
        print(f"warning: serving on {host} without an API key: anyone who can reach this port can use the model",
              flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
