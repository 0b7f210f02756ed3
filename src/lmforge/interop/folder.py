"""Reading a Hugging Face checkpoint folder: `config.json` plus `model.safetensors`, shards, or `pytorch_model.bin`."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmforge.errors import CheckpointError
from lmforge.interop.adapter import Architecture
from lmforge.interop.architectures import ARCHITECTURES, BY_MODEL_TYPE, architecture


def read_hf_config(src: Path) -> tuple[dict, str, Architecture]:
    """(config.json, the architecture name it gives, how lmforge reads it)."""
    path = src / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", "pass a Hugging Face model folder (config.json + weights)")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({getattr(e, 'msg', e)})", "restore the file") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} does not hold a JSON object", "restore the file")
    if "family" in hf and "model_type" not in hf:
        raise CheckpointError(f"{src} is an lmforge model folder, not a Hugging Face one",
                              "load it with lmforge.api.load, or convert it with --to hf")
    names = hf.get("architectures") or []
    if names:
        return hf, names[0], architecture(names[0])
    if hf.get("model_type") in BY_MODEL_TYPE:
        arch = BY_MODEL_TYPE[hf["model_type"]]
        return hf, arch.name, arch
    raise CheckpointError(f"{path} names no architecture (no 'architectures' or known 'model_type')",
                          f"lmforge converts {', '.join(ARCHITECTURES)}")


def is_hf_folder(src: Path) -> bool:
    """Whether the folder's config.json is a Hugging Face one (an lmforge one names its `family`)."""
    try:
        cfg = json.loads((src / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{src / 'config.json'} is not valid JSON ({getattr(e, 'msg', e)})",
                              "restore the file") from None
    return isinstance(cfg, dict) and "family" not in cfg


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: safetensors (single or sharded), else pytorch_model.bin."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (src / single).is_file():
            return _read_weight_file(src / single)
        if (src / index_name).is_file():
            return _read_sharded(src, index_name)
    raise CheckpointError(f"no weights in {src} (looked for model.safetensors, model.safetensors.index.json, "
                          "pytorch_model.bin)", "save the model with save_pretrained into that folder")


def _read_sharded(src: Path, index_name: str) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads((src / index_name).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{src / index_name} has no valid weight_map", "restore the index file") from None
    state = {}
    for shard in sorted(set(weight_map.values())):
        if not (src / shard).is_file():
            raise CheckpointError(f"shard {src / shard} listed in {index_name} is missing", "restore the shard")
        state.update(_read_weight_file(src / shard))
    return state


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own types for truncated or corrupt files
            raise CheckpointError(f"{path} is corrupt or unreadable ({type(e).__name__})",
                                  "restore the file or save the model again") from None
    try:
        # weights_only: the unpickler accepts tensors and plain containers and refuses any code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} could not be read as a tensors-only checkpoint ({type(e).__name__})",
                              "convert it to model.safetensors with save_pretrained") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors", "save the model with save_pretrained")
    return state
