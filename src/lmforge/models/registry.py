"""Named presets: `build_model("gpt2-124m")`, `preset_config("llama-7b", block_size=512)`.

A preset is a family plus the config values that differ from that family's defaults.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors.torch import load_file

from lmforge.atomic import save_safetensors_atomic, write_json_atomic
from lmforge.device import resolve_device
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.common.state import state_mismatch


@dataclass(frozen=True)
class FamilyTraits:
    """What code outside a family asks of it, so that callers test a property, never a family name."""
    structure: str                  # "decoder" (predicts the next token), "encoder" (bidirectional),
                                    # "encoder-decoder", or "wrapper" (a task head around another family)
    input_format: str = "plain"     # "plain": text ids then eos; "cls-sep": [CLS] a [SEP] (b [SEP]) + segment ids
    pooling: str = "last"           # one vector per text for a sequence head: "pooler" (its pretrained pooler
                                    # over [CLS]), "last" (last real token, the only one that saw the whole
                                    # text in a decoder) or "mean" (over real tokens)
    default_tokenizer: str = "bpe"  # the tokenizer a fresh model of the family is trained with
    fitted_by_counting: bool = False  # fitted in one pass over the data, not by gradient steps
    kv_cache: bool = False          # decodes incrementally from a key/value cache
    width_field: str = "n_embd"     # config field holding the width of the hidden states

    @property
    def segment_ids(self) -> bool:
        return self.input_format == "cls-sep"


# Filled by `register_family`, which `lmforge.models` calls for each family module on import.
FAMILIES: dict[str, tuple[type, type]] = {}
TRAITS: dict[str, FamilyTraits] = {}
PRESETS: dict[str, tuple[str, dict]] = {}


def register_family(module) -> None:
    """Add a family module's `FAMILY` name, `CONFIG` and `MODEL` classes, `TRAITS` and named `PRESETS`."""
    if module.FAMILY in FAMILIES:
        raise ValueError(f"model family {module.FAMILY!r} is registered twice")
    FAMILIES[module.FAMILY] = (module.CONFIG, module.MODEL)
    TRAITS[module.FAMILY] = module.TRAITS
    for name, values in module.PRESETS.items():
        if name in PRESETS:
            raise ValueError(f"model preset {name!r} is registered twice")
        PRESETS[name] = (module.FAMILY, values)


def traits_of(family_or_model) -> FamilyTraits:
    """The traits of a family, given its name, a model, a model config or a config dict."""
    if isinstance(family_or_model, str):
        family = family_or_model
    elif isinstance(family_or_model, dict):
        family = family_or_model.get("family", "gpt")
    else:
        family = getattr(family_or_model, "family", None) or family_or_model.to_dict()["family"]
    if family not in TRAITS:
        raise ConfigError(f"unknown model family {family!r}", f"known families: {', '.join(TRAITS)}")
    return TRAITS[family]


def list_presets() -> list[str]:
    return sorted(PRESETS)


# Names users know from other toolkits and model hubs -> the preset of the same shape.
PRESET_ALIASES = {
    "gpt2": "gpt2-124m", "gpt2-small": "gpt2-124m", "gpt2-medium": "gpt2-355m", "gpt2-large": "gpt2-774m",
    "gpt2-xl": "gpt2-1.5b", "bert-base-uncased": "bert-base", "bert-base-cased": "bert-base",
    "bert-large-uncased": "bert-large", "bert-large-cased": "bert-large", "llama-2-7b": "llama-7b",
    "llama2-7b": "llama-7b", "t5-v1.1-small": "t5-v1_1-small",
}


def resolve_preset(name: str) -> str:
    """`name`, or the preset a known alias (`gpt2`, `bert-base-uncased`, ...) stands for."""
    return name if name in PRESETS else PRESET_ALIASES.get(name.lower(), name)


def _unknown_preset(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown model preset {name!r}", f"{hint}available presets: {', '.join(list_presets())}")


def preset_config(name: str, **overrides):
    """The config of preset `name` (or an alias of one) with `overrides` applied (validated)."""
    name = resolve_preset(name)
    if name not in PRESETS:
        raise _unknown_preset(name)
    family, values = PRESETS[name]
    config_cls, _ = FAMILIES[family]
    return config_cls.from_dict({**values, **{k: v for k, v in overrides.items() if v is not None}})


def config_from_dict(d: dict):
    family = d.get("family", "gpt")
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}", f"known families: {', '.join(FAMILIES)}")
    return FAMILIES[family][0].from_dict(d)


def build_model(config_or_name, *, device: str | torch.device | None = None, **overrides) -> nn.Module:
    """Instantiate a model from a preset name or a config. `device="meta"` allocates nothing."""
    cfg = preset_config(config_or_name, **overrides) if isinstance(config_or_name, str) else config_or_name
    model_cls = FAMILIES[cfg.to_dict()["family"]][1]
    if device is None:
        return model_cls(cfg)
    with torch.device(device):
        return model_cls(cfg)


def with_dropout(model: nn.Module, dropout: float) -> nn.Module:
    """`model` rebuilt with every dropout rate of its config (attention probabilities included) set to
    `dropout`, same weights; a pretrained checkpoint's rates are a training choice, not part of the model."""
    d = model.config.to_dict()
    changes = {k: dropout for k in ("dropout", "attention_dropout") if k in d and d[k] != dropout}
    if not changes:
        return model
    rebuilt = build_model(config_from_dict({**d, **changes}))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.train(model.training)


# Where each family keeps its vocabulary-sized tables: the input embedding and the output layer(s).
_VOCAB_EMBEDDINGS = ("wte",)
_VOCAB_OUTPUTS = ("lm_head", "mlm_head.decoder")


def resize_vocabulary(model: nn.Module, vocab_size: int, *, seed: int = 0) -> nn.Module:
    """Grow `model`'s token embedding and output layer to `vocab_size` rows, in place; returns `model`.

    Existing rows keep their values, so every old token id means what it did. New embedding rows
    start at the mean of the old rows plus Gaussian noise with their per-dimension spread (seeded):
    typical embeddings, distinct from each other, that give no new token an outsized logit.
    New output biases start at the mean bias. Tied weights stay tied.
    """
    old = int(model.config.vocab_size)
    if vocab_size < old:
        raise ConfigError(f"cannot shrink the vocabulary from {old} to {vocab_size} tokens",
                          "pass a vocabulary size at least as large as the model's")
    if vocab_size == old:
        return model
    generator = torch.Generator().manual_seed(seed)
    grown: dict[int, nn.Parameter] = {}  # id of an old parameter -> its replacement (tied weights share one)

    def grow(p: nn.Parameter) -> nn.Parameter:
        if id(p) not in grown:
            with torch.no_grad():
                rows = p.detach().float()
                extra = rows.mean(0, keepdim=True).expand(vocab_size - old, *rows.shape[1:])
                if rows.dim() == 2:
                    noise = torch.randn(extra.shape, generator=generator) * rows.std(0, keepdim=True)
                    extra = extra + noise.to(rows.device)
                grown[id(p)] = nn.Parameter(torch.cat([p.detach(), extra.to(p.dtype)]),
                                            requires_grad=p.requires_grad)
        return grown[id(p)]

    found = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.split(".")[-1] in _VOCAB_EMBEDDINGS \
                and module.num_embeddings == old:
            module.weight = grow(module.weight)
            module.num_embeddings = vocab_size
            found += 1
        elif isinstance(module, nn.Linear) and name.endswith(_VOCAB_OUTPUTS) and module.out_features == old:
            module.weight = grow(module.weight)
            if module.bias is not None:
                module.bias = grow(module.bias)
            module.out_features = vocab_size
    if not found:
        raise ConfigError(f"{type(model).__name__} has no token embedding of {old} rows to grow",
                          "extend the vocabulary of GPT, BERT, T5 or RNN models")
    model.config.vocab_size = vocab_size
    return model


# Transforms that replace some of a model's modules after it is built (quantized layers), by the config.json
# key recording them: `load_model` rebuilds those modules before loading the weights, `save_model` writes the
# record (a model's `applied_transforms`) back. lmforge.compress registers its transforms when imported.
STRUCTURE_TRANSFORMS: dict[str, Callable[[nn.Module, dict], None]] = {}


def register_structure_transform(key: str, rebuild: Callable[[nn.Module, dict], None]) -> None:
    """`rebuild(model, record)` turns a freshly built model into the transformed one `record` describes."""
    STRUCTURE_TRANSFORMS[key] = rebuild


def applied_transforms(model: nn.Module) -> dict[str, dict]:
    """{config.json key: record} of the structure transforms applied to `model` (empty for a plain model)."""
    return dict(getattr(model, "applied_transforms", None) or {})


def save_model(model: nn.Module, directory: str | Path) -> None:
    """Write `model.safetensors` + `config.json` into `directory`, each atomically."""
    directory = Path(directory)
    save_safetensors_atomic(weights_for_saving(model), directory / "model.safetensors",
                            metadata={"format": "pt", "family": model.family})
    write_json_atomic(directory / "config.json", {**model.config.to_dict(), **applied_transforms(model)})


def weights_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each tied tensor stored once (safetensors refuses shared storage)."""
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        if value.data_ptr() in seen and value.numel():
            continue
        seen.add(value.data_ptr())
        state[key] = value
    return state


def tied_keys(model: nn.Module) -> set[str]:
    """Keys that `weights_for_saving` leaves out because they share a tensor with an earlier key."""
    return set(model.state_dict()) - set(weights_for_saving(model))


def load_model(directory: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by `save_model` (or a run directory) onto `device` ("auto": a GPU when present)."""
    device = resolve_device(device) if isinstance(device, str) else device
    directory = Path(directory)
    weights = directory / "model.safetensors"
    if (directory / "config.json").is_file() and not weights.is_file():
        raise CheckpointError(f"{weights} is missing", "pass a complete run directory (config.json + model.safetensors)")
    model = model_from_config(directory)
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{weights} is corrupt or unreadable ({type(e).__name__})",
                              "re-run training or restore the file from a backup") from None
    load_state(model, state, source=str(weights))
    return model.to(device)


def model_from_config(directory: str | Path) -> nn.Module:
    """A freshly initialised model of the shape `directory/config.json` describes (weights not read)."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist", "pass a run directory written by lmforge")
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} is missing", "pass a complete run directory (config.json + model.safetensors)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e.msg})", "restore it or re-run training") from None
    records = {key: raw.pop(key) for key in list(raw) if key in STRUCTURE_TRANSFORMS}
    model = build_model(config_from_dict(raw))
    for key, record in records.items():
        STRUCTURE_TRANSFORMS[key](model, record)
    return model


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict load that names the missing/unexpected/mis-shaped keys in a one-line error."""
    detail = state_mismatch(model.state_dict(), state, optional=tied_keys(model))
    if detail:
        raise CheckpointError(f"weights in {source} do not match the model config ({detail})",
                              "load them with the config.json they were saved with")
    model.load_state_dict(state, strict=False)
