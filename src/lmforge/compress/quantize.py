"""Quantizing a model's linear layers, and rebuilding a quantized model before its weights load.

    record = apply_quantization(model, "int8")   # in place: every nn.Linear -> Int8Linear
    record = apply_quantization(model, "dynamic-int8")  # or -> DynamicInt8Linear (int8 activations too)
    record = apply_quantization(model, "int4", group_size=128, calibration=windows)  # or -> Int4Linear
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

import torch
import torch.nn as nn

from lmforge.compress.calibrate import collect_input_stats, search_input_scales
from lmforge.compress.dynamic_int8 import DynamicInt8Linear
from lmforge.compress.int4 import DEFAULT_GROUP_SIZE, GROUP_SIZES, Int4Linear
from lmforge.compress.int8 import Int8Linear
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.registry import applied_transforms, register_structure_transform

# The config.json key (and the key in a model's `applied_transforms`) holding the quantization record.
QUANTIZATION_KEY = "quantization"


@dataclass(frozen=True)
class QuantizationMethod:
    """How one method turns an nn.Linear into its quantized module (given the layer's settings: group_size,
    input_scales), and builds an empty one to load into (given the config.json record)."""
    quantize_linear: Callable[[nn.Linear, dict], nn.Module]
    empty_like: Callable[[nn.Linear, dict], nn.Module]
    storage: dict = field(default_factory=dict)  # the stored format, recorded in config.json
    grouped: bool = False  # takes a group size and calibration


def _empty_int8(linear: nn.Linear, record: dict) -> Int8Linear:
    return Int8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                      device=linear.weight.device, dtype=linear.weight.dtype)


def _empty_dynamic_int8(linear: nn.Linear, record: dict) -> DynamicInt8Linear:
    return DynamicInt8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                             device=linear.weight.device, dtype=linear.weight.dtype)


def _quantize_int4(linear: nn.Linear, settings: dict) -> Int4Linear:
    return Int4Linear.from_linear(linear, settings["group_size"], settings.get("input_scales"))


def _empty_int4(linear: nn.Linear, record: dict) -> Int4Linear:
    return Int4Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                      group_size=int(record.get("group_size", DEFAULT_GROUP_SIZE)),
                      calibrated=bool(record.get("calibrated")), device=linear.weight.device,
                      dtype=linear.weight.dtype)


METHODS: dict[str, QuantizationMethod] = {
    "int8": QuantizationMethod(lambda linear, settings: Int8Linear.from_linear(linear), _empty_int8,
                               {"bits": 8, "symmetric": True, "granularity": "per output channel",
                                "tensors": "<module>.weight_int8 (N, K) int8, <module>.scales (N,)"}),
    "dynamic-int8": QuantizationMethod(lambda linear, settings: DynamicInt8Linear.from_linear(linear),
                                       _empty_dynamic_int8,
                                       {"bits": 8, "symmetric": True, "granularity": "per output channel; "
                                        "activations: int8, one scale per call, quantized as the layer runs",
                                        "tensors": "<module>.weight_int8 (N, K) int8, <module>.scales (N,)"}),
    "int4": QuantizationMethod(_quantize_int4, _empty_int4,
                               {"bits": 4, "symmetric": False, "granularity": "per output channel and group of "
                                "group_size input columns", "tensors": "<module>.weight_int4 (N, K/2) uint8, two "
                                "values a byte, column 2j in the low nibble; <module>.scales, <module>.zeros "
                                "(N, K/group_size): w = (q - 8) * scale + zero; calibrated: <module>.input_scales "
                                "(K,), the layer's input is divided by them"}, grouped=True),
}


def quantization_of(model_or_config) -> dict | None:
    """The quantization record of a model, or of a raw config.json dict; None when it is not quantized."""
    if isinstance(model_or_config, dict):
        return model_or_config.get(QUANTIZATION_KEY)
    return applied_transforms(model_or_config).get(QUANTIZATION_KEY)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every nn.Linear in `model`, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]


def apply_quantization(model: nn.Module, method: str = "int8", *, group_size: int | None = None,
                       calibration: torch.Tensor | None = None) -> dict:
    """Replace every nn.Linear of `model` by its `method` quantized module, in place; returns the record
    that `save_model` writes into config.json (and `rebuild_quantized` reads back).

    int4 only: `group_size` input columns share a scale (default 128); `calibration`, windows (B, T) of token
    ids the float model is run over, makes the rounding activation-aware (see compress/calibrate.py)."""
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
    settings = _layer_settings(model, method, targets, group_size, calibration)
    for name, linear in targets:
        model.set_submodule(name, spec.quantize_linear(linear, settings[name]))
    record = {"method": method, **spec.storage}
    if spec.grouped:
        record["group_size"] = DEFAULT_GROUP_SIZE if group_size is None else group_size
        record["calibrated"] = calibration is not None
    record["modules"] = [name for name, _ in targets]
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
        model.set_submodule(name, METHODS[method].empty_like(linear, record))
    model.applied_transforms = {**applied_transforms(model), QUANTIZATION_KEY: record}


def _layer_settings(model: nn.Module, method: str, targets: list[tuple[str, nn.Linear]], group_size: int | None,
                    calibration: torch.Tensor | None) -> dict[str, dict]:
    """{layer name: its settings for `quantize_linear`}, after checking the group size against every layer."""
    if not METHODS[method].grouped:
        if group_size is not None or calibration is not None:
            raise ConfigError(f"--group_size and --calibration do not apply to --method {method}",
                              "use them with --method int4, or leave them out")
        return {name: {} for name, _ in targets}
    group_size = DEFAULT_GROUP_SIZE if group_size is None else group_size
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"--group_size {group_size} is not supported",
                          f"choose one of {', '.join(map(str, GROUP_SIZES))} (the sizes the int4 kernel takes)")
    narrow = [(name, linear.in_features) for name, linear in targets if linear.in_features % group_size]
    if narrow:
        fits = [g for g in GROUP_SIZES if all(linear.in_features % g == 0 for _, linear in targets)]
        raise ConfigError(f"--group_size {group_size} does not divide the input width of {len(narrow)} linear "
                          f"layer(s), e.g. {narrow[0][0]!r} ({narrow[0][1]})",
                          f"pass --group_size {' or '.join(map(str, fits))}" if fits
                          else "this model's layer widths fit no int4 group size; use --method int8")
    settings = {name: {"group_size": group_size} for name, _ in targets}
    if calibration is not None:  # every layer's inputs come from the float model, before any layer is rounded
        stats = collect_input_stats(model, calibration, targets)
        for name, linear in targets:
            settings[name]["input_scales"], _ = search_input_scales(linear.weight, stats[name], group_size)
    return settings


register_structure_transform(QUANTIZATION_KEY, rebuild_quantized)
