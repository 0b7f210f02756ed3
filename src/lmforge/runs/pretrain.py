"""Pretraining: a corpus (raw or prepared) and a model preset -> a run directory.

    raw text -> prepare (clean, tokenizer, shards) -> model from preset or `init_from` -> objective
      -> the run harness (trainer, or a count-based fit for n-gram models) -> summary.json
"""
from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lmforge.config import DataConfig, ModelSpec, PrivacyConfig, TrainConfig
from lmforge.data.shards import load_dataset_meta, open_tokens, prepare_dataset
from lmforge.data.tokenizers import Tokenizer
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.models.registry import build_model, preset_config, traits_of
from lmforge.parallel import DistInfo, broadcast_object
from lmforge.runs.harness import TrainingJob, run_training
from lmforge.runs.rundir import check_out, load_pretrained, read_model_config
from lmforge.train.ngram_fit import fit_ngram
from lmforge.train.objectives import Objective, build_objective, evaluate_objective


def pretrain(data: str | DataConfig, model: str | ModelSpec = "debug", *, out: str | Path,
             train: TrainConfig | None = None, objective: str | None = None, resume: bool = False,
             on_step=None, init_from: str | Path | None = None, privacy: PrivacyConfig | None = None,
             wrap_objective: Callable[[Objective], object] | None = None) -> dict:
    """Train a language model from scratch (or `resume` one) and write a complete run directory.

    `data` is a prepared dataset directory, or any source `prepare` accepts (then it is prepared
    into `out/data` first). `objective` defaults to the model family's own (next-token prediction
    for decoders). Works unchanged under `torchrun --nproc_per_node N`.

    `init_from` continues pretraining from the weights of another run (or a Hugging Face model
    folder) instead of a fresh model, e.g. to adapt a model to a new domain: its config and
    tokenizer are used (the model preset is ignored), and raw data is tokenized with its tokenizer.

    `privacy` with an epsilon or a noise multiplier trains with DP-SGD over non-overlapping windows
    (next-token objective; see lmforge.train.privacy). `wrap_objective(objective)` gives the objective to
    train on instead of the family's own (distillation adds a teacher's soft targets); validation still
    scores the model's own objective.
    """
    data = DataConfig(path=data) if isinstance(data, str) else data
    spec = ModelSpec(preset=model) if isinstance(model, str) else model
    train = train or TrainConfig()
    check_out(out)
    start = _load_init(init_from) if init_from is not None else None
    family = start[0].family if start is not None else _check_spec(spec)
    objective_obj = build_objective(objective, family)  # objectives that do not fit the model fail here too

    def build(dist: DistInfo, run_dir: Path) -> TrainingJob:
        job = _build_job(data, spec, train, objective_obj, start, init_from, dist, run_dir, on_step)
        if wrap_objective is not None:
            job.objective = wrap_objective(job.objective)
        if privacy is not None and privacy.enabled:
            if job.fit is not None:
                raise ConfigError(f"{spec.preset} is fitted by counting, which DP-SGD does not cover",
                                  "train a neural model with --privacy, or drop --privacy")
            job.privacy, job.recipe["privacy"] = privacy, privacy
        return job

    def finish(job: TrainingJob, summary: dict) -> dict:
        return {**summary, "parameters": sum(p.numel() for p in job.model.parameters()), "model": spec.preset,
                "data": job.recipe["data"].path}

    return run_training(out, train, resume=resume, build=build, finish=finish)


def _check_spec(spec: ModelSpec) -> str:
    """The family of `spec`'s preset, its overrides checked now, before any data is read (the vocabulary
    size is only known once the tokenizer exists, so a placeholder stands in for it here)."""
    overrides = spec.overrides()
    overrides.setdefault("vocab_size", 256)
    return preset_config(spec.preset, **overrides).to_dict()["family"]


def _build_job(data: DataConfig, spec: ModelSpec, train: TrainConfig, objective: Objective, start, init_from,
               dist: DistInfo, run_dir: Path, on_step) -> TrainingJob:
    data_dir = _prepared_data(data, train, objective, start, dist, run_dir)
    meta = load_dataset_meta(data_dir)
    cfg = _start_config(start, init_from, meta, data_dir) if start is not None else model_config(spec, meta)
    seq_len = train.seq_len or cfg.block_size
    if seq_len > cfg.block_size:
        raise ConfigError(f"train.seq_len ({seq_len}) is larger than the model's context length "
                          f"({cfg.block_size})",
                          f"lower --train.seq_len or raise --model.block_size to at least {seq_len}")
    train_tokens = open_tokens(data_dir / "train.bin", meta["dtype"])
    val_tokens = open_tokens(data_dir / "val.bin", meta["dtype"])
    tokenizer = Tokenizer.load(data_dir)
    loader = objective.make_loader(train_tokens, seq_len, train.batch_size, tokenizer=tokenizer, seed=train.seed,
                                   rank=dist.rank, world_size=dist.world_size)
    if len(val_tokens) <= seq_len:
        raise DataError(f"validation split has {len(val_tokens)} tokens, fewer than one context of {seq_len}",
                        "use more data, a larger --data.val_fraction or a smaller --train.seq_len")
    torch.manual_seed(train.seed)
    net = start[0].train() if start is not None else _fresh_model(cfg, train, dist)
    objective.prepare_model(net)
    evaluate = validation_evaluator(objective, val_tokens, seq_len, train.batch_size, train.eval_batches, meta,
                                    tokenizer)
    recipe = {"data": replace(data, path=str(data_dir), tokenizer=meta.get("tokenizer", data.tokenizer)),
              "model": _resolved_spec(spec, cfg), "train": train,
              **({"init_from": str(init_from)} if init_from is not None else {})}
    # Count-based models are fitted in one pass over the training tokens, not by the trainer.
    fit = (lambda: fit_ngram(net, train_tokens, run_dir, evaluate=evaluate, save=dist.is_main)) \
        if traits_of(net).fitted_by_counting else None
    return TrainingJob(model=net, objective=objective, loader=loader, evaluate=evaluate, recipe=recipe,
                       save_tokenizer=lambda d: shutil.copyfile(data_dir / "tokenizer.json", d / "tokenizer.json"),
                       fit=fit, on_step=on_step)


def _fresh_model(cfg, train: TrainConfig, dist: DistInfo):
    """A new model; sharded over several processes it is built on the meta device, so that no rank ever holds
    it whole: the trainer gives each rank memory for its shards only, then initialises them."""
    if train.parallel == "fsdp" and dist.enabled:
        model = build_model(cfg, device="meta")
        if not any(True for _ in model.buffers()):  # buffers (sinusoidal positions) need the real constructor
            return model
    return build_model(cfg)


def _prepared_data(data: DataConfig, train: TrainConfig, objective: Objective, start, dist: DistInfo,
                   run_dir: Path) -> Path:
    """The prepared dataset directory: `data.path` itself, or raw data prepared into `run_dir/data`."""
    if _is_prepared(Path(data.path)):
        return Path(data.path)
    data_dir = run_dir / "data"
    if not _is_prepared(data_dir):
        if dist.is_main:
            tokenizer = dict(tokenizer_path=str(start[2])) if start is not None else dict(
                tokenizer=data.tokenizer or objective.default_tokenizer, vocab_size=data.vocab_size,
                extra_ids=objective.extra_ids)
            prepare_dataset(data.path, data_dir, val_fraction=data.val_fraction, seed=train.seed,
                            text_field=data.text_field, clean=data.clean, progress=train.progress, **tokenizer)
        broadcast_object(None, dist)  # other ranks wait for the shards
    return data_dir


def _is_prepared(path: Path) -> bool:
    return (path / "meta.json").is_file()


def _start_config(start, init_from, meta: dict, data_dir: Path):
    cfg = start[0].config
    if meta["vocab_size"] > cfg.vocab_size:
        raise DataError(f"{data_dir} was tokenized with {meta['vocab_size']:,} ids but the model in "
                        f"{init_from} has {cfg.vocab_size:,}",
                        f"pass raw data so it is tokenized with {init_from}'s tokenizer")
    return cfg


def _load_init(path: str | Path):
    """(model, tokenizer, tokenizer.json path) of the run or Hugging Face folder pretraining continues from."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a model folder (no config.json)",
                              "pass --init_from a run directory or a Hugging Face model folder")
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path} has no tokenizer.json", "continue from a folder that has its tokenizer")
    read_model_config(path)
    model, tokenizer, _ = load_pretrained(path)
    return model, tokenizer, path / "tokenizer.json"


def model_config(spec: ModelSpec, meta: dict):
    """The model config of `spec` for a dataset with this meta (vocabulary size and padding id)."""
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


def validation_evaluator(objective: Objective, val_tokens: np.ndarray, seq_len: int, batch_size: int,
                         max_batches: int, meta: dict, tokenizer):
    """Validation loss on a fixed, evenly spread set of batches; for next-token objectives also
    perplexity and bits per byte."""
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
