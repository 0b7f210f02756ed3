"""A shallower copy of a model: chosen transformer blocks kept, the rest dropped.

The usual start for a distilled student is its teacher with every other layer (Sanh et al. 2019,
DistilBERT): embeddings, the kept blocks (renumbered in order) and the head are copied, so the student
begins as a working, if worse, version of the teacher.
"""
from __future__ import annotations

import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, config_from_dict


def every_other_layer(n_layer: int) -> list[int]:
    """Layers 0, 2, 4, ...: half of them, spread from the bottom of the stack to the top."""
    return list(range(0, n_layer, 2))


def parse_layers(spec: str, n_layer: int) -> list[int]:
    """`half` (every other layer) or comma-separated layer indices of a model with `n_layer` layers."""
    if spec == "half":
        return every_other_layer(n_layer)
    try:
        layers = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--student_layers {spec!r} is not a list of layer numbers",
                          "pass e.g. --student_layers 0,2,4 or --student_layers half") from None
    if not layers or layers[0] < 0 or layers[-1] >= n_layer:
        raise ConfigError(f"--student_layers {spec!r} must name layers between 0 and {n_layer - 1}",
                          "pass e.g. --student_layers half")
    return layers


def _kept(config: dict, layers: list[int]) -> dict:
    """A backbone config dict for the kept `layers` (per-layer sizes, where pruning set them, follow)."""
    if "n_layer" not in config or "n_decoder_layer" in config:
        raise ConfigError(f"a student from chosen layers needs a one-stack model, not {config.get('family')}",
                          "start the student from a BERT, GPT or Llama run")
    kept = {**config, "n_layer": len(layers)}
    for name in ("layer_heads", "layer_intermediate"):
        if kept.get(name) is not None:
            kept[name] = [kept[name][i] for i in layers]
    return kept


def keep_layers(model: nn.Module, layers: list[int]) -> nn.Module:
    """A new model holding `model`'s embeddings, blocks `layers` (in order) and head."""
    backbone = model.backbone if isinstance(model, TaskModel) else model
    config = _kept(backbone.config.to_dict(), layers)
    if isinstance(model, TaskModel):
        student = TaskModel(TaskModelConfig.from_dict({**model.config.to_dict(), "backbone": config}))
        prefix = "backbone.blocks."
    else:
        student = build_model(config_from_dict(config))
        prefix = "blocks."
    renumber = {str(old): str(new) for new, old in enumerate(layers)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if index not in renumber:
                continue
            key = f"{prefix}{renumber[index]}.{rest}"
        state[key] = value
    student.load_state_dict(state, strict=True)
    return student
