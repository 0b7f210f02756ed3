"""Where fine-tuning starts: a run directory, a Hugging Face folder, a model shipped in a Python
package (`pkg:MODULE/SUBDIR`), or a preset name (a fresh model with a tokenizer trained on the task's text)."""
from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file

from lmforge.config import StartConfig, TaskDataConfig
from lmforge.data.tokenizers import Tokenizer, train_tokenizer
from lmforge.data.vocabulary import add_characters, unknown_characters
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.models.registry import build_model, preset_config, resize_vocabulary, traits_of, with_dropout
from lmforge.models.warm_start import encoder_decoder_from_encoder
from lmforge.runs.rundir import load_pretrained, read_model_config, resolve_model_path
from lmforge.tasks.base import Task


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


def check_start(start: StartConfig, task_cls: type[Task]) -> None:
    """Checks that need no data: a preset start must name a known preset of a family the task accepts,
    with overrides its config takes; a folder start must exist."""
    path = resolve_model_path(start.init)
    if path.is_dir():
        return
    if any(sep in start.init for sep in ("/", os.sep)):
        raise CheckpointError(f"model folder {start.init} does not exist", "pass a run directory or a preset name")
    if start.encoder_decoder:
        raise ConfigError("model.encoder_decoder warm-starts from a pretrained encoder, not a preset",
                          "pass --model.init a BERT-family run or Hugging Face folder, or drop --model.encoder_decoder")
    family = preset_config(start.init).to_dict()["family"]  # unknown presets fail here
    if not task_cls.accepts(traits_of(family)):
        raise ConfigError(f"task {task_cls.name!r} cannot use a {family} model ({start.init})",
                          f"choose a preset of family {', '.join(task_cls.accepted_families())}")
    preset_config(start.init, vocab_size=start.vocab_size, **_fresh_overrides(start, family, {}))


def load_start(start: StartConfig, task_cls: type[Task], train_texts: list[str], context: int,
               data: TaskDataConfig | None = None) -> tuple[nn.Module, Tokenizer, str]:
    """(backbone in train mode, tokenizer, description of where it came from)."""
    path = resolve_model_path(start.init)
    if not path.is_dir():
        check_start(start, task_cls)
        return _fresh_model(start, task_cls, train_texts, context, data)
    model, tokenizer, raw = load_pretrained(path)
    if "family" in raw:
        where = f"lmforge run {path}"
    elif tokenizer is None:
        raise CheckpointError(f"{path} has no tokenizer.json", "save the tokenizer with the model "
                              "(tokenizer.save_pretrained) or convert it with `lmforge convert`")
    else:
        where = f"Hugging Face {raw.get('architectures', ['model'])[0]} from {path}"
    model, tokenizer, added = _adapt_pretrained(model, tokenizer, train_texts, start)
    if start.encoder_decoder:
        model = encoder_decoder_from_encoder(model)
        added += ", warm-started as an encoder-decoder (cross-attention new)"
    return model.train(), tokenizer, where + added


def _adapt_pretrained(model: nn.Module, tokenizer: Tokenizer, texts: list[str], start: StartConfig):
    """A pretrained start as `start` asks: `model.extend_vocab` adds the training text's unknown characters
    to the tokenizer and the model; `model.dropout` replaces the checkpoint's rates (e.g. 0 for speed on
    CPUs, where dropout on attention probabilities forces attention off its fused kernels).
    Deterministic (same text, same ids and rows), so a resumed run rebuilds the model it saved.
    Returns (model, tokenizer, a note for the run's description)."""
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


def _fresh_overrides(start: StartConfig, family: str, task_settings: dict) -> dict:
    """Config values for a fresh model: the recipe's sizes (those the family's config has), what the
    task's data settings need, then `model.overrides`."""
    fields = set(preset_config(start.init).to_dict())
    sizes = dict(n_layer=start.n_layer, n_head=start.n_head, n_embd=start.n_embd,
                 intermediate_size=start.intermediate_size, dropout=start.dropout)
    overrides = {k: v for k, v in sizes.items() if v is not None and k in fields}
    overrides.update(task_settings)
    overrides.update(start.overrides or {})
    return overrides


def _fresh_model(start: StartConfig, task_cls: type[Task], texts: list[str], context: int,
                 data: TaskDataConfig | None = None) -> tuple[nn.Module, Tokenizer, str]:
    family = preset_config(start.init).to_dict()["family"]
    kind = start.tokenizer or traits_of(family).default_tokenizer
    tokenizer = train_tokenizer(kind, texts, start.vocab_size, extra_ids=0)
    settings = task_cls.fresh_model_settings(data, family) if data is not None else {}
    overrides = _fresh_overrides(start, family, settings)
    cfg0 = preset_config(start.init)
    ids = {name: tokenizer.pad_id for name in ("pad_token_id", "decoder_start_token_id") if hasattr(cfg0, name)}
    cfg = preset_config(start.init, vocab_size=tokenizer.vocab_size, block_size=start.block_size or context,
                        **overrides, **ids)
    return build_model(cfg).train(), tokenizer, f"fresh {start.init} (tokenizer: {kind} {tokenizer.vocab_size})"


def keep_head_of_start(start: StartConfig, net: nn.Module) -> bool:
    """When fine-tuning starts from a run fine-tuned for the same task, head and labels (a pruned or
    distilled run recovering, or more training), load that run's head too, not only its backbone, and keep
    its pooling unless `start.pooling` says otherwise.
    The backbone came from `load_start`; the head weights are read here. Returns whether it did."""
    path = resolve_model_path(start.init)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        return False
    raw = read_model_config(path)
    ours = net.config
    if raw.get("family") != "task" or (raw.get("task"), raw.get("head"), raw.get("labels")) != (
            ours.task, ours.head, ours.labels):
        return False
    head = {k: v for k, v in load_file(str(path / "model.safetensors")).items() if not k.startswith("backbone.")}
    expected = {k for k in net.state_dict() if not k.startswith("backbone.")}
    if set(head) != expected or any(head[k].shape != net.state_dict()[k].shape for k in head):
        return False  # a head of another shape (a LoRA run's extra parts, say): start it fresh as before
    net.load_state_dict(head, strict=False)
    if start.pooling is None:
        ours.pooling = raw.get("pooling")  # the head was trained on that summary of the tokens
    return True
