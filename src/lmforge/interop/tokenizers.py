"""Tokenizers in Hugging Face folders: `tokenizer.json` read for lmforge, and written with the
`tokenizer_config.json` that `AutoTokenizer.from_pretrained` reads as a fast tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from lmforge.data.tokenizers import Tokenizer
from lmforge.errors import CheckpointError
from lmforge.interop.adapter import Architecture
from lmforge.interop.architectures import export_architecture


def special_tokens(tokenizer: Tokenizer, arch: Architecture) -> dict[str, str]:
    """Role -> token for tokenizer_config.json: the roles the tokenizer has a token for."""
    def first(*candidates: str) -> str | None:
        return next((t for t in candidates if tokenizer.token_to_id(t) is not None), None)

    eos = tokenizer.id_to_token(tokenizer.eos_id)
    roles = {"eos": eos if arch.names_eos else None, "pad": tokenizer.id_to_token(tokenizer.pad_id),
             "unk": first("<unk>", "[UNK]")}
    if arch.bos_tokens:
        roles["bos"] = first(*arch.bos_tokens) or eos  # GPT-2 starts and ends texts with one token
    roles.update({role: first(token) for role, token in arch.marker_tokens.items()})
    return {role: token for role, token in roles.items() if token is not None}


def write_hf_tokenizer(tokenizer: Tokenizer, dst: Path, model: nn.Module) -> None:
    """tokenizer.json plus a tokenizer_config.json that `AutoTokenizer.from_pretrained` reads as a fast tokenizer."""
    arch = export_architecture(model)
    tokenizer.save(dst / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size,
              "clean_up_tokenization_spaces": False,
              **{f"{role}_token": token for role, token in special_tokens(tokenizer, arch).items()}}
    if arch.model_input_names is not None:
        config["model_input_names"] = list(arch.model_input_names)
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def read_hf_tokenizer(src: Path) -> Tokenizer | None:
    """The folder's tokenizer.json as an lmforge Tokenizer that keeps every token of every text; None without one."""
    if not (src / "tokenizer.json").is_file():
        return None
    tokenizer = Tokenizer.load(src)
    # Some HF tokenizer.json files pad or truncate every text to a fixed length (sentence-transformers
    # saves 128); lmforge pads batches itself and must see every token of a training text.
    tokenizer.hf.no_padding()
    tokenizer.hf.no_truncation()
    return tokenizer


def required_tokenizer(src: Path) -> Tokenizer:
    """The folder's tokenizer.json, which a conversion needs."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the converted model needs its tokenizer)",
                              "put the model's tokenizer.json there (for a Hugging Face folder, "
                              "AutoTokenizer.from_pretrained(...).save_pretrained(folder) writes one)")
    return Tokenizer.load(path)


def check_vocabulary(tokenizer: Tokenizer, model: nn.Module, src: Path) -> None:
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{src / 'tokenizer.json'} has {tokenizer.vocab_size} tokens but the model's vocabulary "
                              f"holds {model.config.vocab_size}", "put the tokenizer the model was trained with there")
