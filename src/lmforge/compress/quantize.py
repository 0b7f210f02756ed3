"""Quantizing a model's linear layers, and rebuilding a quantized model before its weights load.

    record = apply_quantization(model, "int8")   # in place: every nn.Linear -> Int8Linear
    save_model(model, out)                        # config.json keeps `record` under "quantization"
    load_model(out)                               # rebuilds the same modules, then loads the weights

A model family never changes for this: the transform swaps modules from outside, and
`models.registry.load_model` calls `rebuild_quantized` (registered here) for a config.json that
carries a "quantization" record. The record names the method, its storage format and the quantized
modules, so a run describes itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from lmforge.compress.int8 import Int8Linear
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.registry import applied_transforms, register_structure_transform

# The config.json key (and the key in a model's `applied_transforms`) holding the quantization record.
QUANTIZATION_KEY = "quantization"


@dataclass(frozen=True)
class QuantizationMethod:
    """How one method turns an nn.Linear into its quantized module, and builds an empty one to load into."""
    quantize_linear: Callable[[nn.Linear], nn.Module]
    empty_like: Callable[[nn.Linear], nn.Module]
    storage: dict = field(default_factory=dict)  # the stored format, recorded in config.json


def _empty_int8(linear: nn.Linear) -> Int8Linear:
    return Int8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                      device=linear.weight.device, dtype=linear.weight.dtype)


METHODS: dict[str, QuantizationMethod] = {
    "int8": QuantizationMethod(Int8Linear.from_linear, _empty_int8,
                               {"bits": 8, "symmetric": True, "granularity": "per output channel",
                                "tensors": "<module>.weight_int8 (N, K) int8, <module>.scales (N,)"}),
}


def quantization_of(model_or_config) -> dict | None:
    """The quantization record of a model, or of a raw config.json dict; None when it is not quantized."""
    if isinstance(model_or_config, dict):
        return model_or_config.get(QUANTIZATION_KEY)
    return applied_transforms(model_or_config).get(QUANTIZATION_KEY)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every nn.Linear in `model`, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]


def apply_quantization(model: nn.Module, method: str = "int8") -> dict:
    """Replace every nn.Linear of `model` by its `method` quantized module, in place; returns the record
    that `save_model` writes into config.json (and `rebuild_quantized` reads back)."""
    if method not in METHODS:
        raise ConfigError(f"unknown quantization method {method!r}", f"choose one of {', '.join(METHODS)}")
    done = quantization_of(model)
    if done:
        raise ConfigError(f"the model is already quantized ({done.get('method')})",
                          "quantize the unquantized model it was made from")
    targets = linear_layers(model)
    if not targets:
        raise ConfigError(f"a {getattr(model, 'family', type(model).__name__)} model has no linear layers to quantize",
                          "quantize a GPT, Llama, BERT, T5 or RNN model")
    spec = METHODS[method]
    for name, linear in targets:
        model.set_submodule(name, spec.quantize_linear(linear))
    record = {"method": method, **spec.storage, "modules": [name for name, _ in targets]}
    model.applied_transforms = {**applied_transforms(model), QUANTIZATION_KEY: record}
    return record


def rebuild_quantized(model: nn.Module, record: dict) -> None:
    """Swap in the (empty) quantized modules `record` names, on a freshly built `model`, for its weights to load."""
    method = record.get("method") if isinstance(record, dict) else None
    if method not in METHODS:
        raise CheckpointError(f"config.json records quantization method {method!r}, which this lmforge cannot load",
                              f"known methods: {', '.join(METHODS)}; upgrade lmforge or restore the run")
    modules = dict(model.named_modules())
    for name in record.get("modules", ()):
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            raise CheckpointError(f"config.json quantizes {name!r}, which is not a linear layer of this model",
                                  "restore the run's config.json")
        model.set_submodule(name, METHODS[method].empty_like(linear))
    model.applied_transforms = {**applied_transforms(model), QUANTIZATION_KEY: record}


register_structure_transform(QUANTIZATION_KEY, rebuild_quantized)
