"""Whole folders: a Hugging Face folder imported as an lmforge model, an lmforge model exported as one,
and the `convert` verb that does either for a folder on disk."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from lmforge.atomic import atomic_directory
from lmforge.compress import LOW_RANK_KEY, quantization_of
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.architectures import export_architecture
from lmforge.interop.folder import is_hf_folder, read_hf_config, read_hf_weights
from lmforge.interop.state import convert_state_from_hf, state_to_hf
from lmforge.interop.tokenizers import (check_vocabulary, read_hf_tokenizer, required_tokenizer, special_tokens,
                                        write_hf_tokenizer)
from lmforge.models.gpt import count_parameters
from lmforge.models.registry import build_model, load_model, model_from_config, save_model
from lmforge.parallel import is_complete, load_sharded


# ---------------------------------------------------------------- import
def _import_folder(src: str | Path):
    """(model in eval mode, Tokenizer or None, architecture name, optional parts the checkpoint lacked)."""
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src} does not exist" if not src.exists() else f"{src} is not a folder",
                              "pass a Hugging Face model folder (config.json + model.safetensors)")
    hf, name, arch = read_hf_config(src)
    try:
        cfg = arch.config_from_hf(hf)
    except ConfigError as e:
        raise CheckpointError(f"{src / 'config.json'} does not describe a valid model ({e.what})",
                              "restore the config.json the weights were saved with") from None
    state, absent = convert_state_from_hf(read_hf_weights(src), arch, cfg, source=str(src))
    # Parts the checkpoint lacks (BERT heads) start from the same values on every conversion.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg)
    model.load_state_dict(state, strict=False)
    return model.eval(), read_hf_tokenizer(src), name, absent


def import_hf(src_dir: str | Path):
    """(lmforge model in eval mode, lmforge Tokenizer or None) from a Hugging Face model folder.

    Weights become float32. A BERT checkpoint without some of the pooler, MLM head and sentence-pair
    head (BertModel, BertForMaskedLM) leaves those parts freshly initialised.
    """
    model, tokenizer, _, _ = _import_folder(src_dir)
    return model, tokenizer


# ---------------------------------------------------------------- export
def hf_config(model: nn.Module, tokenizer=None) -> dict:
    """config.json for `model` in HF form, with special-token ids taken from `tokenizer` when given."""
    arch = export_architecture(model)
    cfg = model.config
    out = {"architectures": [arch.name], "model_type": arch.model_type, **arch.config_to_hf(cfg),
           "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if tokenizer is not None:
        out.update({f"{role}_token_id": tokenizer.token_to_id(token)
                    for role, token in special_tokens(tokenizer, arch).items() if role in ("bos", "eos", "pad")})
    out.update({name: getattr(cfg, name) for name in arch.config_token_ids})
    return out


def export_hf(model: nn.Module, dst_dir: str | Path, tokenizer=None, *, overwrite: bool = False) -> str:
    """Write `model` (and `tokenizer`) as a Hugging Face model folder; returns the architecture name.

    The folder (config.json, model.safetensors, and tokenizer.json + tokenizer_config.json when a
    tokenizer is given) appears whole or not at all.
    """
    dst = Path(dst_dir)
    check_destination(dst, overwrite=overwrite)
    config = hf_config(model, tokenizer)  # unsupported configs fail before anything is written
    state = state_to_hf(model)
    with atomic_directory(dst) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, model)
    return config["architectures"][0]


def check_destination(dst: Path, *, overwrite: bool, src: Path | None = None) -> None:
    if src is not None and src.exists() and dst.exists() and (
            dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents):
        raise ConfigError(f"destination {dst} would replace the source {src}", "choose another destination")
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())) and not overwrite:
        raise ConfigError(f"destination {dst} already exists and is not empty",
                          "pass --overwrite to replace it, or choose another destination")


# ---------------------------------------------------------------- whole-folder conversion
def convert(src: str | Path, dst: str | Path, *, to: str = "hf", overwrite: bool = False) -> dict:
    """Convert an lmforge run/model folder into a Hugging Face folder (`to="hf"`) or back (`to="lmforge"`).

    Both need a tokenizer.json in `src`. Returns what was written: destination, architecture,
    family, parameter count and the optional parts `src` lacked (initialised fresh).
    """
    if to not in ("hf", "lmforge"):
        raise ConfigError(f"unknown conversion target {to!r}", "pass --to hf or --to lmforge")
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise CheckpointError(f"source {src} does not exist",
                              "pass an lmforge run directory or a Hugging Face model folder")
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src / 'config.json'} is missing",
                              "pass an lmforge run directory or a Hugging Face model folder")
    check_destination(dst, overwrite=overwrite, src=src)
    is_hf = is_hf_folder(src)
    if to == "hf":
        if is_hf:
            raise ConfigError(f"{src} is already a Hugging Face model folder", "pass --to lmforge to import it")
        raw = json.loads((src / "config.json").read_text())
        done = quantization_of(raw)
        if done:
            raise ConfigError(f"{src} is quantized ({done.get('method')}); a Hugging Face folder holds float weights",
                              "convert the run it was quantized from")
        if raw.get(LOW_RANK_KEY):
            raise ConfigError(f"{src} is factorised (low rank); a Hugging Face folder holds full weight matrices",
                              "convert the run it was factorised from")
        model, name = _to_hf(src, dst, overwrite)
        absent: list[str] = []
    else:
        if not is_hf:
            raise ConfigError(f"{src} is already an lmforge model folder", "pass --to hf to export it")
        model, name, absent = _to_lmforge(src, dst)
    return {"dst": str(dst), "architecture": name, "family": model.family,
            "parameters": count_parameters(model), "initialised_fresh": absent}


def _to_hf(src: Path, dst: Path, overwrite: bool) -> tuple[nn.Module, str]:
    model = _run_model(src)
    tokenizer = required_tokenizer(src)
    check_vocabulary(tokenizer, model, src)
    return model, export_hf(model, dst, tokenizer, overwrite=overwrite)


def _run_model(src: Path) -> nn.Module:
    """The model of run or model folder `src`: its model.safetensors or, for a run that wrote sharded
    checkpoints (--train.checkpoint_format sharded), the newest one's shards assembled in this process."""
    if (src / "model.safetensors").is_file():
        return load_model(src)
    # step_NNNNNNNN only: a step_NNNNNNNN.tmp folder is a save that never finished
    sharded = [d for d in sorted(src.glob("checkpoints/step_*/sharded")) if d.parent.name[5:].isdigit()]
    complete = [d for d in sharded if is_complete(d)]
    if not complete:
        return load_model(src)  # which names what is missing
    model = model_from_config(src)
    load_sharded(complete[-1], model)
    return model


def _to_lmforge(src: Path, dst: Path) -> tuple[nn.Module, str, list[str]]:
    read_hf_config(src)  # an unsupported architecture is the first thing to report
    required_tokenizer(src)
    model, tokenizer, name, absent = _import_folder(src)
    check_vocabulary(tokenizer, model, src)
    with atomic_directory(dst) as tmp:
        save_model(model, tmp)
        tokenizer.save(tmp / "tokenizer.json")
    return model, name, absent


def describe(result: dict) -> str:
    """One line for the CLI about a finished conversion."""
    line = (f"wrote {result['dst']}: {result['architecture']} ({result['family']}, "
            f"{result['parameters'] / 1e6:.2f}M parameters)")
    if result["initialised_fresh"]:
        line += f"; not in the source, initialised fresh: {', '.join(result['initialised_fresh'])}"
    return line
