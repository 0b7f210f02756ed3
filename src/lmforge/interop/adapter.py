"""What lmforge knows about one Hugging Face architecture, and the checks its config mappings share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.keymap import KeyMap


@dataclass(frozen=True)
class Architecture:
    """One HF architecture: its config mapping both ways, its key map, and what its folder files name.

    `bos_tokens` are the spellings of a start-of-text token to look for in a tokenizer; when none is
    there the end-of-text token starts texts too (GPT-2). Empty: tokenizer_config.json names no bos token.
    `marker_tokens` are further roles (BERT's [CLS], [SEP], [MASK]); `names_eos` is False for an
    architecture without an end-of-text token. `config_token_ids` are config fields copied into
    config.json after the tokenizer's ids, because the model, not the tokenizer, decides them.
    """

    name: str                 # `architectures[0]` in config.json
    model_type: str
    family: str               # the lmforge family it becomes
    config_from_hf: Callable[[dict], object]
    config_to_hf: Callable[[object], dict]
    key_map: Callable[[object, set[str] | None], KeyMap]
    bos_tokens: tuple[str, ...] = ()
    marker_tokens: dict[str, str] = field(default_factory=dict)
    names_eos: bool = True
    config_token_ids: tuple[str, ...] = ()
    model_input_names: tuple[str, ...] | None = None  # tokenizer_config.json's, when not transformers' default


# Activation names in HF configs -> our MLP kinds (GPT-2 and BERT).
GELUS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}


def unsupported(arch: str, what: str) -> CheckpointError:
    return CheckpointError(f"this {arch} checkpoint uses {what}, which lmforge does not implement",
                           "only the standard form of each supported architecture can be imported")


def _allowed(allowed) -> tuple:
    return allowed if isinstance(allowed, tuple) else (allowed,)


def require(hf: dict, arch: str, key: str, allowed, default):
    """`hf[key]` (or `default`), which must be one of `allowed` (a value or a tuple of values)."""
    value = hf.get(key, default)
    if value not in _allowed(allowed):
        raise unsupported(arch, f"{key}={value!r}")
    return value


def check_ours(cfg, family: str, hf_arch: str, **expected) -> None:
    """Refuse an lmforge config whose field differs from every value in `expected` (a value or a tuple)."""
    for name, allowed in expected.items():
        value = getattr(cfg, name)
        if value not in _allowed(allowed):
            raise ConfigError(f"model.{name}={value!r} has no equivalent in Hugging Face {hf_arch}",
                              f"only {family} models with the {hf_arch} layout can be exported")


def attention_dropout_from_hf(attention: float, residual: float) -> float | None:
    """GPTConfig.attention_dropout: None (the same as dropout) unless the HF config sets it apart."""
    return None if attention == residual else attention


def attention_dropout(cfg) -> float:
    return cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout
